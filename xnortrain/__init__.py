"""xnortrain: train binary-weight and XNOR networks with the XNOR-Net BinOp procedure.

`import xnortrain` needs torch alone; torchvision (the ``vision`` extra) is imported only
by the parts that load its data sets or models (see `optional.py`).
"""

from .activations import bin_active
from .binop import BinOp
from .quantizers import binarize, binarize_weight

__all__ = ["BinOp", "bin_active", "binarize", "binarize_weight"]
__version__ = "0.1.0"
