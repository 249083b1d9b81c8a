"""Optional dependencies, imported only where a feature uses them.

`import xnortrain`, BinOp, export and the zoo need torch alone. torchvision (its data sets
and models) comes with the ``vision`` extra; a feature that needs a package that is not
installed says so in one line, naming the extra to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingDependency


def require(module: str, extra: str, feature: str) -> ModuleType:
    """`module` imported, or a MissingDependency naming `feature` and ``xnortrain[extra]``."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependency(f"{feature} needs {module.partition('.')[0]}, which is not installed; "
                                f"pip install 'xnortrain[{extra}]'") from None
