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


class LogSoftmax(torch.nn.LogSoftmax):
    def forward(self, input):
        return tbf.log_softmax(input, self.dim)


TWINS = {torch.nn.Sigmoid: Sigmoid, torch.nn.Tanh: Tanh, torch.nn.ReLU: ReLU, torch.nn.LeakyReLU: LeakyReLU,
         torch.nn.ELU: ELU, torch.nn.GELU: GELU, torch.nn.SiLU: SiLU, torch.nn.Softplus: Softplus,
         torch.nn.Hardtanh: Hardtanh, torch.nn.ReLU6: ReLU6, torch.nn.Softmax: Softmax,
         torch.nn.LogSoftmax: LogSoftmax}
__all__ = [c.__name__ for c in TWINS.values()]
