"""Costs J(h, y): where back-propagation starts, δ at the output = ∂J/∂h.

The derivation's cost is ``HalfSquaredError``, J = ½‖y − h‖² per example, whose δ is −(y − h).
Every loss reduces per-element (or per-example) terms ℓ: reduction "none" keeps them, "sum" adds
them, "mean" divides the sum by their count (by the summed class weights for weighted NLL / CE).
backward spreads the arriving δ_J back over the terms, δ_ℓ = δ_J (or δ_J / count for "mean"), and
multiplies by ∂ℓ/∂h (and ∂ℓ/∂y where torch differentiates the target too).

Every loss runs in float32 under autocast, as torch's autocast lists have it (policy FP32).

One module per family, each Function next to its functional form:
  regression.py      mse, l1, smooth_l1, huber, and the derivation's half_squared_error
  classification.py  nll, cross_entropy, binary_cross_entropy (+ with_logits), kl_div
  margin.py          soft margin, multilabel soft margin, margin ranking, hinge embedding, cosine embedding,
                     triplet margin (+ with_distance), multi_margin, multilabel_margin
  likelihood.py      poisson_nll, gaussian_nll, ctc
  _shared.py         the reductions, torch's argument handling, the elementwise base class
The cross-entropy δ's fast path (the common training call) lives in ``functional/fastpath/loss.py``.
"""
from . import classification, likelihood, margin, regression
from .classification import *  # noqa: F401,F403
from .likelihood import *  # noqa: F401,F403
from .margin import *  # noqa: F401,F403
from .regression import *  # noqa: F401,F403

# native callable -> δ twin with the same signature, every family's; read by torchbp.registry
ROUTES = {**regression.ROUTES, **classification.ROUTES, **margin.ROUTES, **likelihood.ROUTES}

__all__ = [*regression.__all__, *classification.__all__, *margin.__all__, *likelihood.__all__]
