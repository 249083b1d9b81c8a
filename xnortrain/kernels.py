"""The native XNOR-popcount kernels (`csrc/xnor_kernels.cpp`) as torch custom ops.

The C++ source is compiled on first use with `torch.utils.cpp_extension.load`, into
torch's extension cache under its file lock, and registers

    torch.ops.xnortrain.xnor_conv2d(x, weight, alpha, bias, stride, padding, dilation, groups)
    torch.ops.xnortrain.xnor_linear(x, weight, alpha, bias)

with fake implementations, so `torch.export` and `torch.compile` can trace a model that
calls them. Without a compiler, when the build fails, on a CPU without POPCNT, or with
``XNORTRAIN_NO_KERNELS=1``, the binary layers run the pure-PyTorch path of `bits.py`, which
computes the same integers; :func:`path_in_use` says in one line which path runs.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

import torch

SOURCE = Path(__file__).parent / "csrc" / "xnor_kernels.cpp"
DISABLE = "XNORTRAIN_NO_KERNELS"


def native() -> bool:
    """True when the binary layers run the native kernels."""
    return os.environ.get(DISABLE, "") in ("", "0") and _build() is None


def path_in_use() -> str:
    """One line naming the path the binary layers run."""
    if os.environ.get(DISABLE, "") not in ("", "0"):
        return f"binary layers: pure-PyTorch XNOR-popcount path ({DISABLE} is set)"
    problem = _build()
    if problem is not None:
        return f"binary layers: pure-PyTorch XNOR-popcount path (native kernels unavailable: {problem})"
    return (f"binary layers: native XNOR-popcount kernels ({torch.ops.xnortrain.popcount_path()}), "
            f"{torch.get_num_threads()} threads")


@functools.cache
def _build() -> str | None:
    """Build and load the extension once; None on success, else why it is not used."""
    from torch.utils import cpp_extension

    try:
        cpp_extension.load(name="xnortrain_kernels", sources=[str(SOURCE)], extra_cflags=["-O3", *_openmp_flags()],
                           extra_ldflags=_openmp_flags(), is_python_module=False, verbose=False)
    except (RuntimeError, OSError, ImportError) as err:
        return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if not torch.ops.xnortrain.hardware_popcount():
        return "this CPU has no POPCNT instruction"
    _register_fakes()
    return None


def _openmp_flags() -> list[str]:
    """-fopenmp where torch's own threads are OpenMP's, so at::parallel_for in the kernels
    uses torch's thread pool (the extension links to the libgomp torch has loaded)."""
    openmp = "parallel backend: OpenMP" in torch.__config__.parallel_info()
    return ["-fopenmp"] if openmp and platform.system() == "Linux" else []


def conv_output_shape(x: torch.Tensor, weight: torch.Tensor, stride, padding, dilation) -> list[int]:
    """(N, C_out, H_out, W_out) of a conv with packed weights (C_out, KH, KW, words)."""
    sizes = [(x.shape[2 + i] + 2 * padding[i] - dilation[i] * (weight.shape[1 + i] - 1) - 1) // stride[i] + 1
             for i in range(2)]
    return [x.shape[0], weight.shape[0], *sizes]


def _register_fakes() -> None:
    @torch.library.register_fake("xnortrain::xnor_conv2d")
    def _(x, weight, alpha, bias, stride, padding, dilation, groups):
        shape = conv_output_shape(x, weight, stride, padding, dilation)
        return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)

    @torch.library.register_fake("xnortrain::xnor_linear")
    def _(x, weight, alpha, bias):
        return x.new_empty((*x.shape[:-1], weight.shape[0]))
