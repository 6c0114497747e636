"""Twins of torch.nn.Dropout and Dropout1d/2d/3d (the same mask as native for the same RNG state)."""
import torch

from .. import functional as tbf


class Dropout(torch.nn.Dropout):
    def forward(self, input):
        return tbf.dropout(input, self.p, self.training, self.inplace)


class Dropout1d(torch.nn.Dropout1d):
    def forward(self, input):
        return tbf.dropout1d(input, self.p, self.training, self.inplace)


class Dropout2d(torch.nn.Dropout2d):
    def forward(self, input):
        return tbf.dropout2d(input, self.p, self.training, self.inplace)


class Dropout3d(torch.nn.Dropout3d):
    def forward(self, input):
        return tbf.dropout3d(input, self.p, self.training, self.inplace)


TWINS = {torch.nn.Dropout: Dropout, torch.nn.Dropout1d: Dropout1d, torch.nn.Dropout2d: Dropout2d,
         torch.nn.Dropout3d: Dropout3d}
__all__ = ["Dropout", "Dropout1d", "Dropout2d", "Dropout3d"]
