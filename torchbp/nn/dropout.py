"""Twin of torch.nn.Dropout (the same mask as native for the same RNG state)."""
import torch

from .. import functional as tbf


class Dropout(torch.nn.Dropout):
    def forward(self, input):
        return tbf.dropout(input, self.p, self.training, self.inplace)


TWINS = {torch.nn.Dropout: Dropout}
__all__ = ["Dropout"]
