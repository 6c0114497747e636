"""An independent float64 NumPy implementation of the derivation's back-propagation for dense networks.

No torch inside the math: this is the third opinion the demo and the audit hold the δ layers and
native autograd against. Notation as in the derivation (layers j, i, k, q, p; l = 1 … n_l; batch of B rows):

  forward    a(1) = x,   z(l+1) = W(l) a(l) + b(l),   a(l+1) = f(z(l+1))
  cost       J = (1/B) Σ_n ½‖y_n − h_n‖²  with h = a(n_l)   (reduction="mean"; "sum" drops the 1/B)
  output     δ(n_l) = −(y − h) ⊙ f'(z(n_l))            (times 1/B for the batch mean)
  recursion  δ(l)   = (W(l)ᵀ δ(l+1)) ⊙ f'(z(l))
  gradients  ∂J/∂W(l) = δ(l+1) a(l)ᵀ,   ∂J/∂b(l) = δ(l+1)   (each summed over the batch)

Here δ(l) = ∂J/∂z(l) for the whole batch, so it already carries the 1/B of the mean and the batch
sums of ∂J/∂W and ∂J/∂b give the gradient of J itself, as autograd reports it.
"""
from __future__ import annotations

import math

import numpy as np

_erf = np.vectorize(math.erf, otypes=[np.float64])
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # = 1/(1+e^{−z}), without overflow for large |z|


# name -> (f, f'), each taking z and the activation's keyword arguments
def _gelu(z, approximate="none"):
    if approximate == "tanh":
        return 0.5 * z * (1 + np.tanh(_SQRT_2_OVER_PI * (z + 0.044715 * z ** 3)))
    return 0.5 * z * (1 + _erf(z / math.sqrt(2.0)))


def _dgelu(z, approximate="none"):
    if approximate == "tanh":
        t = np.tanh(_SQRT_2_OVER_PI * (z + 0.044715 * z ** 3))
        return 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * _SQRT_2_OVER_PI * (1 + 3 * 0.044715 * z * z)
    return 0.5 * (1 + _erf(z / math.sqrt(2.0))) + z * np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)


def _softplus(z, beta=1.0, threshold=20.0):
    bz = beta * z
    return np.where(bz > threshold, z, np.logaddexp(0.0, np.minimum(bz, threshold)) / beta)


ACTIVATIONS = {
    "identity": (lambda z: z, lambda z: np.ones_like(z)),
    "sigmoid": (_sigmoid, lambda z: _sigmoid(z) * (1 - _sigmoid(z))),
    "tanh": (np.tanh, lambda z: 1 - np.tanh(z) ** 2),
    "relu": (lambda z: np.maximum(z, 0.0), lambda z: (z > 0).astype(np.float64)),
    "leaky_relu": (lambda z, negative_slope=0.01: np.where(z > 0, z, negative_slope * z),
                   lambda z, negative_slope=0.01: np.where(z > 0, 1.0, negative_slope)),
    "elu": (lambda z, alpha=1.0: np.where(z > 0, z, alpha * np.expm1(np.minimum(z, 0.0))),
            lambda z, alpha=1.0: np.where(z > 0, 1.0, alpha * np.exp(np.minimum(z, 0.0)))),
    "gelu": (_gelu, _dgelu),
    "silu": (lambda z: z * _sigmoid(z), lambda z: _sigmoid(z) * (1 + z * (1 - _sigmoid(z)))),
    "softplus": (_softplus,
                 lambda z, beta=1.0, threshold=20.0: np.where(beta * z > threshold, 1.0, _sigmoid(beta * z))),
    "hardtanh": (lambda z, min_val=-1.0, max_val=1.0: np.clip(z, min_val, max_val),
                 lambda z, min_val=-1.0, max_val=1.0: ((z > min_val) & (z < max_val)).astype(np.float64)),
    "relu6": (lambda z: np.clip(z, 0.0, 6.0), lambda z: ((z > 0) & (z < 6)).astype(np.float64)),
}


def _spec(act):
    """An activation spec is a name or ``(name, {kwargs})``."""
    name, kw = (act, {}) if isinstance(act, str) else (act[0], dict(act[1]))
    if name not in ACTIVATIONS:
        raise ValueError(f"torchbp.reference: unknown activation {name!r}; known: {', '.join(ACTIVATIONS)}")
    return name, kw


def forward(weights, biases, activations, x):
    """The forward pass, storing every layer: returns ``(z, a)`` with ``a[0] = x``, ``z[0] = None`` and
    ``z[l+1] = a[l] W(l)ᵀ + b(l)``, ``a[l+1] = f(z[l+1])`` (rows are examples)."""
    a = [np.asarray(x, dtype=np.float64)]
    z = [None]
    for W, b, act in zip(weights, biases, activations):
        name, kw = _spec(act)
        zl = a[-1] @ np.asarray(W, np.float64).T
        if b is not None:
            zl = zl + np.asarray(b, np.float64)
        z.append(zl)
        a.append(ACTIVATIONS[name][0](zl, **kw))
    return z, a


