"""The training loop: data, model, recipe, mixed precision, checkpoints, resume, logs, DDP.

One function, :func:`train`, runs a :class:`~kasf.training.config.TrainConfig` to the end (or to early stop) and
returns the best validation report. After every epoch it writes ``latest.pt`` (model + optimizer + schedule +
random states, so a killed run resumes losing at most that epoch) and, when validation improves, ``best.pt``;
both in the project's checkpoint format with the config embedded. Started with ``torchrun --nproc_per_node N``
it trains with DistributedDataParallel (rank 0 writes files and logs).
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist

from kasf.hardware import cpu_has_native_bf16
from kasf._version import __version__
from kasf.checkpoint import CheckpointError, read_raw_checkpoint, save_checkpoint
from kasf.interrupts import ctrl_c_deferred
from kasf.model import count_parameters, model_config, model_from_config, model_label
from kasf.training.config import ConfigError, TrainConfig
from kasf.data.sources import Windows, build_clip_store
from kasf.training.datasets import WindowBatches, mocap_windows
from kasf.training.evaluate import autocast_context, evaluate_model
from kasf.training.losses import total_loss
from kasf.training.mocap import load_clips, split_by_subject


@dataclass
class Dist:
    """Where this process sits in a torchrun job (world_size 1 without torchrun)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    control_group: Any = None  # a Gloo group for host-side agreement (None: the default group, Gloo on CPUs)

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> Dist:
    """Join the torchrun process group when WORLD_SIZE > 1 (NCCL on GPUs, Gloo on CPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    control = None
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        control = dist.new_group(backend="gloo")  # agreeing on the clock must not wait for the GPU
    return Dist(rank=dist.get_rank(), local_rank=local, world_size=dist.get_world_size(), control_group=control)


def _latest_over_ranks(seconds: float, env: Dist) -> float:
    """The largest of a clock reading over all ranks, so that every rank leaves the step loop at the same step
    (a rank that stopped alone would leave the others waiting in the gradient all-reduce for ever) and uses the
    same learning rate of a time-based schedule. One all-reduce of one number on the host; no device sync."""
    if env.world_size == 1:
        return seconds
    value = torch.tensor([seconds], dtype=torch.float64)
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=env.control_group)
    return float(value.item())


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> bf16 where the hardware runs it natively (CUDA with bf16, CPUs with AVX512-BF16/AMX), fp16 AMP on
    older GPUs, else fp32. An explicit choice the hardware cannot do is an error."""
    cpu_bf16 = cpu_has_native_bf16()
    if device.type == "cuda":
        if precision == "auto":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise ValueError("precision bf16: this GPU has no bfloat16 support; use fp16 or fp32")
        return precision
    if precision == "auto":
        return "bf16" if cpu_bf16 else "fp32"
    if precision == "fp16":
        raise ValueError("precision fp16 is for CUDA; on CPU use bf16 (AVX512-BF16/AMX) or fp32")
    return precision


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


