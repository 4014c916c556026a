#!/usr/bin/env bash
# Fills .gpu_wheels/ (git-ignored) with the pure-Python wheels benchmarks/gpu_check.sh installs on a GPU machine
# without network. Run it where the package registry is reachable, then carry .gpu_wheels with the tree.
set -euo pipefail
cd "$(dirname "$0")/.."
for version in 3.10 3.11 3.12 3.13; do
    pip download -q --only-binary=:all: --no-deps --python-version "$version" --platform manylinux2014_x86_64 -d .gpu_wheels \
        pytest iniconfig pluggy packaging pyyaml tqdm
done
ls .gpu_wheels
