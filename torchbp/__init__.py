"""torchbp: the back-propagation δ formulas as drop-in PyTorch layers, and a checker that compares
them with native autograd layer by layer."""
__version__ = "0.1.0"

from . import functional, nn, registry  # noqa: E402
from .intercept import manual_backward  # noqa: E402
from .registry import register  # noqa: E402
from .swap import swap, swapped, unswap, unswappable  # noqa: E402
from .audit import AuditReport, assert_gradients_match, audit  # noqa: E402

__all__ = ["functional", "nn", "registry", "register", "swap", "unswap", "swapped", "unswappable",
           "manual_backward", "audit", "assert_gradients_match", "AuditReport", "__version__"]