class TrainingData:
    """Training batches per epoch and the fixed validation windows, for every flavour."""

    def __init__(self, cfg: TrainConfig, env: Dist) -> None:
        self.cfg = cfg
        self.env = env
        stride_train = cfg.data_stride_train or max(cfg.n_frames // 3, 1)
        self.stride_train = stride_train
        self._pool: dict[int, Windows] = {}
        if cfg.data_flavour == "mocap":
            clips = load_clips(cfg.mocap_root)
            self.train_clips, val_clips = split_by_subject(clips, cfg.val_subjects)
            if not self.train_clips:
                raise ValueError(f"{cfg.mocap_root}: no training clips left after holding out {cfg.val_subjects}")
            self.val = mocap_windows(val_clips, cfg.val_seed, cfg.n_frames, cfg.data_stride_test or cfg.n_frames,
                                     cfg.val_cameras_per_clip, test=True) if val_clips else None
            self.store: Windows | None = None
            self.description = (f"mocap {cfg.mocap_root}: {len(self.train_clips)} training clips, validation "
                                f"subjects {cfg.val_subjects} ({len(val_clips)} clips, {cfg.val_cameras_per_clip} "
                                f"fixed cameras each, seed {cfg.val_seed})")
        else:
            if env.main:
                stores = build_clip_store(cfg.source_file, cfg.data_flavour, cfg.n_frames, stride_train,
                                          cfg.data_stride_test, cfg.cache_dir, cfg.short_clips)
            if env.world_size > 1:
                dist.barrier()
            if not env.main:
                stores = build_clip_store(cfg.source_file, cfg.data_flavour, cfg.n_frames, stride_train,
                                          cfg.data_stride_test, cfg.cache_dir, cfg.short_clips)
            self.store, self.val = stores["train"], stores["test"]
            self.description = f"{cfg.data_flavour} {cfg.source_file}: {len(self.store)} training windows"

    def epoch_windows(self, epoch: int) -> Windows:
        """The epoch's training windows. Mocap draws new cameras and noise every epoch, or, with
        ``camera_pool: K``, cycles K camera sets rendered once (kept in memory: a render is never paid twice)."""
        if self.store is not None:
            return self.store
        draw = epoch % self.cfg.camera_pool if self.cfg.camera_pool > 0 else epoch
        if draw not in self._pool:
            windows = mocap_windows(self.train_clips, self.cfg.seed * 100003 + draw, self.cfg.n_frames,
                                    self.stride_train, self.cfg.cameras_per_clip,
                                    bone_scale=self.cfg.augment_bone_scale, speed=self.cfg.augment_speed)
            if self.cfg.camera_pool <= 0:
                return windows
            self._pool[draw] = windows
        return self._pool[draw]

    def loader(self, epoch: int, skip_batches: int = 0) -> torch.utils.data.DataLoader:
        """The epoch's batches in their fixed order; ``skip_batches`` leaves out those a mid-epoch save had done."""
        windows = self.epoch_windows(epoch)
        dataset = WindowBatches(windows, flip=self.cfg.flip, seed=self.cfg.seed * 7919 + epoch * 31 + self.env.rank)
        generator = torch.Generator().manual_seed(self.cfg.seed * 1000003 + epoch)
        if self.env.world_size > 1:
            sampler: Any = torch.utils.data.DistributedSampler(range(len(windows)), num_replicas=self.env.world_size,
                                                               rank=self.env.rank, shuffle=True,
                                                               seed=self.cfg.seed, drop_last=True)
            sampler.set_epoch(epoch)
        else:
            sampler = torch.utils.data.RandomSampler(range(len(windows)), generator=generator)
        batches: Any = torch.utils.data.BatchSampler(sampler, self.cfg.batch_size,
                                                     drop_last=len(windows) >= self.cfg.batch_size)
        if skip_batches:
            batches = list(batches)[skip_batches:]
        return torch.utils.data.DataLoader(dataset, sampler=batches, batch_size=None,
                                           num_workers=self.cfg.num_workers,
                                           persistent_workers=False, pin_memory=torch.cuda.is_available())


class LearningRate:
    """The reference schedule (linear warm-up, then ReduceLROnPlateau on validation MPJPE) or a per-step cosine
    decay for short budgets. Its state is a small dict stored in ``latest.pt``."""

    def __init__(self, cfg: TrainConfig, steps_per_epoch: int) -> None:
        self.cfg = cfg
        self.steps_per_epoch = max(steps_per_epoch, 1)
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.warmup_steps = cfg.warmup_steps or (cfg.warmup_epoches * self.steps_per_epoch if cfg.warmup else 0)
        self.scale = 1.0  # plateau reductions
        self.best = math.inf
        self.bad_epochs = 0

    def at(self, step: int, epoch: int, elapsed_s: float = 0.0) -> float:
        """Learning rate of this step; with a time budget the cosine runs over training time, not steps, so a
        busy or slow machine still ends the budget with a fully decayed rate."""
        cfg = self.cfg
        if cfg.schedule == "cosine":
            if step < self.warmup_steps:
                return cfg.learning_rate * (step + 1) / self.warmup_steps
            progress = min((step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1), 1.0)
            if cfg.time_budget_min > 0:
                progress = min(elapsed_s / (cfg.time_budget_min * 60), 1.0)
            return cfg.min_learning_rate + 0.5 * (cfg.learning_rate - cfg.min_learning_rate) * (
                1 + math.cos(math.pi * progress))
        if cfg.warmup and epoch < cfg.warmup_epoches:
            start = cfg.learning_rate / 100
            return start + (cfg.learning_rate - start) * epoch / max(cfg.warmup_epoches, 1)
        return cfg.learning_rate * self.scale

    def end_of_epoch(self, epoch: int, val_mpjpe: float | None) -> None:
        """ReduceLROnPlateau (reference): after ``lr_plateau_patience`` epochs without improvement, lr *= decay."""
        if self.cfg.schedule != "plateau" or val_mpjpe is None:
            return
        if self.cfg.warmup and epoch < self.cfg.warmup_epoches:
            return
        if val_mpjpe < self.best:
            self.best, self.bad_epochs = val_mpjpe, 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs > self.cfg.lr_plateau_patience:
                self.scale *= self.cfg.learning_rate_decay
                self.bad_epochs = 0

    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scale, self.best, self.bad_epochs = state["scale"], state["best"], state["bad_epochs"]


class Logs:
    """CSV always; TensorBoard when installed and enabled; wandb only when asked."""

    def __init__(self, cfg: TrainConfig, out: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.csv_path = out / "log.csv"
        self.columns: list[str] | None = None
        self.tb = self.wandb = None
        if not enabled:
            return
        if cfg.use_tensorboard:
            with contextlib.suppress(ImportError, ModuleNotFoundError):
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tensorboard"))
        if cfg.use_wandb:
            import wandb  # an explicit request: fail loudly when missing

            self.wandb = wandb.init(project=cfg.wandb_project_name, name=cfg.wandb_name, config=cfg.to_dict(),
                                    resume="allow")

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        new = not self.csv_path.exists()
        if new:
            self.columns = list(row)
        elif self.columns is None:  # a resumed run keeps the columns of the file it appends to
            with open(self.csv_path, newline="") as f:
                self.columns = next(csv.reader(f), None) or list(row)
        with open(self.csv_path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns, restval="", extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)
        for key, value in row.items():
            if isinstance(value, (int, float)) and key != "epoch":
                if self.tb is not None:
                    self.tb.add_scalar(key, value, row["epoch"])
        if self.wandb is not None:
            self.wandb.log(row)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


# Steps between the loop's host syncs (finite-loss check, progress bar): reading a GPU number every step would
# stall the launch queue; a NaN is still caught within this many steps.
SYNC_EVERY = 25


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float,
                   device: torch.device) -> torch.optim.AdamW:
    """AdamW, fused on CPU and CUDA: the per-parameter loop of the default CPU implementation took ~35 ms of a
    ~0.5 s KASportsFormer-t step on one thread (619 tensors), the fused kernel ~9-16 ms (update only)."""
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay,
                             fused=device.type in ("cpu", "cuda"))


