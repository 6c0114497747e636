"""Drop-in twins of torch.nn modules: subclasses that only override ``forward`` to call the δ
Functions, so constructor arguments, parameters, state_dict and ``isinstance`` all stay native.

Each family module exports a ``TWINS`` table (native class -> twin) that :mod:`torchbp.registry` reads.
"""
from . import (activation, attention, container, conv, dropout, flatten, linear, loss, normalization,
               pooling, sparse, upsampling, lazy, rnn, distance, transformer, rearrange, stochastic,
               pooling_extra, sync_batchnorm, local_norm)
# Bound before the star imports below, which rebind names such as `linear` to the functions.
FAMILIES = (linear, activation, loss, conv, pooling, normalization, sparse, dropout,
            flatten, attention, container, upsampling, lazy, rnn, distance, transformer, rearrange, stochastic,
            pooling_extra, sync_batchnorm, local_norm)

from .activation import *  # noqa: F401,F403
from .attention import *  # noqa: F401,F403
from .container import *  # noqa: F401,F403
from .conv import *  # noqa: F401,F403
from .dropout import *  # noqa: F401,F403
from .flatten import *  # noqa: F401,F403
from .linear import *  # noqa: F401,F403
from .loss import *  # noqa: F401,F403
from .normalization import *  # noqa: F401,F403
from .pooling import *  # noqa: F401,F403
from .sparse import *  # noqa: F401,F403
from .upsampling import *  # noqa: F401,F403
from .lazy import *  # noqa: F401,F403
from .rnn import *  # noqa: F401,F403
from .distance import *  # noqa: F401,F403
from .transformer import *  # noqa: F401,F403
from .rearrange import *  # noqa: F401,F403
from .stochastic import *  # noqa: F401,F403
from .pooling_extra import *  # noqa: F401,F403
from .sync_batchnorm import *  # noqa: F401,F403
from .local_norm import *  # noqa: F401,F403


def _get_name(self) -> str:
    """The class name ``print(model)`` shows: a twin reads ``Linear[δ](...)``, so a swapped model does not
    look native (its class name, state_dict keys and isinstance are unchanged)."""
    return type(self).__name__ + "[δ]"


for _family in FAMILIES:
    for _twin in _family.TWINS.values():
        if "_get_name" not in vars(_twin):
            _twin._get_name = _get_name
