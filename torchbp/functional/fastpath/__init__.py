"""Machine tuning, apart from the formulas: faster forms of δ formulas (chunking, memory layouts, CPU-only
branches, fused steps), one file per family of ops.

Each helper here computes exactly what a plain formula in the family file computes, and names that
formula in its docstring; ``tests/test_fastpath_<family>.py`` holds it against the plain formula in every
floating dtype, on both sides of every threshold it has. Choices that depend on the CPU read the capability
torch reports (``cpu_capability``), never a timing taken on one host; measured timings live in
``benchmarks/`` and the CHANGELOG.
"""
from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=None)
def cpu_capability() -> str:
    """The vector instruction set torch's CPU kernels use here ("AVX512", "AVX2", "DEFAULT", ...)."""
    get = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
    return get() if get is not None else "DEFAULT"


def cpu_vector_floats() -> int:
    """float32 lanes in one vector of this CPU's kernels: 16 with AVX-512, 8 otherwise."""
    return 16 if cpu_capability().startswith("AVX512") else 8
