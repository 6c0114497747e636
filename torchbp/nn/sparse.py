"""Twins of torch.nn.Embedding and torch.nn.EmbeddingBag."""
import torch

from .. import functional as tbf


class Embedding(torch.nn.Embedding):
    def forward(self, input):
        return tbf.embedding(input, self.weight, self.padding_idx, self.max_norm, self.norm_type,
                             self.scale_grad_by_freq, self.sparse)


class EmbeddingBag(torch.nn.EmbeddingBag):
    def forward(self, input, offsets=None, per_sample_weights=None):
        return tbf.embedding_bag(input, self.weight, offsets, self.max_norm, self.norm_type,
                                 self.scale_grad_by_freq, self.mode, self.sparse, per_sample_weights,
                                 self.include_last_offset, self.padding_idx)


TWINS = {torch.nn.Embedding: Embedding, torch.nn.EmbeddingBag: EmbeddingBag}
__all__ = ["Embedding", "EmbeddingBag"]
