"""kasf: the KASportsFormer toolkit - train, export and stream a 2D-to-3D human pose lifter."""

__version__ = "0.1.0"

from kasf.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint  # noqa: E402

__all__ = ["__version__", "load_checkpoint", "read_checkpoint", "save_checkpoint"]
