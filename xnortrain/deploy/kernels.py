"""The native XNOR-popcount kernels (`csrc/xnor_kernels.cpp`) as torch custom ops.

`load()` compiles the C++ source with `torch.utils.cpp_extension.load` the first time a
machine asks for the kernels (tens of seconds, announced by one line on stderr before it
starts) into a cache folder named by a hash of the source, the torch version and the
flags; later processes load the built library in a fraction of a second. Nothing builds on
import or inside a layer's constructor: `load_exported(..., binary_kernels=True)` and
``python -m xnortrain kernels`` call `load`. Once loaded, the library registers

    torch.ops.xnortrain.xnor_conv2d(x, weight, tap_bits, alpha, bias, stride, padding, dilation,
                                    groups, input_scale=None, input_bias=None, signs_channels=0,
                                    sign_bounds=None, residual=None)
    torch.ops.xnortrain.xnor_linear(x, weight, alpha, bias, input_scale=None, input_bias=None)
    torch.ops.xnortrain.sign_max_pool2d(signs, falling, kernel, stride, padding, ceil_mode)

(weights in the layout of `xnor_layers.kernel_layout`, their set bits per tap from
`xnor_layers.tap_bits`; the input bits are sign(x), or
sign(input_scale * x + input_bias) per input channel; `residual`, a tensor of the output's
shape, is added to the output in the epilogue (`fusion.fuse_residual_sums`); with
`sign_bounds` (2, C_out) int64 a conv returns, instead of y, the packed bits
low_o <= dot <= high_o, int64 (N, H, W, words):
the next conv's input bits, `xnor_layers.sign_bounds`, which it takes as x with
`signs_channels` = C, max-pooled on the way where a pool lies between them
(`xnor_layers.SignMaxPool2d`): `fusion.fuse_sign_chains`)
with fake implementations, so `torch.export` and `torch.compile` can trace a model that
calls them. Without a compiler, when the build fails, on a CPU without POPCNT, or with
``XNORTRAIN_NO_KERNELS=1``, `load` returns the reason in one line and the binary layers run
the pure-PyTorch path of `xnor_layers.py`, which computes the same integers.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

from ..errors import first_line

SOURCE = Path(__file__).parent / "csrc" / "xnor_kernels.cpp"
NAME = "xnortrain_kernels"
DISABLE = "XNORTRAIN_NO_KERNELS"
CACHE = "XNORTRAIN_CACHE"  # where the built library goes (default ~/.cache/xnortrain)


def load() -> str | None:
    """Build the kernels where this machine has not built them yet, and load them (once per
    process); None when they run, else the one-line reason the pure-PyTorch path runs."""
    if os.environ.get(DISABLE, "") not in ("", "0"):
        return f"{DISABLE} is set"
    return _build_and_load()


def path_in_use() -> str:
    """One line naming the path the binary layers run (after `load`)."""
    problem = load()
    if problem is not None:
        return f"pure-PyTorch XNOR-popcount path (native kernels unavailable: {problem})"
    return (f"native XNOR-popcount kernels ({torch.ops.xnortrain.popcount_path()}), "
            f"{torch.get_num_threads()} threads")


def build_key() -> str:
    """The name of this build: a hash of the source, the torch version, the machine and the flags."""
    key = hashlib.sha256(b"\0".join([SOURCE.read_bytes(), torch.__version__.encode(), platform.machine().encode(),
                                     " ".join(_flags()).encode()])).hexdigest()[:16]
    return f"kernels-{key}"


def build_directory() -> Path:
    """The cache folder of this build (`build_key`)."""
    root = Path(os.environ.get(CACHE) or Path.home() / ".cache" / "xnortrain")
    return root / build_key()


@functools.cache
def _build_and_load() -> str | None:
    library = build_directory() / f"{NAME}.so"
    try:
        if library.is_file():
            torch.ops.load_library(str(library))  # built by an earlier process: no compiler, no build tools
        else:
            _build(library.parent)
    except (RuntimeError, OSError, ImportError, subprocess.SubprocessError) as err:  # no or a broken compiler
        return first_line(err)
    if not torch.ops.xnortrain.hardware_popcount():
        return "this CPU has no POPCNT instruction"
    _register_fakes()
    return None


def _build(directory: Path) -> None:
    """Compile the source into `directory` and load it (torch's file lock keeps two processes
    from building at once)."""
    from torch.utils import cpp_extension

    print(f"xnortrain: building the XNOR-popcount kernels in {directory} (once per machine and torch "
          f"version, about a minute)", file=sys.stderr, flush=True)
    directory.mkdir(parents=True, exist_ok=True)
    cpp_extension.load(name=NAME, sources=[str(SOURCE)], build_directory=str(directory), extra_cflags=_flags(),
                       extra_ldflags=_openmp_flags(), is_python_module=False, verbose=False)


def _flags() -> list[str]:
    """-O3; -ffp-contract=off keeps each multiply and add apart (no fused multiply-add), so that
    the input map and the epilogue round as the PyTorch path does."""
    return ["-O3", "-ffp-contract=off", *_openmp_flags()]


def _openmp_flags() -> list[str]:
    """-fopenmp where torch's own threads are OpenMP's, so at::parallel_for in the kernels
    uses torch's thread pool (the extension links to the libgomp torch has loaded)."""
    openmp = "parallel backend: OpenMP" in torch.__config__.parallel_info()
    return ["-fopenmp"] if openmp and platform.system() == "Linux" else []


def _register_fakes() -> None:
    from .xnor_layers import conv_output_size, pooled_size, words_for

    @torch.library.register_fake("xnortrain::xnor_conv2d")
    def _(x, weight, tap_bits, alpha, bias, stride, padding, dilation, groups, input_scale=None, input_bias=None,
          signs_channels=0, sign_bounds=None, residual=None):
        h, w = conv_output_size(x.shape[1:3] if signs_channels else x.shape[2:], weight.shape[2:4], stride, padding,
                                dilation)
        if sign_bounds is not None:
            return x.new_empty((x.shape[0], h, w, words_for(alpha.shape[0])), dtype=torch.int64)
        return torch.empty((x.shape[0], alpha.shape[0], h, w), dtype=alpha.dtype, device=x.device,
                           memory_format=torch.channels_last)

    @torch.library.register_fake("xnortrain::sign_max_pool2d")
    def _(signs, falling, kernel, stride, padding, ceil_mode):
        sizes = [pooled_size(signs.shape[1 + i], kernel[i], stride[i], padding[i], ceil_mode) for i in range(2)]
        return signs.new_empty((signs.shape[0], *sizes, signs.shape[3]))

    @torch.library.register_fake("xnortrain::xnor_linear")
    def _(x, weight, alpha, bias, input_scale=None, input_bias=None):
        return x.new_empty((*x.shape[:-1], alpha.shape[0]))
