"""Deployment: a trained binary model as a small file, and fast inference on a CPU.

`export_model` writes the packed file (1 bit per binary weight), `load_exported` reads it
back as an inference module, with ``binary_kernels=True`` running the XNOR-popcount
layers (`xnor_layers`, on the native kernels of `kernels` where they build, their C++ in
`csrc/`), with the BatchNorms that read them folded in (`fusion`); `bitpack` holds the bit
packing both use, `onnx_export` writes the float path as an ONNX file, `package` compiles the
kernels' model into a `.pt2` package for one CPU (`compile_package`, `load_package`), and
`summary` gives the per-layer sizes and operations of a model. Deployment may import the core
(`xnortrain.quantizers`, `zoo`, `model_factory`, ...); it imports neither the trainer
(`xnortrain.train`) nor its data, so the same file exports and loads the same way on any
machine.
"""

from .export import export_model, load_exported
from .package import compile_package, load_package

__all__ = ["compile_package", "export_model", "load_exported", "load_package"]
