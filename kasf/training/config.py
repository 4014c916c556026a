"""Training configs: YAML with the reference implementation's key names, presets, and command-line overrides.

A reference KASportsFormer / MotionAGFormer YAML runs as is: its model keys build the network, its training keys
(learning_rate, weight_decay, learning_rate_decay, warmup, warmup_epoches, training_epoch_patience,
lambda_mpjpe_velocity, lambda_n_mpjpe, flip, batch_size, epochs, n_frames, ...) drive the recipe, and its
bookkeeping keys (wandb names, logger paths, worker counts) are accepted. Any other key is an error naming the file
and the key, so a typo never silently trains the wrong thing.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from kasf.model.presets import MODEL_KEYS, PRESETS, check_model_value, model_config
from kasf.typed_config import ConfigTypeError, coerce_value


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file and the key."""


@dataclass
class TrainConfig:
    """Every training setting, the reference recipe (the paper's released configs) as the default (docs/training.md)."""

    # model: a preset name, plus any model keys (reference names) that override it
    preset: str | None = None
    model_name: str = "KASportsFormer"
    model: dict[str, Any] = field(default_factory=dict)
    # data
    data_flavour: str = "generic"  # sportspose | worldpose | generic | mocap
    source_file: str | None = None  # sportspose / worldpose / generic source file
    mocap_root: str | None = None  # folder of 3D clips (flavour mocap)
    val_subjects: list[str] = field(default_factory=lambda: ["cmu16"])
    cameras_per_clip: int = 4  # mocap: cameras drawn per training clip and epoch
    camera_pool: int = 0  # mocap: > 0 renders this many camera sets once and cycles them (0: new ones every epoch)
    augment_bone_scale: float = 0.0  # mocap: log-std of per-bone and whole-body length factors, drawn per epoch
    augment_speed: list[float] = field(default_factory=lambda: [1.0, 1.0])  # mocap: tempo range [low, high]
    val_cameras_per_clip: int = 4
    val_seed: int = 1234  # mocap: fixed validation cameras
    n_frames: int = 27
    data_stride_train: int | None = None  # default n_frames // 3
    data_stride_test: int | None = None  # default n_frames
    short_clips: str = "resample"  # resample | drop | error
    cache_dir: str | None = None
    num_workers: int = 0
    data_wait_warning: float = 0.1  # warn when the step waited this fraction of an epoch for batches
    # recipe (reference names)
    learning_rate: float = 5e-4
    weight_decay: float = 0.01
    learning_rate_decay: float = 0.9  # ReduceLROnPlateau factor
    lr_plateau_patience: int = 2
    warmup: bool = True
    warmup_epoches: int = 10
    training_epoch_patience: int = 20  # early stop after this many epochs without a better validation MPJPE
    lambda_mpjpe_velocity: float = 20.0
    lambda_n_mpjpe: float = 0.5
    lambda_last_frame: float = 0.0  # kasf: extra weight on the last frame's loss (the causal streaming frame)
    lambda_p_mpjpe: float = 0.0  # kasf: weight of the Procrustes-aligned MPJPE (the pose's shape)
    flip: bool = True
    batch_size: int = 32
    epochs: int = 800
    # kasf additions for short budgets
    schedule: str = "plateau"  # plateau (reference) | cosine (per-step cosine decay after a linear warm-up)
    min_learning_rate: float = 1e-6
    warmup_steps: int = 0  # cosine: linear warm-up steps (0: warmup_epoches epochs)
    time_budget_min: float = 0.0  # > 0: stop after this many minutes of training; cosine decays over that time
    time_budget_clock: str = "wall"  # wall | cpu (the budget counts this process's CPU time, all threads)
    grad_clip: float = 0.0
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    threads: int = 0  # torch CPU threads (0: leave torch's default)
    compile: bool = False  # torch.compile the training forward (inductor fuses the small ops; costs minutes once)
    # The attention of the training step: 'native' kasf::attention_rows (C++, CPU only, the same function with its own
    # backward), 'reference' (matmul, softmax, matmul), 'auto' native where it runs (CPU with the extension).
    training_attention: str = "auto"
    ema_decay: float = 0.0  # > 0: validate and save an exponential moving average of the weights (e.g. 0.998)
    seed: int = 0
    eval_flip: bool = True
    eval_every: int = 1
    # output and logs
    output_dir: str = "runs/kasf"
    resume: bool = True
    use_tensorboard: bool = True
    use_wandb: bool = False
    wandb_project_name: str = "kasf"
    wandb_name: str | None = None
    progress: bool = True

    def model_dict(self) -> dict[str, Any]:
        """The full model config: preset, then reference model keys, then model_name."""
        if self.preset is not None and self.preset not in PRESETS:
            raise ConfigError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        base: dict[str, Any] = dict(PRESETS[self.preset]) if self.preset else {"model_name": self.model_name}
        base.update(self.model)
        base["n_frames"] = self.n_frames
        return model_config(base)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Keys of the reference configs that only concern its own scripts (paths, wandb, logging, workers); accepted so