def backprop(weights, biases, activations, x, y, reduction="mean"):
    """The derivation's algorithm for a dense network under the cost J = ½‖y − h‖² per example.

    weights[l]: (s_{l+1}, s_l); biases[l]: (s_{l+1},) or None; activations[l]: the f applied to
    z(l+1) (a name of :data:`ACTIVATIONS`, or ``(name, kwargs)``); x: (B, s_1); y: (B, s_{n_l}).
    ``reduction="mean"`` averages J over the batch (torchbp's HalfSquaredError default), "sum" adds.

    Returns a dict of float64 arrays: ``loss`` (J), ``z`` and ``a`` (as :func:`forward`),
    ``deltas[l]`` = δ(l+1) = ∂J/∂z(l+1), shape (B, s_{l+1}), one per weight layer;
    ``grad_W[l]`` = Σ_batch δ(l+1) a(l)ᵀ and ``grad_b[l]`` = Σ_batch δ(l+1) (None where the bias is).
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"torchbp.reference: reduction must be 'mean' or 'sum', got {reduction!r}")
    if not (len(weights) == len(biases) == len(activations)):
        raise ValueError("torchbp.reference: weights, biases and activations must have one entry per layer, "
                         f"got {len(weights)}, {len(biases)}, {len(activations)}")
    x = np.atleast_2d(np.asarray(x, np.float64))
    y = np.atleast_2d(np.asarray(y, np.float64))
    z, a = forward(weights, biases, activations, x)
    h = a[-1]
    if y.shape != h.shape:
        raise ValueError(f"torchbp.reference: target y has shape {y.shape} but the output h has shape {h.shape}")
    scale = 1.0 / x.shape[0] if reduction == "mean" else 1.0
    loss = scale * 0.5 * float(((y - h) ** 2).sum())

    n = len(weights)
    specs = [_spec(act) for act in activations]
    fprime = [ACTIVATIONS[name][1](z[l + 1], **kw) for l, (name, kw) in enumerate(specs)]  # f'(z(l+1))
    deltas = [None] * n
    deltas[-1] = -(y - h) * fprime[-1] * scale                                   # δ(n_l)
    for l in range(n - 2, -1, -1):
        deltas[l] = (deltas[l + 1] @ np.asarray(weights[l + 1], np.float64)) * fprime[l]  # (W ᵀδ) ⊙ f'
    grad_W = [deltas[l].T @ a[l] for l in range(n)]                              # δ(l+1) a(l)ᵀ
    grad_b = [None if biases[l] is None else deltas[l].sum(0) for l in range(n)]  # δ(l+1)
    return dict(loss=loss, z=z, a=a, deltas=deltas, grad_W=grad_W, grad_b=grad_b)


def from_torch(model):
    """``(weights, biases, activations)`` as NumPy float64 from an ``nn.Sequential`` of ``Linear``
    layers, each optionally followed by one activation module (torchbp twins included).

    Raises ValueError naming the first module that this dense reference cannot represent.
    """
    import torch  # only to read the model; the math above never sees torch

    acts = {torch.nn.Sigmoid: lambda m: "sigmoid", torch.nn.Tanh: lambda m: "tanh",
            torch.nn.ReLU: lambda m: "relu", torch.nn.ReLU6: lambda m: "relu6",
            torch.nn.LeakyReLU: lambda m: ("leaky_relu", {"negative_slope": m.negative_slope}),
            torch.nn.ELU: lambda m: ("elu", {"alpha": m.alpha}),
            torch.nn.GELU: lambda m: ("gelu", {"approximate": m.approximate}),
            torch.nn.SiLU: lambda m: "silu",
            torch.nn.Softplus: lambda m: ("softplus", {"beta": m.beta, "threshold": m.threshold}),
            torch.nn.Hardtanh: lambda m: ("hardtanh", {"min_val": m.min_val, "max_val": m.max_val}),
            torch.nn.Identity: lambda m: "identity"}

    def activation(m):
        for cls in type(m).__mro__:  # most specific first: ReLU6 before Hardtanh, a twin before its base
            if cls in acts:
                return acts[cls](m)
        return None

    if not isinstance(model, torch.nn.Sequential):
        raise ValueError(f"torchbp.reference.from_torch: expected an nn.Sequential of Linear and activation "
                         f"modules, got {type(model).__name__}")
    weights, biases, activations = [], [], []
    for name, m in model.named_children():
        if isinstance(m, torch.nn.Linear):
            weights.append(m.weight.detach().cpu().double().numpy())
            biases.append(None if m.bias is None else m.bias.detach().cpu().double().numpy())
            activations.append("identity")
            continue
        act = activation(m)
        if act is None:
            raise ValueError(f"torchbp.reference.from_torch: module {name!r} ({type(m).__name__}) is neither "
                             "Linear nor a supported activation "
                             f"({', '.join(c.__name__ for c in acts)}); the NumPy reference covers dense nets only")
        if act == "identity":
            continue
        if not weights or activations[-1] != "identity":
            raise ValueError(f"torchbp.reference.from_torch: module {name!r} ({type(m).__name__}) must follow a "
                             "Linear layer (one activation per layer)")
        activations[-1] = act
    if not weights:
        raise ValueError("torchbp.reference.from_torch: the model has no Linear layer")
    return weights, biases, activations
