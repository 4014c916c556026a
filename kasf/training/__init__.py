"""Training and evaluation: source files, motion capture through virtual cameras, kasf-train, kasf-eval.

Modules: ``sources`` (source files, clip cutting into memory-mapped arrays), ``mocap`` (virtual cameras and
detector noise over 3D clips), ``datasets`` (window datasets, flip), ``metrics`` (evaluation in mm),
``losses`` (training losses), ``config`` (YAML with the reference's key names), ``engine`` (the training loop),
``evaluate`` (kasf-eval), ``cli`` (console entry points).
"""
