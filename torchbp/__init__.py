"""torchbp: the back-propagation δ formulas as drop-in PyTorch layers, and a checker that compares
them with native autograd layer by layer."""
import importlib
import sys
import types

__version__ = "0.1.0"

# Public names load on first use (PEP 562): pytest imports this package at start-up for the
# torchbp.pytest_plugin entry point, and must not pay for importing torch there.
# torchbp.audit is the audit package, callable: torchbp.audit(model, x) runs the audit
_SUBMODULES = ("functional", "nn", "registry", "audit")
_FROM = {"manual_backward": "intercept", "register": "registry", "swap": "swap", "swapped": "swap",
         "unswap": "swap", "unswappable": "swap", "assert_gradients_match": "audit", "AuditReport": "audit"}
__all__ = [*_SUBMODULES, *_FROM, "__version__"]


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _FROM:
        value = getattr(importlib.import_module(f".{_FROM[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(__all__)


class _Package(types.ModuleType):
    def __setattr__(self, name, value):
        # importing torchbp.swap binds the submodule here; the public name is the function
        if not (name in _FROM and isinstance(value, types.ModuleType)):
            super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
