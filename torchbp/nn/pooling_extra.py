"""Twins of torch.nn.LPPool1d/2d/3d, MaxUnpool1d/2d/3d and FractionalMaxPool2d/3d."""
import torch

from ..functional import pooling_extra as F_pe


def _lp(n):
    native = getattr(torch.nn, f"LPPool{n}d")
    fn = getattr(F_pe, f"lp_pool{n}d")

    class LPPool(native):
        def forward(self, input):
            return fn(input, float(self.norm_type), self.kernel_size, self.stride, self.ceil_mode)
    LPPool.__name__ = LPPool.__qualname__ = f"LPPool{n}d"
    return LPPool


def _unpool(n):
    native = getattr(torch.nn, f"MaxUnpool{n}d")
    fn = getattr(F_pe, f"max_unpool{n}d")

    class MaxUnpool(native):
        def forward(self, input, indices, output_size=None):
            return fn(input, indices, self.kernel_size, self.stride, self.padding, output_size)
    MaxUnpool.__name__ = MaxUnpool.__qualname__ = f"MaxUnpool{n}d"
    return MaxUnpool


LPPool1d, LPPool2d, LPPool3d = _lp(1), _lp(2), _lp(3)
MaxUnpool1d, MaxUnpool2d, MaxUnpool3d = _unpool(1), _unpool(2), _unpool(3)


class FractionalMaxPool2d(torch.nn.FractionalMaxPool2d):
    def forward(self, input):
        return F_pe.fractional_max_pool2d(input, self.kernel_size, self.output_size, self.output_ratio,
                                          self.return_indices, _random_samples=self._random_samples)


class FractionalMaxPool3d(torch.nn.FractionalMaxPool3d):
    def forward(self, input):
        return F_pe.fractional_max_pool3d(input, self.kernel_size, self.output_size, self.output_ratio,
                                          self.return_indices, _random_samples=self._random_samples)


# native module class -> twin; read by torchbp.registry
TWINS = {torch.nn.LPPool1d: LPPool1d, torch.nn.LPPool2d: LPPool2d, torch.nn.LPPool3d: LPPool3d,
         torch.nn.MaxUnpool1d: MaxUnpool1d, torch.nn.MaxUnpool2d: MaxUnpool2d, torch.nn.MaxUnpool3d: MaxUnpool3d,
         torch.nn.FractionalMaxPool2d: FractionalMaxPool2d, torch.nn.FractionalMaxPool3d: FractionalMaxPool3d}
__all__ = [t.__name__ for t in TWINS.values()]