class WeightAverage(torch.optim.swa_utils.AveragedModel):
    """An exponential moving average of a model's weights, validated and saved in its place.

    Short runs on freshly rendered cameras take noisy steps; the average smooths them while the optimizer keeps
    stepping the live weights. The decay warms up as min(decay, (1 + n) / (10 + n)) after n updates, so the
    random initial weights do not linger in the average of a run of a few thousand steps. Floating-point buffers
    (BatchNorm statistics) are averaged alike; integer buffers (joint index tables) are copied, since averaging
    them would corrupt the indices.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        super().__init__(model, multi_avg_fn=self._average, use_buffers=False)
        self.decay = decay

    def decay_at(self, n_averaged: int) -> float:
        return min(self.decay, (1 + n_averaged) / (10 + n_averaged))

    @torch.no_grad()
    def _average(self, averaged: list[torch.Tensor], live: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        torch._foreach_lerp_(averaged, live, 1.0 - self.decay_at(int(n_averaged)))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        n = int(self.n_averaged)
        before = [b.clone() if b.is_floating_point() and n > 0 else None for b in self.module.buffers()]
        self.update_parameters(model)  # averages the parameters; copies every buffer from the live model
        for averaged, old in zip(self.module.buffers(), before):
            if old is not None:
                averaged.copy_(old.lerp_(averaged, 1.0 - self.decay_at(n)))


def make_ema(model: torch.nn.Module, decay: float) -> WeightAverage | None:
    """The weight average of ``model`` for ``ema_decay`` (None when it is 0: no average)."""
    return WeightAverage(model, decay) if decay > 0 else None


def _check_finite(loss_sum: torch.Tensor | float, epoch: int, step: int) -> None:
    if not torch.isfinite(torch.as_tensor(loss_sum)):
        raise FloatingPointError(f"loss became {float(loss_sum)} at epoch {epoch + 1} (by step {step}); lower "
                                 "learning_rate or use precision fp32")


def _training_state(optimizer: torch.optim.Optimizer, schedule: LearningRate, scaler: Any, epoch: int, step: int,
                    best: float, stale: int, elapsed: float, batches_done: int = 0,
                    epoch_sums: dict[str, float] | None = None,
                    ema: WeightAverage | None = None) -> dict[str, Any]:
    """What resuming needs besides the weights. ``epoch`` is 0-based; ``batches_done`` > 0 marks a save made in
    the middle of that epoch (Ctrl-C), with the loss sums of the batches done so far."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None, "epoch": epoch, "global_step": step,
            "best_val_mpjpe": best, "epochs_without_improvement": stale, "elapsed_s": elapsed,
            "batches_done": batches_done, "epoch_sums": dict(epoch_sums or {}),
            "ema": ema.state_dict() if ema is not None else None,
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": {"name": name, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
                          "gauss": float(gauss)}}


