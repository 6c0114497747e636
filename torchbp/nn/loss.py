"""Twins of torch.nn's loss modules, and the derivation's cost ``HalfSquaredError``."""
import warnings

import torch
from torch.nn.modules.loss import _Loss

from .. import functional as tbf


class HalfSquaredError(_Loss):
    """The derivation's cost J = ½‖y − h‖² per example (dim 0), mean over the batch by default.

    ``reduction``: "mean" (over the examples), "sum", or "none" (one J per example).
    torch has no such module; it subclasses ``_Loss`` so it looks and behaves like torch's losses.
    """

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__(reduction=reduction)

    def forward(self, input, target):
        return tbf.half_squared_error(input, target, reduction=self.reduction)


class MSELoss(torch.nn.MSELoss):
    def forward(self, input, target):
        return tbf.mse_loss(input, target, reduction=self.reduction)


class L1Loss(torch.nn.L1Loss):
    def forward(self, input, target):
        return tbf.l1_loss(input, target, reduction=self.reduction)


class SmoothL1Loss(torch.nn.SmoothL1Loss):
    def forward(self, input, target):
        return tbf.smooth_l1_loss(input, target, reduction=self.reduction, beta=self.beta)


class HuberLoss(torch.nn.HuberLoss):
    def forward(self, input, target):
        return tbf.huber_loss(input, target, reduction=self.reduction, delta=self.delta)


class KLDivLoss(torch.nn.KLDivLoss):
    def forward(self, input, target):
        return tbf.kl_div(input, target, reduction=self.reduction, log_target=self.log_target)


class CrossEntropyLoss(torch.nn.CrossEntropyLoss):
    def forward(self, input, target):
        return tbf.cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                                 reduction=self.reduction, label_smoothing=self.label_smoothing)


class NLLLoss(torch.nn.NLLLoss):
    def forward(self, input, target):
        return tbf.nll_loss(input, target, weight=self.weight, ignore_index=self.ignore_index,
                            reduction=self.reduction)


with warnings.catch_warnings():  # torch warns on subclassing its deprecated class; users are warned on using it
    warnings.simplefilter("ignore", FutureWarning)

    class NLLLoss2d(torch.nn.NLLLoss2d):  # torch's deprecated name for NLLLoss (any spatial dims)
        def forward(self, input, target):
            return tbf.nll_loss(input, target, weight=self.weight, ignore_index=self.ignore_index,
                                reduction=self.reduction)


class BCELoss(torch.nn.BCELoss):
    def forward(self, input, target):
        return tbf.binary_cross_entropy(input, target, weight=self.weight, reduction=self.reduction)


class BCEWithLogitsLoss(torch.nn.BCEWithLogitsLoss):
    def forward(self, input, target):
        return tbf.binary_cross_entropy_with_logits(input, target, self.weight, pos_weight=self.pos_weight,
                                                    reduction=self.reduction)


class SoftMarginLoss(torch.nn.SoftMarginLoss):
    def forward(self, input, target):
        return tbf.soft_margin_loss(input, target, reduction=self.reduction)


class MultiLabelSoftMarginLoss(torch.nn.MultiLabelSoftMarginLoss):
    def forward(self, input, target):
        return tbf.multilabel_soft_margin_loss(input, target, weight=self.weight, reduction=self.reduction)


class MarginRankingLoss(torch.nn.MarginRankingLoss):
    def forward(self, input1, input2, target):
        return tbf.margin_ranking_loss(input1, input2, target, margin=self.margin, reduction=self.reduction)


class HingeEmbeddingLoss(torch.nn.HingeEmbeddingLoss):
    def forward(self, input, target):
        return tbf.hinge_embedding_loss(input, target, margin=self.margin, reduction=self.reduction)


class CosineEmbeddingLoss(torch.nn.CosineEmbeddingLoss):
    def forward(self, input1, input2, target):
        return tbf.cosine_embedding_loss(input1, input2, target, margin=self.margin, reduction=self.reduction)


