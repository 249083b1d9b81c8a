import sys
from pathlib import Path

import pytest

from xnortrain import fused

# tests import the reference implementation as a plain module
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def eager(monkeypatch):
    """Run BinOp without the fused kernels, as on a machine without a C compiler."""
    monkeypatch.setattr(fused, "usable", lambda w: False)
