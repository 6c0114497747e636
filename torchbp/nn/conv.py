"""Twins of torch.nn's convolutions. A non-zero ``padding_mode`` pads first, as ``nn.Conv*d`` does, through
the δ pad (index_add backward) rather than native F.pad."""
import torch

from .. import functional as tbf
from ..functional import conv as _conv


class Conv1d(torch.nn.Conv1d):
    def forward(self, input):
        if self.padding_mode != "zeros":
            input = _conv.pad(input, self._reversed_padding_repeated_twice, self.padding_mode)
            return tbf.conv1d(input, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
        return tbf.conv1d(input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class Conv2d(torch.nn.Conv2d):
    def forward(self, input):
        if self.padding_mode != "zeros":
            input = _conv.pad(input, self._reversed_padding_repeated_twice, self.padding_mode)
            return tbf.conv2d(input, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
        return tbf.conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


# native module class -> twin; read by torchbp.registry
TWINS = {torch.nn.Conv1d: Conv1d, torch.nn.Conv2d: Conv2d}
__all__ = ["Conv1d", "Conv2d"]
