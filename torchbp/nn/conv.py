"""Twins of torch.nn's convolutions. A non-zero ``padding_mode`` pads first, as ``nn.Conv*d`` does, through
the δ pad (index_add backward) rather than native F.pad."""
import torch

from .. import functional as tbf
from ..functional import conv as _conv


class _ConvForward:
    """torch.nn.Conv*d.forward with the δ convolution."""

    def forward(self, input):
        conv = (tbf.conv1d, tbf.conv2d, tbf.conv3d)[len(self.kernel_size) - 1]
        if self.padding_mode != "zeros":
            input = _conv.pad(input, self._reversed_padding_repeated_twice, self.padding_mode)
            return conv(input, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
        return conv(input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class Conv1d(_ConvForward, torch.nn.Conv1d):
    pass


class Conv2d(_ConvForward, torch.nn.Conv2d):
    pass


class Conv3d(_ConvForward, torch.nn.Conv3d):
    pass


class _ConvTransposeForward:
    """torch.nn.ConvTranspose*d.forward, line for line, with the δ conv_transpose: ``output_size`` picks
    output_padding through the module's own ``_output_padding``; padding_mode other than "zeros" is
    refused by the constructor already."""

    def forward(self, input, output_size=None):
        if self.padding_mode != "zeros":
            raise ValueError(f"Only `zeros` padding mode is supported for {type(self).__name__}")
        n = len(self.kernel_size)
        output_padding = self._output_padding(input, output_size, self.stride, self.padding, self.kernel_size, n,
                                              self.dilation)
        return (tbf.conv_transpose1d, tbf.conv_transpose2d, tbf.conv_transpose3d)[n - 1](
            input, self.weight, self.bias, self.stride, self.padding, output_padding, self.groups, self.dilation)


class ConvTranspose1d(_ConvTransposeForward, torch.nn.ConvTranspose1d):
    pass


class ConvTranspose2d(_ConvTransposeForward, torch.nn.ConvTranspose2d):
    pass


class ConvTranspose3d(_ConvTransposeForward, torch.nn.ConvTranspose3d):
    pass


# The padding modules (ZeroPad2d, ReflectionPad1d, ...): each forward is F.pad with the class's mode
_PAD_MODES = {"Constant": "constant", "Zero": "constant", "Reflection": "reflect", "Replication": "replicate",
              "Circular": "circular"}


def _pad_forward(self, input):
    return _conv.pad(input, self.padding, self._tbp_mode, getattr(self, "value", None))


_PADS = {}
for _kind, _mode in _PAD_MODES.items():
    for _n in (1, 2, 3):
        _native = getattr(torch.nn, f"{_kind}Pad{_n}d", None)  # (CircularPad*, ZeroPad1d/3d: torch >= 2.1)
        if _native is not None:
            _PADS[_native] = type(_native.__name__, (_native,), {"forward": _pad_forward, "_tbp_mode": _mode,
                                                                 "__module__": __name__})
globals().update({twin.__name__: twin for twin in _PADS.values()})

# native module class -> twin; read by torchbp.registry
TWINS = {torch.nn.Conv1d: Conv1d, torch.nn.Conv2d: Conv2d, torch.nn.Conv3d: Conv3d,
         torch.nn.ConvTranspose1d: ConvTranspose1d, torch.nn.ConvTranspose2d: ConvTranspose2d,
         torch.nn.ConvTranspose3d: ConvTranspose3d, **_PADS}
__all__ = [twin.__name__ for twin in TWINS.values()]
