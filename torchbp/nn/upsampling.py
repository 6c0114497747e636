"""Twins of torch.nn's upsampling and pixel-shuffle layers."""
import torch

from .. import functional as tbf


def _upsample_forward(self, input):
    return tbf.interpolate(input, self.size, self.scale_factor, self.mode, self.align_corners,
                           recompute_scale_factor=self.recompute_scale_factor)


class Upsample(torch.nn.Upsample):
    forward = _upsample_forward


class UpsamplingNearest2d(torch.nn.UpsamplingNearest2d):
    forward = _upsample_forward


class UpsamplingBilinear2d(torch.nn.UpsamplingBilinear2d):
    forward = _upsample_forward


class PixelShuffle(torch.nn.PixelShuffle):
    def forward(self, input):
        return tbf.pixel_shuffle(input, self.upscale_factor)


class PixelUnshuffle(torch.nn.PixelUnshuffle):
    def forward(self, input):
        return tbf.pixel_unshuffle(input, self.downscale_factor)


# native module class -> twin; read by torchbp.registry
TWINS = {torch.nn.Upsample: Upsample, torch.nn.UpsamplingNearest2d: UpsamplingNearest2d,
         torch.nn.UpsamplingBilinear2d: UpsamplingBilinear2d, torch.nn.PixelShuffle: PixelShuffle,
         torch.nn.PixelUnshuffle: PixelUnshuffle}
__all__ = [twin.__name__ for twin in TWINS.values()]
