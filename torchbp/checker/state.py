"""The model's and the inputs' state around the passes: working copies in the audit's dtype and
device, fresh leaf inputs, buffers restored, the generators seeded."""
from __future__ import annotations

import contextlib
import copy
import hashlib

import torch

from .capture import leaves, remap


def first_float(model, inputs):
    """The first floating tensor among the model's parameters, buffers and the inputs (None if none)."""
    for t in list(model.parameters()) + list(model.buffers()) + [t for _, t in leaves(inputs)]:
        if t.is_floating_point():
            return t
    return None


@contextlib.contextmanager
def buffers_kept(model):
    """Buffers (BatchNorm running stats, num_batches_tracked) restored in place afterwards."""
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, v in saved:
                if b.shape == v.shape and b.dtype == v.dtype:
                    b.copy_(v)


def converted_copy(model, dtype, device):
    """A converted deep copy, without copying the original's .grad tensors."""
    params = list(model.parameters())
    grads = [p.grad for p in params]
    for p in params:
        p.grad = None
    try:
        duplicate = copy.deepcopy(model)
    finally:
        for p, g in zip(params, grads):
            p.grad = g
    return duplicate.to(device=device, dtype=dtype)


def fits(model, dtype, device) -> bool:
    """Whether every parameter and buffer already has ``device`` and (floating ones) ``dtype``."""
    for t in list(model.parameters()) + list(model.buffers()):
        if t.device != device or (t.is_floating_point() and t.dtype != dtype):
            return False
    return True


def working_model(model, dtype, device):
    """``model`` itself when it fits, else a converted copy."""
    return model if fits(model, dtype, device) else converted_copy(model, dtype, device)


def convert(obj, dtype, device):
    """Fresh leaf copies: floating tensors to ``dtype``, every tensor to ``device``."""
    def conv(t):
        c = t.detach().to(device=device, dtype=dtype if t.is_floating_point() else t.dtype, copy=True)
        return c.requires_grad_(t.requires_grad and c.is_floating_point())
    return remap(obj, conv)


def fresh(inputs):
    """New leaves with the same values (each pass builds its own graph from them)."""
    return remap(inputs, lambda t: t.detach().clone().requires_grad_(t.requires_grad))


def split_inputs(inputs):
    """(args, kwargs) of a tensor, a tuple of positional arguments or a dict of keyword arguments."""
    if isinstance(inputs, dict):
        return (), inputs
    if isinstance(inputs, (tuple, list)) and not hasattr(inputs, "_fields"):
        return tuple(inputs), {}
    return (inputs,), {}


def seed_generators(seed, device):
    """Seed torch's default generators (CPU, and the audit's CUDA device) so each pass draws the same."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        torch.cuda.default_generators[index].manual_seed(seed)


def digest(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's bytes."""
    b = t.detach().reshape(-1).contiguous().cpu()
    return hashlib.sha256(b.view(torch.uint8).numpy().tobytes()).hexdigest()
