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

Large weights spread their filters over torch's own OpenMP threads (see
:func:`_threading_flags`), and W~ and the gradient rule's result are written into recycled
memory (see :class:`RecycledMemory`).

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
import sys
import tempfile
import threading
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("fused_kernels.c")
FLAGS = ["-O3", "-march=native", "-fPIC", "-shared"]
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}


def usable(w: torch.Tensor) -> bool:
    """True when the kernels are loaded and can take W, and the tensors made from it, as they are.

    It runs once per weight per training step (at the projection), so it checks only what can
    differ between weights; the backward rule then only needs its gradient to be contiguous."""
    return (w.dtype in _SUFFIX and w.is_cpu and w.is_contiguous() and not torch.compiler.is_compiling()
            and library() is not None)


@torch.no_grad()
def binarize(w2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Step 4 on the filter-major view W (C_out, n): (W~, alpha, whether some |W_i| > 1)."""
    w_bin, alpha = torch.empty_like(w2), w2.new_empty((w2.shape[0], 1))
    kernel = getattr(library(), f"binarize_{_SUFFIX[w2.dtype]}")
    clipped = kernel(w2.data_ptr(), w_bin.data_ptr(), alpha.data_ptr(), w2.shape[0], w2.shape[1])
    return w_bin, alpha, bool(clipped)


@torch.no_grad()
def project_binarize_(w: torch.Tensor, centre: bool,
                      memory: RecycledMemory | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 1-2 on W (C_out, C_in, *kernel) in place, with mean-centring across C_in if
    `centre`; returns (W~, alpha): W~ in W's shape, written into `memory` where given,
    alpha (C_out, 1)."""
    c_out, c_in = w.shape[0], w.shape[1]
    w_bin, alpha = torch.empty_like(w) if memory is None else memory.empty_like(w), w.new_empty((c_out, 1))
    kernel = getattr(library(), f"project_binarize_{_SUFFIX[w.dtype]}")
    if kernel(w.data_ptr(), w_bin.data_ptr(), alpha.data_ptr(), c_out, c_in, w.numel() // (c_out * c_in),
              centre) != 0:
        raise MemoryError("xnortrain fused kernel: out of memory")
    torch.autograd.graph.increment_version(w)  # the kernel changed W behind autograd's back
    return w_bin, alpha


def binarized_grad(w_bin: torch.Tensor, g: torch.Tensor, alpha: torch.Tensor, scale: float,
                   memory: RecycledMemory | None = None) -> torch.Tensor:
    """scale * (alpha * G + sign(W~) * mean_j(sign_j G_j)) per filter, in the shape of G; W~ and G
    contiguous, of the same shape (any view of C_out filters of n), alpha (C_out, 1). The result
    is written into `memory` where given, else into fresh memory."""
    out = torch.empty_like(g) if memory is None else memory.empty_like(g)
    kernel = getattr(library(), f"binarized_grad_{_SUFFIX[g.dtype]}")
    c_out = alpha.shape[0]
    kernel(w_bin.data_ptr(), g.data_ptr(), alpha.data_ptr(), out.data_ptr(), c_out, g.numel() // c_out, scale)
    return out


def _reference_counts(buffers: list[bytearray]) -> list[int]:
    return [sys.getrefcount(buf) for buf in buffers]


_UNHELD = _reference_counts([bytearray(1)])[0]  # the count of a buffer only a list holds, as seen here


class RecycledMemory:
    """The memory of a weight's earlier tensors of one kind (its W~, or its gradients), for the
    next one to be written into.

    Why not fresh memory: glibc hands large freed blocks back to the system, so a tensor
    made afresh every step faults its pages in afresh (zeroed by the kernel); for LeNet-5's
    gradients that was 400-500 page faults a step, and recycling them took 1.5 to 3 points
    off the BinOp / plain step ratio in paired runs. While W~ was made afresh at every
    projection, the projection took 2.2 ms a LeNet-5 step instead of 0.5 ms in some
    processes, and 0.42-0.55 ms in the four runs since W~ is recycled too. The memory is a
    bytearray that every tensor made from it keeps referenced (through its storage, whoever
    holds the tensor: .grad, an optimizer, a hook, an autograd graph, a caller), so it is
    free again when its reference count is down to that of a buffer only this object holds.
    It keeps at most two buffers: a plain loop has one W~ and one gradient of the weight
    alive at a time, gradient accumulation two gradients; beyond that, fresh memory.

    Each binarized weight has its own two (`binop.Quantized`), so the memory goes with the
    parametrization: when BinOp is detached or the model is freed. A copied model starts
    with none.
    """

    KEPT = 2

    def __init__(self):
        self._buffers: list[bytearray] = []
        self._lock = threading.Lock()  # claiming a buffer is a check, then a new reference

    def __reduce__(self):
        return type(self), ()

    def empty_like(self, g: torch.Tensor) -> torch.Tensor:
        """An uninitialised tensor like `g`, in memory of an earlier tensor that no tensor holds
        any more where there is one."""
        nbytes = g.numel() * g.element_size()
        with self._lock:
            if any(len(buf) != nbytes for buf in self._buffers):  # the weight changed dtype or shape
                self._buffers = []
            free = next((buf for buf, count in zip(self._buffers, _reference_counts(self._buffers))
                         if count == _UNHELD), None)
            if free is None and len(self._buffers) < self.KEPT:
                free = bytearray(nbytes)
                self._buffers.append(free)
            if free is None:  # every buffer is in use: the caller keeps earlier tensors
                return torch.empty_like(g)
            return torch.frombuffer(free, dtype=g.dtype).view(g.shape)


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernels, built once per machine and source; None where they cannot be."""
    if os.environ.get("XNORTRAIN_FUSED", "1") == "0":
        return None
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        return None
    for threads_flag in _threading_flags():
        try:
            lib = ctypes.CDLL(str(_build(compiler, [*FLAGS, threads_flag])))
            break
        except (OSError, subprocess.CalledProcessError):
            continue
    else:
        return None
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    for suffix in _SUFFIX.values():
        getattr(lib, f"binarize_{suffix}").argtypes = [pointer] * 3 + [size] * 2
        getattr(lib, f"project_binarize_{suffix}").argtypes = [pointer] * 3 + [size] * 3 + [ctypes.c_int]
        getattr(lib, f"binarized_grad_{suffix}").argtypes = [pointer] * 4 + [size] * 2 + [ctypes.c_double]
    return lib


def _threading_flags() -> list[str]:
    """-fopenmp spreads the filters of large weights over torch's own OpenMP threads, where
    torch runs on libgomp and has loaded it (Linux wheels): the kernels then link to that
    very runtime and share its thread pool. Elsewhere a second OpenMP runtime would compete
    with torch's threads, so the kernels stay on one thread (-fopenmp-simd: vectorised only),
    as they also do when the compiler has no OpenMP."""
    one_thread = "-fopenmp-simd"
    try:
        torch_has_libgomp = "libgomp" in Path("/proc/self/maps").read_text()
    except OSError:
        return [one_thread]
    uses_openmp = "parallel backend: OpenMP" in torch.__config__.parallel_info()
    return ["-fopenmp", one_thread] if torch_has_libgomp and uses_openmp else [one_thread]


def _build(compiler: str, flags: list[str]) -> Path:
    """The library built with `flags`, from the cache if it is there."""
    key = hashlib.sha256(b"\0".join([SOURCE.read_bytes(), compiler.encode(), " ".join(flags).encode(),
                                     _cpu_model().encode()])).hexdigest()[:16]
    path = _cache_dir() / f"fused-{platform.machine()}-{key}.so"
    if not path.exists():
        _compile(compiler, flags, path)
    return path


def _compile(compiler: str, flags: list[str], path: Path) -> None:
    """Compile into a temporary file and rename it into place, so that processes starting
    together (torchrun) never load a half-written library."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        built = Path(tmp) / path.name
        subprocess.run([compiler, *flags, str(SOURCE), "-o", str(built)], check=True, capture_output=True)
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
