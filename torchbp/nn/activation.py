"""Twins of torch.nn's activation modules."""
import torch

from .. import functional as tbf


class Sigmoid(torch.nn.Sigmoid):
    def forward(self, input):
        return tbf.sigmoid(input)


class Tanh(torch.nn.Tanh):
    def forward(self, input):
        return tbf.tanh(input)


class ReLU(torch.nn.ReLU):
    def forward(self, input):
        return tbf.relu(input, self.inplace)


class LeakyReLU(torch.nn.LeakyReLU):
    def forward(self, input):
        return tbf.leaky_relu(input, self.negative_slope, self.inplace)


class ELU(torch.nn.ELU):
    def forward(self, input):
        return tbf.elu(input, self.alpha, self.inplace)


class GELU(torch.nn.GELU):
    def forward(self, input):
        return tbf.gelu(input, approximate=self.approximate)


class SiLU(torch.nn.SiLU):
    def forward(self, input):
        return tbf.silu(input, inplace=self.inplace)


class Softplus(torch.nn.Softplus):
    def forward(self, input):
        return tbf.softplus(input, self.beta, self.threshold)


class Hardtanh(torch.nn.Hardtanh):
    def forward(self, input):
        return tbf.hardtanh(input, self.min_val, self.max_val, self.inplace)


class ReLU6(torch.nn.ReLU6):
    def forward(self, input):
        return tbf.hardtanh(input, self.min_val, self.max_val, self.inplace)


class Softmax(torch.nn.Softmax):
    def forward(self, input):
        return tbf.softmax(input, self.dim)


class Softmax2d(torch.nn.Softmax2d):
    def forward(self, input):
        if input.dim() not in (3, 4):  # native's check and message
            raise ValueError(f"Softmax2d: expected input to be 3D or 4D, got {input.dim()}D instead")
        return tbf.softmax(input, -3)


class LogSoftmax(torch.nn.LogSoftmax):
    def forward(self, input):
        return tbf.log_softmax(input, self.dim)


class Hardswish(torch.nn.Hardswish):
    def forward(self, input):
        return tbf.hardswish(input, self.inplace)


class Hardsigmoid(torch.nn.Hardsigmoid):
    def forward(self, input):
        return tbf.hardsigmoid(input, self.inplace)


class Mish(torch.nn.Mish):
    def forward(self, input):
        return tbf.mish(input, self.inplace)


class SELU(torch.nn.SELU):
    def forward(self, input):
        return tbf.selu(input, self.inplace)


class CELU(torch.nn.CELU):
    def forward(self, input):
        return tbf.celu(input, self.alpha, self.inplace)


class LogSigmoid(torch.nn.LogSigmoid):
    def forward(self, input):
        return tbf.logsigmoid(input)


class Softsign(torch.nn.Softsign):
    def forward(self, input):
        return tbf.softsign(input)


class Tanhshrink(torch.nn.Tanhshrink):
    def forward(self, input):
        return tbf.tanhshrink(input)


class Threshold(torch.nn.Threshold):
    def forward(self, input):
        return tbf.threshold(input, self.threshold, self.value, self.inplace)


class Hardshrink(torch.nn.Hardshrink):
    def forward(self, input):
        return tbf.hardshrink(input, self.lambd)


class Softshrink(torch.nn.Softshrink):
    def forward(self, input):
        return tbf.softshrink(input, self.lambd)


class GLU(torch.nn.GLU):
    def forward(self, input):
        return tbf.glu(input, self.dim)


class PReLU(torch.nn.PReLU):
    def forward(self, input):
        return tbf.prelu(input, self.weight)


class Softmin(torch.nn.Softmin):
    def forward(self, input):
        return tbf.softmin(input, self.dim)


TWINS = {torch.nn.Sigmoid: Sigmoid, torch.nn.Tanh: Tanh, torch.nn.ReLU: ReLU, torch.nn.LeakyReLU: LeakyReLU,
         torch.nn.ELU: ELU, torch.nn.GELU: GELU, torch.nn.SiLU: SiLU, torch.nn.Softplus: Softplus,
         torch.nn.Hardtanh: Hardtanh, torch.nn.ReLU6: ReLU6, torch.nn.Softmax: Softmax, torch.nn.Softmax2d: Softmax2d,
         torch.nn.LogSoftmax: LogSoftmax, torch.nn.Hardswish: Hardswish, torch.nn.Hardsigmoid: Hardsigmoid,
         torch.nn.Mish: Mish, torch.nn.SELU: SELU, torch.nn.CELU: CELU, torch.nn.LogSigmoid: LogSigmoid,
         torch.nn.Softsign: Softsign, torch.nn.Tanhshrink: Tanhshrink, torch.nn.Threshold: Threshold,
         torch.nn.Hardshrink: Hardshrink, torch.nn.Softshrink: Softshrink, torch.nn.GLU: GLU,
         torch.nn.PReLU: PReLU, torch.nn.Softmin: Softmin}
__all__ = [c.__name__ for c in TWINS.values()]
