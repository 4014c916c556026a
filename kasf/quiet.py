"""Keep third-party chatter out of kasf's normal output; ``--verbose`` on any command lets it through.

What is hidden, and why it is noise to a kasf user:
- OpenCV's own ``[ WARN ]`` / ``[ERROR]`` log lines (a missing camera prints about a dozen of them before kasf's
  one clear line);
- TorchScript's ``TracerWarning`` during ONNX export (about Python values in the traced code, which kasf's
  parity check covers);
- ONNX Runtime's "Please consider to run pre-processing before quantization" hint (kasf quantises a graph it
  just exported, and measures the result).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

_ORT_PREPROCESS_HINT = "pre-processing before quantization"


class _DropOrtHint(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return _ORT_PREPROCESS_HINT not in record.getMessage()


def quiet_third_party(verbose: bool = False) -> None:
    """Silence the noise listed in the module doc for this process, unless ``verbose``."""
    if verbose:
        return
    os.environ.setdefault("OPENCV_LOG_LEVEL", "OFF")  # read when cv2 is first imported
    cv2 = sys.modules.get("cv2")
    if cv2 is not None and hasattr(cv2, "setLogLevel"):
        cv2.setLogLevel(0)  # already imported: 0 is LOG_LEVEL_SILENT
    warnings.filterwarnings("ignore", category=_tracer_warning())
    root = logging.getLogger()
    if not any(isinstance(f, _DropOrtHint) for f in root.filters):
        root.addFilter(_DropOrtHint())


def _tracer_warning() -> type[Warning]:
    try:
        from torch.jit import TracerWarning
    except ImportError:  # pragma: no cover - torch is a dependency
        return UserWarning
    return TracerWarning
