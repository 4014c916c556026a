"""The runtime's error type, in a module of its own so every backend module (local, Triton) can raise it without
importing the Lifter that dispatches to them."""


class LifterError(RuntimeError):
    """The artefact cannot be run as asked (missing runtime, wrong device, wrong input)."""