# reference YAMLs load, and ignored or mapped below.
REFERENCE_BOOKKEEPING = frozenset({
    "data_root", "data_root_2d", "subset_list", "dt_file", "num_cpus", "pin_memory", "persistent_workers",
    "logger_dir_path", "logger_file_name", "checkpoint", "checkpoint_dir", "checkpoint_file_name",
    "evaluate_checkpoint_file_dir", "evaluate_checkpoint_file", "eval_only", "wandb_run_id", "use_proj_as_2d",
    "root_rel", "add_velocity", "lr_decay", "lambda_3d_velocity", "lambda_scale", "lambda_lv", "lambda_lg",
    "lambda_a", "lambda_av", "lambda_limb_len_var", "lambda_limb_len", "lambda_limb_cos_simi",
    "lambda_limb_cos_simi_velocity", "data_type", "test_augmentation", "sample_stride", "new_checkpoint",
})
_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_ALIASES = {"checkpoint_dir": "output_dir", "num_cpus": None, "lambda_3d_velocity": "lambda_mpjpe_velocity",
            "lambda_scale": "lambda_n_mpjpe"}


def _coerce(value: Any, name: str, where: str) -> Any:
    """A training key's value as its declared type (the rule of kasf.typed_config, shared with the model keys)."""
    if name == "model":
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: key 'model' expects a mapping of model keys, got {value!r}")
        return dict(value)
    try:
        return coerce_value(name, value, str(_FIELDS[name].type))
    except ConfigTypeError as err:
        raise ConfigError(f"{where}: {err}") from None


def config_from_mapping(raw: Mapping[str, Any], where: str = "config", base: TrainConfig | None = None,
                        validate: bool = True) -> TrainConfig:
    """Apply a mapping of reference/kasf keys onto ``base`` (or the defaults); unknown keys raise ConfigError."""
    cfg = dataclasses.replace(base) if base else TrainConfig()
    cfg.model = dict(cfg.model)
    values = dict(raw)
    # The reference splits the source path into data_root + dt_file.
    if "dt_file" in values and "source_file" not in values:
        root = values.get("data_root") or ""
        values["source_file"] = str(Path(root) / str(values["dt_file"]))
    for key, value in values.items():
        key = str(key)
        if key in MODEL_KEYS and key not in _FIELDS:
            try:
                cfg.model[key] = check_model_value(key, value)
            except ConfigTypeError as err:
                raise ConfigError(f"{where}: {err}") from None
        elif key in _FIELDS:
            setattr(cfg, key, _coerce(value, key, where))
        elif key in REFERENCE_BOOKKEEPING:
            target = _ALIASES.get(key)
            if target and target not in values:
                setattr(cfg, target, _coerce(value, target, where))
        else:
            close = sorted(k for k in list(_FIELDS) + sorted(MODEL_KEYS) if k[:4] == key[:4])
            hint = f"; did you mean {', '.join(close[:3])}?" if close else ""
            raise ConfigError(f"{where}: unknown config key '{key}'{hint}")
    if validate:
        _validate(cfg, where)
    return cfg


