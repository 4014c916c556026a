"""The anatomy operator ``kasf::anatomy_features`` (the Bone Extractor in C++/CUDA, ``cpp_ext/``) in every form.

- :mod:`~kasf.anatomy_op.native`: loads the extension ``kasf._C`` and records why it is (not) usable;
- :mod:`~kasf.anatomy_op.features`: ``anatomy_features``, the one function the model calls, native or pure PyTorch;
- :mod:`~kasf.anatomy_op.onnx_modes`: the ONNX export modes (decomposed, plugin) and ONNX Runtime sessions;
- :mod:`~kasf.anatomy_op.tensorrt_plugin`: builds the TensorRT plugin of the ONNX node once (CMake) and loads it.

Nothing here imports the model: the package sits below it, and the submodules are imported by their full names.
"""
