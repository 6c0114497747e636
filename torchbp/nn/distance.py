"""Twins of torch.nn.CosineSimilarity and PairwiseDistance."""
import torch

from ..functional import distance as F_dist


class CosineSimilarity(torch.nn.CosineSimilarity):
    def forward(self, x1, x2):
        return F_dist.cosine_similarity(x1, x2, self.dim, self.eps)


class PairwiseDistance(torch.nn.PairwiseDistance):
    def forward(self, x1, x2):
        return F_dist.pairwise_distance(x1, x2, self.norm, self.eps, self.keepdim)


# native module class -> twin; read by torchbp.registry
TWINS = {torch.nn.CosineSimilarity: CosineSimilarity, torch.nn.PairwiseDistance: PairwiseDistance}
__all__ = ["CosineSimilarity", "PairwiseDistance"]
