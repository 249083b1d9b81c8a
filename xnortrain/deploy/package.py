"""The compiled package: an exported model compiled ahead of time into a `.pt2` file of C++
for the CPU that compiles it, with no Python between its operations.

`compile_package` loads a packed file on the kernels (`load_exported(..., binary_kernels=True)`,
every fusion on), traces it with `torch.export` for inputs (batch, *input_shape) with a dynamic
batch, and compiles the program with AOTInductor (`torch._inductor.aoti_compile_and_package`,
PyTorch's documented entry point): the float work between the binary layers becomes fused C++
loops, and the binary layers stay calls to the registered ops of `kernels`, so the package
computes what the loaded model computes (the same integers; the float work up to rounding).
The package records in its metadata which build of the kernels it calls (`kernels.build_key`).
It needs the native kernels: the pure-PyTorch path's chunked loops do not trace for any batch
size (where the kernels do not run, `load_exported` runs that path from the packed file).

`load_package` loads the kernels first, then the package, and refuses one compiled against
another build of the kernels (another xnortrain or torch version): its calls would not fit the
ops' arguments. A package is machine code for its CPU's instruction set and the torch version
that wrote it, and loading it runs that code: compile it where it runs, from a packed file,
and load only packages you compiled. The packed file stays the portable one.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, UserError, first_line
from ..serialization import atomic_write
from . import kernels
from .export import exported_spec, load_exported

KERNELS_KEY = "xnortrain.kernels"  # the package metadata's entry naming the kernels' build


def compile_package(packed: str | Path, out: str | Path) -> int:
    """Compile the packed file `packed`, loaded on the kernels with every fusion, into the
    package `out` for this machine's CPU; returns its size in bytes (a UserError where the
    native kernels do not run here)."""
    problem = kernels.load()
    if problem is not None:
        raise UserError(f"a package calls the native kernels, which do not run here ({problem}); "
                        f"load {packed} with load_exported(..., binary_kernels=True) instead")
    model = load_exported(packed, binary_kernels=True)
    print(f"{out}: compiling with AOTInductor (tens of seconds)", file=sys.stderr, flush=True)
    start = time.perf_counter()
    package_model(model, exported_spec(packed)["input_shape"], out)
    print(f"{out}: compiled in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return Path(out).stat().st_size


def package_model(model: nn.Module, input_shape: tuple[int, ...] | list[int], out: str | Path) -> None:
    """Write the package of `model` (a model loaded on the native kernels) for inputs
    (batch, *input_shape), the batch dynamic (a UserError where AOTInductor cannot compile it).
    Inductor's caches are bypassed: their keys do not cover a custom op's arguments, so a cached
    graph could call the kernels of another version."""
    example = torch.zeros(2, *input_shape)  # batch 2: a batch of 1 would be specialized to 1
    with torch.no_grad():
        program = torch.export.export(model.eval(), (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    options = {"aot_inductor.metadata": {KERNELS_KEY: kernels.build_key()}, "force_disable_caches": True}
    atomic_write(out, lambda f: _compile(program, f, options, out))


def _compile(program: torch.export.ExportedProgram, target, options: dict, out: str | Path) -> None:
    """AOTInductor's compile of `program` into the open file `target`; its errors (no working C++
    compiler, a failed build) become one UserError line about the package `out`."""
    try:
        torch._inductor.aoti_compile_and_package(program, package_path=target, inductor_configs=options)
    except Exception as err:  # whatever AOTInductor raises, as its message's first line
        raise UserError(f"AOTInductor could not compile {out} ({first_line(err)}); a package needs a working C++ "
                        f"compiler (g++ or clang++ on PATH, or named by CXX)") from None


def load_package(path: str | Path):
    """The compiled model of a package `compile_package` wrote (called as ``model(x)``, x of
    shape (batch, *input_shape)); a CheckpointError where the file is missing, damaged, not
    written by xnortrain, or compiled against a build of the kernels that this process does not
    run."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"package {path} does not exist")
    package = _load(path, kernels.load())
    compiled_for, here = package.get_metadata().get(KERNELS_KEY), kernels.build_key()
    if compiled_for is None:
        raise CheckpointError(f"{path} is an AOTInductor package that xnortrain did not write (no {KERNELS_KEY} "
                              f"in its metadata); load it with torch._inductor.aoti_load_package")
    if compiled_for != here:
        raise CheckpointError(f"{path} calls another build of xnortrain's kernels ({compiled_for}; this process "
                              f"runs {here}): compile it again here with `python -m xnortrain package`")
    return package


def _load(path: Path, kernels_problem: str | None):
    """torch's loader, whose RuntimeErrors (a damaged file, an op it cannot find) become one
    CheckpointError line; its warning before its second try at an older format is muted."""
    loader_log = logging.getLogger("torch._inductor.package.package")
    level = loader_log.level
    loader_log.setLevel(logging.ERROR)
    try:
        return torch._inductor.aoti_load_package(str(path))
    except RuntimeError as err:
        missing_kernels = f" (the native kernels do not load here: {kernels_problem})" if kernels_problem else ""
        raise CheckpointError(f"{path} is not a package this process can load: {first_line(err)}{missing_kernels}; "
                              f"compile one here with `python -m xnortrain package`") from None
    finally:
        loader_log.setLevel(level)
