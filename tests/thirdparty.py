"""torchvision and transformers for the tests that build real third-party models: skipped where they are not
installed (the ``zoo`` extra), and importable where torchvision's C++ ops cannot load on this torch."""
from __future__ import annotations

import glob
import importlib.util
import os
import sys

import pytest
import torch


def torchvision():
    """torchvision, also where its wheel's C++ ops cannot load on this torch (PyPI's Linux wheel links CUDA
    libraries that a CPU-only torch lacks): the models are plain torch, only the detection ops (nms) need the
    extension, and torchvision's import registers fake kernels for two of them. Declaring those two op
    schemas first lets the import finish; calling them still fails loudly."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None:
        pytest.skip("torchvision is not installed (pip install -e '.[zoo]')", allow_module_level=True)
    try:
        return __import__("torchvision")
    except RuntimeError as e:
        if "torchvision::nms" not in str(e):
            raise
    libs = glob.glob(os.path.join(os.path.dirname(spec.origin), "_C*.so"))
    try:
        torch.ops.load_library(libs[0])
    except (OSError, IndexError):
        lib = torch.library.Library("torchvision", "FRAGMENT")
        for op in ("nms", "qnms"):
            if not hasattr(torch.ops.torchvision, op):
                lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        torchvision.lib = lib  # keep the registration alive
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]
    return __import__("torchvision")


def transformers():
    """transformers (which imports torchvision where that is installed)."""
    if importlib.util.find_spec("transformers") is None:
        pytest.skip("transformers is not installed (pip install -e '.[zoo]')", allow_module_level=True)
    if importlib.util.find_spec("torchvision") is not None:
        torchvision()
    return __import__("transformers")
