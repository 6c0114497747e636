"""The δ formulas: one ``torch.autograd.Function`` per op, grouped by family as in ``torch.nn``.

Each family module exports functional forms with ``torch.nn.functional``'s signatures and a ``ROUTES``
table (native callable -> δ twin) that :mod:`torchbp.registry` reads.
"""
from . import (activation, attention, conv, dropout, flatten, linear, loss, normalization, pooling,
               sparse, stack, upsampling, rnn, pointwise, reduction, indexing, distance, rearrange, stochastic,
               pooling_extra, sync_batchnorm, local_norm, sampling)
from ._common import DeltaFunction  # noqa: F401 (public: the base class of every δ Function)

# Bound before the star imports below, which rebind names such as `linear` to the functions.
FAMILIES = (linear, activation, loss, conv, pooling, normalization, sparse, dropout,
            flatten, attention, stack, upsampling, rnn, pointwise, reduction, indexing, distance, rearrange, stochastic,
            pooling_extra, sync_batchnorm, local_norm, sampling)

from .activation import *  # noqa: F401,F403
from .attention import *  # noqa: F401,F403
from .conv import *  # noqa: F401,F403
from .dropout import *  # noqa: F401,F403
from .flatten import *  # noqa: F401,F403
from .linear import *  # noqa: F401,F403
from .loss import *  # noqa: F401,F403
from .normalization import *  # noqa: F401,F403
from .pooling import *  # noqa: F401,F403
from .sparse import *  # noqa: F401,F403
from .stack import *  # noqa: F401,F403
from .upsampling import *  # noqa: F401,F403
from .rnn import *  # noqa: F401,F403
from .pointwise import *  # noqa: F401,F403
from .reduction import *  # noqa: F401,F403
from .indexing import *  # noqa: F401,F403
from .distance import *  # noqa: F401,F403
from .rearrange import *  # noqa: F401,F403
from .stochastic import *  # noqa: F401,F403
from .pooling_extra import *  # noqa: F401,F403
from .sync_batchnorm import *  # noqa: F401,F403
from .local_norm import *  # noqa: F401,F403
from .sampling import *  # noqa: F401,F403
