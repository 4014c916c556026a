# Sourced by the one-call GPU scripts (gpu_check.sh, gpu_train.sh): run a step under its own timeout, keep its log,
# record it in $OUT/steps.jsonl and remember the worst exit status in WORST. Needs OUT set; TAG names the script.
: > "$OUT/steps.jsonl"
WORST=0

step() {  # step NAME SECONDS COMMAND...
    local name="$1" limit="$2" start rc
    shift 2
    start=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    printf '{"step": "%s", "rc": %d, "seconds": %d, "limit_s": %d}\n' "$name" "$rc" "$(( $(date +%s) - start ))" \
        "$limit" >> "$OUT/steps.jsonl"
    echo "[${TAG:-gpu}] $name: exit $rc after $(( $(date +%s) - start )) s (limit $limit s)"
    (( rc > WORST )) && WORST=$rc
    return 0
}