def _validate(cfg: TrainConfig, where: str) -> None:
    choices = {"data_flavour": ("sportspose", "worldpose", "generic", "mocap"), "schedule": ("plateau", "cosine"),
               "precision": ("auto", "fp32", "bf16", "fp16"), "short_clips": ("resample", "drop", "error"),
               "time_budget_clock": ("wall", "cpu"), "training_attention": ("auto", "native", "reference")}
    for key, allowed in choices.items():
        if getattr(cfg, key) not in allowed:
            raise ConfigError(f"{where}: key '{key}' must be one of {', '.join(allowed)}, got {getattr(cfg, key)!r}")
    for key in ("batch_size", "epochs", "n_frames"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{where}: key '{key}' must be >= 1, got {getattr(cfg, key)}")
    if cfg.augment_bone_scale < 0:
        raise ConfigError(f"{where}: key 'augment_bone_scale' must be >= 0, got {cfg.augment_bone_scale}")
    if (len(cfg.augment_speed) != 2 or min(cfg.augment_speed) <= 0
            or cfg.augment_speed[0] > cfg.augment_speed[1]):
        raise ConfigError(f"{where}: key 'augment_speed' must be [low, high] with 0 < low <= high, got "
                          f"{cfg.augment_speed}")
    for key in ("lambda_last_frame", "lambda_p_mpjpe"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"{where}: key '{key}' must be >= 0, got {getattr(cfg, key)}")
    if not 0 <= cfg.ema_decay < 1:
        raise ConfigError(f"{where}: key 'ema_decay' must be in [0, 1) (0: no average), got {cfg.ema_decay}")
    if cfg.learning_rate <= 0:
        raise ConfigError(f"{where}: key 'learning_rate' must be > 0, got {cfg.learning_rate}")
    if cfg.data_flavour == "mocap" and not cfg.mocap_root:
        raise ConfigError(f"{where}: data_flavour mocap needs key 'mocap_root' (a folder of 3D clips)")
    if cfg.data_flavour != "mocap" and not cfg.source_file:
        raise ConfigError(f"{where}: data_flavour {cfg.data_flavour} needs key 'source_file' (or data_root + dt_file)")
    try:
        cfg.model_dict()
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{where}: model: {err}") from None


def config_keys_help() -> str:
    """The keys a config or a key=value override may set, for ``kasf-train --help`` (generated, so never stale)."""
    import textwrap

    def listing(title: str, keys: Sequence[str]) -> str:
        return f"{title}:\n" + textwrap.fill(", ".join(keys), width=110, initial_indent="  ",
                                             subsequent_indent="  ", break_on_hyphens=False)

    return "\n".join([listing("training keys", [name for name in _FIELDS if name != "model"]),
                       listing("model keys (override the preset)", sorted(MODEL_KEYS)),
                       "Defaults and meanings: docs/training.md (Configs) and kasf/training/config.py."])


def parse_override(text: str) -> tuple[str, Any]:
    """'key=value' with the value read as YAML (so numbers, booleans and lists work)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value")
    key, _, value = text.partition("=")
    return key.strip(), yaml.safe_load(value) if value.strip() else None


def load_config(path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """A TrainConfig from a YAML file plus 'key=value' overrides; relative data paths are taken from the YAML's
    folder when they exist there, else from the working directory."""
    raw: dict[str, Any] = {}
    where = "command line"
    if path is not None:
        path = Path(path)
        where = str(path)
        if not path.exists():
            raise ConfigError(f"{path}: config file not found")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({err})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, Mapping):
            raise ConfigError(f"{path}: a config must be a YAML mapping of keys to values")
        raw.update(loaded)
        for key in ("source_file", "mocap_root", "data_root"):
            value = raw.get(key)
            if isinstance(value, str) and not os.path.isabs(value) and not Path(value).exists() \
                    and (path.parent / value).exists():
                raw[key] = str(path.parent / value)
    cfg = config_from_mapping(raw, where, validate=False)
    if overrides:
        cfg = config_from_mapping(dict(parse_override(o) for o in overrides), "command-line override", cfg,
                                  validate=False)
        where = f"{where} with command-line overrides" if path is not None else "command line"
    _validate(cfg, where)
    return cfg