def _restore_numpy_rng(saved: Any) -> None:
    """Put back numpy's global random state as :func:`_training_state` stored it (older files held only the
    key array, which cannot be restored exactly: those are left alone)."""
    if isinstance(saved, dict):
        np.random.set_state((saved["name"], np.asarray(saved["keys"], dtype=np.uint32), saved["pos"],
                             saved["has_gauss"], saved["gauss"]))


def _read_latest(latest: Path) -> dict[str, Any]:
    """``latest.pt`` as a dict, or one CheckpointError that says how to get past a bad file."""
    fix = f"move {latest} away (or set resume=false) to start afresh"
    try:
        raw = read_raw_checkpoint(latest, allow_pickle=True)
    except CheckpointError as err:
        raise CheckpointError(f"{err}; {fix}") from None
    if not isinstance(raw, dict) or raw.get("training_state") is None or "state_dict" not in raw:
        raise CheckpointError(f"{latest}: holds no training state to resume from; {fix}, or use another "
                              "output_dir")
    return raw


def _completed_config(config: Any) -> Any:
    try:
        return model_config(config)
    except (TypeError, ValueError):
        return config


def _finished_because(cfg: TrainConfig, epochs_done: int, elapsed_s: float, stale: int) -> str | None:
    """Why a run with this progress has nothing left to do (None if it has)."""
    if epochs_done >= cfg.epochs:
        return f"all {cfg.epochs} epochs done"
    if cfg.time_budget_min > 0 and elapsed_s >= cfg.time_budget_min * 60:
        return f"its time budget of {cfg.time_budget_min} min is spent"
    if stale >= cfg.training_epoch_patience:
        return f"early stop after {stale} epochs without a better validation MPJPE"
    return None


