"""kasf: the KASportsFormer toolkit - train, export and stream a 2D-to-3D human pose lifter."""

from kasf._version import __version__
from kasf.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint

__all__ = ["__version__", "load_checkpoint", "read_checkpoint", "save_checkpoint"]
