"""torchbp: the back-propagation δ formulas as drop-in PyTorch layers, and a checker that compares
them with native autograd layer by layer."""
import importlib
import sys
import types

__version__ = "0.1.0"

# Public names load on first use (PEP 562): pytest imports this package at start-up for the
# torchbp.pytest_plugin entry point, and must not pay for importing torch there.
# torchbp.audit is a function; the checker behind it is the package torchbp.checker
_SUBMODULES = ("functional", "nn", "registry", "checker")
_FROM = {"manual_backward": "intercept", "register": "registry", "swap": "swap", "swapped": "swap",
         "unswap": "swap", "unswappable": "swap", "audit": "checker", "assert_gradients_match": "checker",
         "AuditReport": "checker"}
__all__ = [*_SUBMODULES, *_FROM, "__version__"]


def _lazy(package: str, names: dict, submodules=()):
    """A PEP 562 ``__getattr__`` for ``package``: submodules import on first access, ``names[name]`` is
    the submodule whose attribute ``name`` is (loaded once, then cached in the package)."""
    def __getattr__(name):
        if name in submodules:
            return importlib.import_module(f".{name}", package)
        if name in names:
            value = getattr(importlib.import_module(f".{names[name]}", package), name)
            vars(sys.modules[package])[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    return __getattr__


__getattr__ = _lazy(__name__, _FROM, _SUBMODULES)


def __dir__():
    return sorted(__all__)


class _Package(types.ModuleType):
    def __setattr__(self, name, value):
        # importing torchbp.swap binds the submodule here; the public name is the function
        if not (name in _FROM and isinstance(value, types.ModuleType)):
            super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
