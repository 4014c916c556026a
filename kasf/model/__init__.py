"""The KASportsFormer network, its building blocks, the per-frame MLP baseline and named presets."""

from kasf.model.kasportsformer import KASportsFormer, KASportsFormerBlock
from kasf.model.mlp import PerFrameMLP
from kasf.model.presets import (PRESETS, build, count_parameters, gflops_per_window, model_config,
                                model_from_config, model_label)

__all__ = ["KASportsFormer", "KASportsFormerBlock", "PerFrameMLP", "PRESETS", "build", "count_parameters",
           "gflops_per_window", "model_config", "model_from_config", "model_label"]
