"""The KASportsFormer network, its building blocks and named presets."""

from kasf.model.kasportsformer import KASportsFormer, KASportsFormerBlock
from kasf.model.presets import PRESETS, build, count_parameters, gflops_per_window, model_config

__all__ = ["KASportsFormer", "KASportsFormerBlock", "PRESETS", "build", "count_parameters", "gflops_per_window",
           "model_config"]
