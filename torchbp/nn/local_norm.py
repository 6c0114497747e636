"""Twin of torch.nn.LocalResponseNorm."""
import torch

from ..functional import local_norm as F_ln


class LocalResponseNorm(torch.nn.LocalResponseNorm):
    def forward(self, input):
        return F_ln.local_response_norm(input, self.size, self.alpha, self.beta, self.k)


# native module class -> twin; read by torchbp.registry
TWINS = {torch.nn.LocalResponseNorm: LocalResponseNorm}
__all__ = ["LocalResponseNorm"]
