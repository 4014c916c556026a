"""The version of kasf, in a module of its own so that any kasf module can read it without importing the package
``__init__`` (which imports the checkpoint code, which records the version: a cycle)."""

__version__ = "0.1.0"
