"""Fused CPU kernels for the xnor quantizer, with the eager PyTorch path as the fallback.

Eager PyTorch makes one pass over the weights per operation: the projection, binarization
and gradient rule take about 14 passes over every binarized weight per training step,
which cost LeNet-5 6% of its step on a 2-core CPU. `fused_kernels.c` does the same maths
in two passes per step, a filter at a time:

- :func:`project_binarize_`: steps 1-2 (centre, clamp) and step 4 (W~ = alpha * sign(W))
  in one walk over the weights, right after the optimizer step;
- :func:`binarize`: step 4 alone, for weights that changed without a projection, giving
  the same bits as :func:`project_binarize_` for the same W;
- :func:`binarized_grad`: step 7, the xnor or exact gradient rule, where |W_i| <= 1.

The kernels are compiled on first use with the system C compiler (``$CC``, else ``cc``)
into ``~/.cache/xnortrain`` (``$XNORTRAIN_CACHE``) and loaded with ctypes; there is no
build step at install time. Without a compiler, or with ``XNORTRAIN_FUSED=0``, BinOp runs
the eager path, which computes the same formulas (tests hold the two to the same
reference). They serve float32 and float64 CPU tensors; other dtypes and devices, and
torch.compile (which fuses the eager path itself), use the eager path.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("fused_kernels.c")
FLAGS = ["-O3", "-march=native", "-fopenmp-simd", "-fPIC", "-shared"]
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}


def usable(*tensors: torch.Tensor) -> bool:
    """True when the kernels are loaded and can take these tensors as they are."""
    first = tensors[0]
    return (first.dtype in _SUFFIX and not torch.compiler.is_compiling()
            and all(t.device.type == "cpu" and t.dtype == first.dtype and t.is_contiguous() for t in tensors)
            and library() is not None)


@torch.no_grad()
def binarize(w2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Step 4 on the filter-major view W (C_out, n): (W~, alpha, whether some |W_i| > 1)."""
    w_bin, alpha = torch.empty_like(w2), w2.new_empty((w2.shape[0], 1))
    kernel = getattr(library(), f"binarize_{_SUFFIX[w2.dtype]}")
    clipped = kernel(w2.data_ptr(), w_bin.data_ptr(), alpha.data_ptr(), w2.shape[0], w2.shape[1])
    return w_bin, alpha, bool(clipped)


@torch.no_grad()
def project_binarize_(w: torch.Tensor, centre: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 1-2 on W (C_out, C_in, *kernel) in place, with mean-centring across C_in if
    `centre`; returns (W~, alpha) in the filter-major view: (C_out, n) and (C_out, 1)."""
    c_out, c_in, k = w.shape[0], w.shape[1], w.shape[2:].numel()
    w_bin, alpha = w.new_empty((c_out, c_in * k)), w.new_empty((c_out, 1))
    kernel = getattr(library(), f"project_binarize_{_SUFFIX[w.dtype]}")
    if kernel(w.data_ptr(), w_bin.data_ptr(), alpha.data_ptr(), c_out, c_in, k, int(centre)) != 0:
        raise MemoryError("xnortrain fused kernel: out of memory")
    torch.autograd.graph.increment_version(w)  # the kernel changed W behind autograd's back
    return w_bin, alpha


def binarized_grad(w_bin: torch.Tensor, g: torch.Tensor, alpha: torch.Tensor, scale: float) -> torch.Tensor:
    """scale * (alpha * G + sign(W~) * mean_j(sign_j G_j)) per filter; all in (C_out, n) views."""
    out = torch.empty_like(w_bin)
    kernel = getattr(library(), f"binarized_grad_{_SUFFIX[w_bin.dtype]}")
    kernel(w_bin.data_ptr(), g.data_ptr(), alpha.data_ptr(), out.data_ptr(), w_bin.shape[0], w_bin.shape[1],
           ctypes.c_double(scale))
    return out


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernels, built once per machine and source; None where they cannot be."""
    if os.environ.get("XNORTRAIN_FUSED", "1") == "0":
        return None
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        return None
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, compiler.encode(), " ".join(FLAGS).encode(),
                                     _cpu_model().encode()])).hexdigest()[:16]
    path = _cache_dir() / f"fused-{platform.machine()}-{key}.so"
    try:
        if not path.exists():
            _compile(compiler, path)
        lib = ctypes.CDLL(str(path))
    except (OSError, subprocess.CalledProcessError):
        return None
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    for suffix in _SUFFIX.values():
        getattr(lib, f"binarize_{suffix}").argtypes = [pointer] * 3 + [size] * 2
        getattr(lib, f"project_binarize_{suffix}").argtypes = [pointer] * 3 + [size] * 3 + [ctypes.c_int]
        getattr(lib, f"binarized_grad_{suffix}").argtypes = [pointer] * 4 + [size] * 2 + [ctypes.c_double]
    return lib


def _compile(compiler: str, path: Path) -> None:
    """Compile into a temporary file and rename it into place, so that processes starting
    together (torchrun) never load a half-written library."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        built = Path(tmp) / path.name
        subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", str(built)], check=True, capture_output=True)
        os.replace(built, path)


def _cache_dir() -> Path:
    return Path(os.environ.get("XNORTRAIN_CACHE", Path.home() / ".cache" / "xnortrain"))


def _cpu_model() -> str:
    """-march=native builds for this CPU: a cache shared between machines must not mix them."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags")):  # x86 has both, the first is enough
                return line
    except OSError:
        pass
    return platform.processor()
