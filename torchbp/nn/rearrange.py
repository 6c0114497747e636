"""Twins of torch.nn.Unfold, Fold and ChannelShuffle."""
import torch

from ..functional import rearrange as F_fold


class Unfold(torch.nn.Unfold):
    def forward(self, input):
        return F_fold.unfold(input, self.kernel_size, self.dilation, self.padding, self.stride)


class Fold(torch.nn.Fold):
    def forward(self, input):
        return F_fold.fold(input, self.output_size, self.kernel_size, self.dilation, self.padding, self.stride)


class ChannelShuffle(torch.nn.ChannelShuffle):
    def forward(self, input):
        return F_fold.channel_shuffle(input, self.groups)


# native module class -> twin; read by torchbp.registry
TWINS = {torch.nn.Unfold: Unfold, torch.nn.Fold: Fold, torch.nn.ChannelShuffle: ChannelShuffle}
__all__ = ["Unfold", "Fold", "ChannelShuffle"]