def _stop_everywhere(stop_requested: Callable[[], bool], env: Dist, device: torch.device) -> bool:
    """True on every rank once Ctrl-C reached any of them (ranks must leave the step loop together)."""
    if env.world_size == 1:
        return stop_requested()
    flag = torch.tensor([1.0 if stop_requested() else 0.0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def train(cfg: TrainConfig, command: str | None = None) -> dict[str, Any]:
    """Run the config; returns {'best_val_mpjpe', 'epochs_run', 'output_dir', 'best_report', 'interrupted'}.

    Ctrl-C (kasf.interrupts) ends the step in hand, saves it to ``latest.pt`` (resumable mid-epoch) and returns
    with ``interrupted`` True; a second Ctrl-C interrupts at once.
    """
    with ctrl_c_deferred() as stop_requested:
        return _train(cfg, command, stop_requested)


def _training_attention(asked: str, model: torch.nn.Module, device: torch.device, main: bool) -> str:
    """Set and name the attention the training step runs ('native' or 'reference'); 'auto' takes native where it
    runs and says why not where it does not."""
    from kasf.model.kasportsformer import native_attention_unavailable

    if not hasattr(model, "set_training_attention"):
        if asked == "native":
            raise ConfigError("training_attention: native applies to KASportsFormer / MotionAGFormer models (this "
                              "model has no attention); use auto")
        return "no"
    reason = ("kasf::attention_rows runs on the CPU; this run trains on " + str(device) if device.type != "cpu"
              else native_attention_unavailable(model))
    if asked == "native" and reason:
        raise ConfigError(f"training_attention: native is not available: {reason}")
    chosen = "native" if asked in ("auto", "native") and not reason else "reference"
    if asked == "auto" and reason and device.type == "cpu" and main:
        print(f"training attention: reference (native not available: {reason})", flush=True)
    model.set_training_attention(chosen)
    return chosen


def _train(cfg: TrainConfig, command: str | None, stop_requested: Callable[[], bool]) -> dict[str, Any]:
    env = setup_distributed()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed + env.rank)
    device = torch.device(f"cuda:{env.local_rank}" if torch.cuda.is_available() else "cpu")
    precision = resolve_precision(cfg.precision, device)
    out = Path(cfg.output_dir)
    if env.main:
        out.mkdir(parents=True, exist_ok=True)
    command = command or " ".join(sys.argv)

    data = TrainingData(cfg, env)
    model_cfg = cfg.model_dict()
    model = model_from_config(model_cfg).to(device)
    attention = _training_attention(cfg.training_attention, model, device, env.main)
    optimizer = make_optimizer(model, cfg.learning_rate, cfg.weight_decay, device)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    steps_per_epoch = len(data.loader(0))
    schedule = LearningRate(cfg, steps_per_epoch)
    ema = make_ema(model, cfg.ema_decay)

    start_epoch, step, best, stale, elapsed = 0, 0, math.inf, 0, 0.0
    resume_batches, resume_sums = 0, {}
    best_report: dict[str, Any] | None = None
    latest = out / "latest.pt"
    if cfg.resume and latest.exists():
        raw = _read_latest(latest)
        state = raw["training_state"]
        # completed with today's defaults: a run saved before a model key existed resumes under it
        if _completed_config(raw.get("config")) != model_cfg:
            raise CheckpointError(f"{latest}: was trained with another model config; use another output_dir (or "
                                  "set resume=false)")
        model.load_state_dict(raw["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        if ema is not None:
            if not state.get("ema"):
                raise CheckpointError(f"{latest}: was trained without ema_decay; use another output_dir (or set "
                                      "resume=false)")
            ema.load_state_dict(state["ema"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        resume_batches, resume_sums = state.get("batches_done", 0), dict(state.get("epoch_sums") or {})
        start_epoch, step = state["epoch"] + (0 if resume_batches else 1), state["global_step"]
        best, stale, elapsed = state["best_val_mpjpe"], state["epochs_without_improvement"], state["elapsed_s"]
        torch.set_rng_state(state["torch_rng"])
        _restore_numpy_rng(state.get("numpy_rng"))
        best_report = raw.get("metadata", {}).get("best_report")
        if env.main:  # epochs are counted from 1 here, as in log.csv and the progress bar
            where = (f"in epoch {start_epoch + 1} after batch {resume_batches}" if resume_batches
                     else f"with epoch {start_epoch + 1}")
            print(f"resumed from {latest} (epochs done: {start_epoch} of {cfg.epochs}), continuing {where} "
                  f"(step {step}, best {best:.1f} mm)", flush=True)
    finished = _finished_because(cfg, start_epoch, elapsed, stale)
    if finished:
        if env.main:
            print(f"{latest}: this run is finished ({finished}); nothing was trained or written (raise the limit "
                  "to train on, or set resume=false to start afresh)", flush=True)
        return {"best_val_mpjpe": best, "epochs_run": start_epoch, "output_dir": str(out),
                "best_report": best_report, "interrupted": False}

    wrapped: torch.nn.Module = model
    if env.world_size > 1:
        # The reference network has parameters that some layers never use (e.g. the bone stream after layer 0).
        wrapped = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[env.local_rank] if device.type == "cuda" else None, find_unused_parameters=True)
    if cfg.compile:
        # Only the training steps run compiled (validation keeps the eager model). The compile happens inside the
        # first step, so its minutes count against time_budget_min, and the epoch's samples/s shows them.
        wrapped = torch.compile(wrapped)
    logs = Logs(cfg, out, env.main)
    if env.main and start_epoch == 0:
        print(f"training {model_label(model_cfg)} "
              f"({count_parameters(model):,} parameters) on {device} in {precision}, {attention} attention; "
              f"{data.description}; "
              f"{steps_per_epoch} steps/epoch x {cfg.epochs} epochs", flush=True)

    def metadata(epoch: int, report: dict[str, Any] | None) -> dict[str, Any]:
        return {"epoch": epoch, "global_step": step, "best_val_mpjpe": best, "val_report": report,
                "best_report": best_report, "train_config": cfg.to_dict(), "command": command,
                "data": data.description, "precision": precision, "device": str(device),
                "world_size": env.world_size, "training_time_s": round(elapsed, 1), "kasf_version": __version__,
                "torch_version": str(torch.__version__)}

    # What time_budget_min counts: wall-clock seconds (with torchrun, the latest clock over the ranks, agreed every
    # step), or this process's CPU seconds (all its threads), which other jobs on a shared machine do not eat into;
    # single-process runs only.
    if cfg.time_budget_clock == "cpu" and env.world_size > 1:
        raise ConfigError("time_budget_clock: cpu is for single-process runs (ranks would stop at different "
                         "steps); use wall with torchrun")
    budget_clock = time.process_time if cfg.time_budget_clock == "cpu" else time.time
    epoch = start_epoch
    for epoch in range(start_epoch, cfg.epochs):
        epoch_start, budget_start = time.time(), budget_clock()
        wrapped.train()
        # A mid-epoch save resumes at the next batch, its loss sums carried on so the epoch's row covers it all.
        skip, resume_batches = resume_batches, 0
        sums: dict[str, float] = dict(resume_sums) if skip else {}
        count = skip
        loader = data.loader(epoch, skip_batches=skip)
        progress: Iterator = iter(loader)
        bar = None
        if env.main and cfg.progress:
            from tqdm import tqdm

            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, dynamic_ncols=True,
                       initial=skip, total=skip + len(loader), mininterval=1.0 if sys.stderr.isatty() else 30.0)
            progress = iter(bar)
        out_of_time = interrupted = False
        data_wait = 0.0  # seconds the step sat idle waiting for the next batch
        while True:
            asked = time.perf_counter()
            batch = next(progress, None)
            data_wait += time.perf_counter() - asked
            if batch is None:
                break
            x, y = batch
            trained_s = elapsed + budget_clock() - budget_start
            if cfg.time_budget_min > 0:
                trained_s = _latest_over_ranks(trained_s, env)
                if trained_s >= cfg.time_budget_min * 60:
                    out_of_time = True
                    break
            lr = schedule.at(step, epoch, trained_s)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast_context(device, precision):
                pred = wrapped(x)
            loss, parts = total_loss(pred, y, cfg.lambda_n_mpjpe, cfg.lambda_mpjpe_velocity, cfg.lambda_last_frame,
                                     cfg.lambda_p_mpjpe)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            if ema is not None:
                ema.update(model)
            step += 1
            count += 1
            parts["loss_total"] = loss.detach()
            for k, v in parts.items():
                sums[k] = sums[k] + v if k in sums else v
            if count % SYNC_EVERY == 0:  # the only host sync of the loop: a finite check and the bar
                _check_finite(sums["loss_total"], epoch, step)
                if bar is not None:
                    bar.set_postfix(loss=f"{float(sums['loss_total']) / count:.4f}", lr=f"{lr:.2e}", refresh=False)
            # One process reads its own flag every step; several agree on Ctrl-C (an all-reduce, a host sync)
            # only at the loop's sync points.
            if (env.world_size == 1 or count % SYNC_EVERY == 0) and _stop_everywhere(stop_requested, env, device):
                interrupted = True
                break
        if bar is not None:
            bar.close()
        train_s = time.time() - epoch_start
        elapsed = _latest_over_ranks(elapsed + budget_clock() - budget_start, env)
        if count:
            _check_finite(sums["loss_total"], epoch, step)
        sums_f = {k: float(v) for k, v in sums.items()}
        if interrupted:
            if env.main:
                save_checkpoint(latest, model, cfg.preset, metadata(epoch, None),
                                training_state=_training_state(optimizer, schedule, scaler, epoch, step, best, stale,
                                                               elapsed, batches_done=count, epoch_sums=sums_f,
                                                               ema=ema))
            logs.close()
            return {"best_val_mpjpe": best, "epochs_run": epoch, "output_dir": str(out), "best_report": best_report,
                    "interrupted": True, "saved": str(latest), "epoch": epoch + 1, "batches_done": count,
                    "step": step}
        if env.main and count and data_wait > cfg.data_wait_warning * train_s:
            print(f"warning: data workers starved: the model waited {data_wait:.1f} s of this epoch's "
                  f"{train_s:.1f} s for batches ({100 * data_wait / train_s:.0f} %); raise num_workers "
                  f"(now {cfg.num_workers}) or use camera_pool", flush=True)
        report = None
        scored = ema.module if ema is not None else model  # what is validated is what best.pt holds
        last = epoch == cfg.epochs - 1 or out_of_time
        if data.val is not None and ((epoch + 1) % cfg.eval_every == 0 or last):
            report = evaluate_model(scored, data.val, flip=cfg.eval_flip, batch_size=max(cfg.batch_size, 64),
                                    device=device, precision=precision)
        val = report["mpjpe"] if report else None
        if env.world_size > 1 and val is not None:
            # every rank takes rank 0's number, so plateau and early-stop decisions stay identical
            shared = torch.tensor([val], dtype=torch.float64, device=device)
            dist.broadcast(shared, 0)
            val = float(shared.item())
        schedule.end_of_epoch(epoch, val)
        improved = val is not None and val < best
        if improved:
            best, stale, best_report = val, 0, report
        elif val is not None:
            stale += 1
        row = {"epoch": epoch + 1, "step": step, "lr": optimizer.param_groups[0]["lr"],
               **{k: round(v / max(count, 1), 6) for k, v in sums_f.items()},
               "val_mpjpe": round(val, 2) if val is not None else "",
               "val_p_mpjpe": round(report["p_mpjpe"], 2) if report else "",
               "best_val_mpjpe": round(best, 2) if best < math.inf else "",
               "epoch_time_s": round(time.time() - epoch_start, 1), "elapsed_s": round(elapsed, 1),
               "train_samples_per_s": round(count * cfg.batch_size * env.world_size / max(train_s, 1e-9), 2),
               "data_wait_s": round(data_wait, 2)}
        if env.main:
            logs.write(row)
            print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
            meta = metadata(epoch + 1, report)
            if improved or (data.val is None and last):
                save_checkpoint(out / "best.pt", scored, cfg.preset, meta)
            save_checkpoint(latest, model, cfg.preset, meta,
                            training_state=_training_state(optimizer, schedule, scaler, epoch, step, best, stale,
                                                           elapsed, ema=ema))
        if _stop_everywhere(stop_requested, env, device):  # Ctrl-C during validation: the epoch is saved whole
            logs.close()
            return {"best_val_mpjpe": best, "epochs_run": epoch + 1, "output_dir": str(out),
                    "best_report": best_report, "interrupted": True, "saved": str(latest), "epoch": epoch + 1,
                    "batches_done": 0, "step": step}
        if out_of_time:
            if env.main:
                print(f"time budget of {cfg.time_budget_min} min reached after {step} steps", flush=True)
            break
        if stale >= cfg.training_epoch_patience:
            if env.main:
                print(f"early stop: {stale} epochs without a better validation MPJPE", flush=True)
            break
    logs.close()
    if env.world_size > 1:
        dist.barrier()
    return {"best_val_mpjpe": best, "epochs_run": epoch + 1, "output_dir": str(out), "best_report": best_report,
            "interrupted": False}