class PoissonNLLLoss(torch.nn.PoissonNLLLoss):
    def forward(self, log_input, target):
        return tbf.poisson_nll_loss(log_input, target, log_input=self.log_input, full=self.full, eps=self.eps,
                                    reduction=self.reduction)


class GaussianNLLLoss(torch.nn.GaussianNLLLoss):
    def forward(self, input, target, var):
        return tbf.gaussian_nll_loss(input, target, var, full=self.full, eps=self.eps, reduction=self.reduction)


class TripletMarginLoss(torch.nn.TripletMarginLoss):
    def forward(self, anchor, positive, negative):
        return tbf.triplet_margin_loss(anchor, positive, negative, margin=self.margin, p=self.p, eps=self.eps,
                                       swap=self.swap, reduction=self.reduction)


class MultiMarginLoss(torch.nn.MultiMarginLoss):
    def forward(self, input, target):
        return tbf.multi_margin_loss(input, target, p=self.p, margin=self.margin, weight=self.weight,
                                     reduction=self.reduction)


class MultiLabelMarginLoss(torch.nn.MultiLabelMarginLoss):
    def forward(self, input, target):
        return tbf.multilabel_margin_loss(input, target, reduction=self.reduction)


class TripletMarginWithDistanceLoss(torch.nn.TripletMarginWithDistanceLoss):
    def forward(self, anchor, positive, negative):
        return tbf.triplet_margin_with_distance_loss(anchor, positive, negative,
                                                     distance_function=self.distance_function,
                                                     margin=self.margin, swap=self.swap, reduction=self.reduction)


class CTCLoss(torch.nn.CTCLoss):
    def forward(self, log_probs, targets, input_lengths, target_lengths):
        return tbf.ctc_loss(log_probs, targets, input_lengths, target_lengths, self.blank, self.reduction,
                            self.zero_infinity)


# native module class -> twin; read by torchbp.registry
TWINS = {
    torch.nn.MSELoss: MSELoss, torch.nn.L1Loss: L1Loss, torch.nn.SmoothL1Loss: SmoothL1Loss,
    torch.nn.HuberLoss: HuberLoss, torch.nn.KLDivLoss: KLDivLoss, torch.nn.CrossEntropyLoss: CrossEntropyLoss,
    torch.nn.NLLLoss: NLLLoss,
    torch.nn.BCELoss: BCELoss, torch.nn.BCEWithLogitsLoss: BCEWithLogitsLoss,
    torch.nn.SoftMarginLoss: SoftMarginLoss, torch.nn.MultiLabelSoftMarginLoss: MultiLabelSoftMarginLoss,
    torch.nn.MarginRankingLoss: MarginRankingLoss, torch.nn.HingeEmbeddingLoss: HingeEmbeddingLoss,
    torch.nn.CosineEmbeddingLoss: CosineEmbeddingLoss, torch.nn.PoissonNLLLoss: PoissonNLLLoss,
    torch.nn.GaussianNLLLoss: GaussianNLLLoss, torch.nn.TripletMarginLoss: TripletMarginLoss,
    torch.nn.NLLLoss2d: NLLLoss2d,
    torch.nn.MultiMarginLoss: MultiMarginLoss, torch.nn.MultiLabelMarginLoss: MultiLabelMarginLoss,
    torch.nn.TripletMarginWithDistanceLoss: TripletMarginWithDistanceLoss, torch.nn.CTCLoss: CTCLoss,
}

__all__ = ["HalfSquaredError", "MSELoss", "L1Loss", "SmoothL1Loss", "HuberLoss", "KLDivLoss", "CrossEntropyLoss",
           "NLLLoss", "BCELoss", "BCEWithLogitsLoss", "SoftMarginLoss", "MultiLabelSoftMarginLoss", "MarginRankingLoss",
           "HingeEmbeddingLoss", "CosineEmbeddingLoss", "PoissonNLLLoss", "GaussianNLLLoss", "TripletMarginLoss",
           "MultiMarginLoss", "MultiLabelMarginLoss", "TripletMarginWithDistanceLoss", "CTCLoss"]
