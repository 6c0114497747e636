"""Twins of torch.nn.AlphaDropout, FeatureAlphaDropout and RReLU (the same draws as native)."""
import torch

from ..functional import stochastic as F_st


class AlphaDropout(torch.nn.AlphaDropout):
    def forward(self, input):
        return F_st.alpha_dropout(input, self.p, self.training)


class FeatureAlphaDropout(torch.nn.FeatureAlphaDropout):
    def forward(self, input):
        return F_st.feature_alpha_dropout(input, self.p, self.training)


class RReLU(torch.nn.RReLU):
    def forward(self, input):
        return F_st.rrelu(input, self.lower, self.upper, self.training, self.inplace)


# native module class -> twin; read by torchbp.registry
TWINS = {torch.nn.AlphaDropout: AlphaDropout, torch.nn.FeatureAlphaDropout: FeatureAlphaDropout,
         torch.nn.RReLU: RReLU}
__all__ = ["AlphaDropout", "FeatureAlphaDropout", "RReLU"]
