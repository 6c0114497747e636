"""Twins of torch.nn.Flatten, Unflatten and Identity."""
import torch

from .. import functional as tbf


class Flatten(torch.nn.Flatten):
    def forward(self, input):
        return tbf.flatten(input, self.start_dim, self.end_dim)


class Unflatten(torch.nn.Unflatten):
    def forward(self, input):
        return tbf.unflatten(input, self.dim, self.unflattened_size)


class Identity(torch.nn.Identity):
    def forward(self, input):
        # δ_a = δ: nothing to compute. The input itself is returned, as native does, so in-place ops
        # after it (timm's Identity-then-ReLU(inplace=True)) keep working; a custom Function's
        # returned-as-is input would be a view that autograd forbids modifying in place.
        return input


TWINS = {torch.nn.Flatten: Flatten, torch.nn.Unflatten: Unflatten, torch.nn.Identity: Identity}
__all__ = ["Flatten", "Unflatten", "Identity"]
