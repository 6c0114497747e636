"""Twins of torch.nn's pooling layers."""
import torch

from .. import functional as tbf


class MaxPool1d(torch.nn.MaxPool1d):
    def forward(self, input):
        return tbf.max_pool1d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                              ceil_mode=self.ceil_mode, return_indices=self.return_indices)


class MaxPool2d(torch.nn.MaxPool2d):
    def forward(self, input):
        return tbf.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                              ceil_mode=self.ceil_mode, return_indices=self.return_indices)


class AvgPool1d(torch.nn.AvgPool1d):
    def forward(self, input):
        return tbf.avg_pool1d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                              self.count_include_pad)


class AvgPool2d(torch.nn.AvgPool2d):
    def forward(self, input):
        return tbf.avg_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                              self.count_include_pad, self.divisor_override)


class AdaptiveAvgPool1d(torch.nn.AdaptiveAvgPool1d):
    def forward(self, input):
        return tbf.adaptive_avg_pool1d(input, self.output_size)


class AdaptiveAvgPool2d(torch.nn.AdaptiveAvgPool2d):
    def forward(self, input):
        return tbf.adaptive_avg_pool2d(input, self.output_size)


class AdaptiveMaxPool1d(torch.nn.AdaptiveMaxPool1d):
    def forward(self, input):
        return tbf.adaptive_max_pool1d(input, self.output_size, self.return_indices)


class AdaptiveMaxPool2d(torch.nn.AdaptiveMaxPool2d):
    def forward(self, input):
        return tbf.adaptive_max_pool2d(input, self.output_size, self.return_indices)


class MaxPool3d(torch.nn.MaxPool3d):
    def forward(self, input):
        return tbf.max_pool3d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                              ceil_mode=self.ceil_mode, return_indices=self.return_indices)


class AvgPool3d(torch.nn.AvgPool3d):
    def forward(self, input):
        return tbf.avg_pool3d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                              self.count_include_pad, self.divisor_override)


class AdaptiveAvgPool3d(torch.nn.AdaptiveAvgPool3d):
    def forward(self, input):
        return tbf.adaptive_avg_pool3d(input, self.output_size)


class AdaptiveMaxPool3d(torch.nn.AdaptiveMaxPool3d):
    def forward(self, input):
        return tbf.adaptive_max_pool3d(input, self.output_size, self.return_indices)


_TWINS_3D = {torch.nn.MaxPool3d: MaxPool3d, torch.nn.AvgPool3d: AvgPool3d,
             torch.nn.AdaptiveAvgPool3d: AdaptiveAvgPool3d, torch.nn.AdaptiveMaxPool3d: AdaptiveMaxPool3d}

# native module class -> twin; read by torchbp.registry
TWINS = {torch.nn.MaxPool1d: MaxPool1d, torch.nn.MaxPool2d: MaxPool2d, torch.nn.AvgPool1d: AvgPool1d,
         torch.nn.AvgPool2d: AvgPool2d, torch.nn.AdaptiveAvgPool1d: AdaptiveAvgPool1d,
         torch.nn.AdaptiveAvgPool2d: AdaptiveAvgPool2d, torch.nn.AdaptiveMaxPool1d: AdaptiveMaxPool1d,
         torch.nn.AdaptiveMaxPool2d: AdaptiveMaxPool2d, **_TWINS_3D}
__all__ = list(TWINS[k].__name__ for k in TWINS)
