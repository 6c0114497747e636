"""Twins of torch.nn.MultiMarginLoss, MultiLabelMarginLoss and TripletMarginWithDistanceLoss."""
import torch

from ..functional import loss as F_ml


class MultiMarginLoss(torch.nn.MultiMarginLoss):
    def forward(self, input, target):
        return F_ml.multi_margin_loss(input, target, p=self.p, margin=self.margin, weight=self.weight,
                                      reduction=self.reduction)


class MultiLabelMarginLoss(torch.nn.MultiLabelMarginLoss):
    def forward(self, input, target):
        return F_ml.multilabel_margin_loss(input, target, reduction=self.reduction)


class TripletMarginWithDistanceLoss(torch.nn.TripletMarginWithDistanceLoss):
    def forward(self, anchor, positive, negative):
        return F_ml.triplet_margin_with_distance_loss(anchor, positive, negative,
                                                      distance_function=self.distance_function,
                                                      margin=self.margin, swap=self.swap, reduction=self.reduction)


# native module class -> twin; read by torchbp.registry
TWINS = {torch.nn.MultiMarginLoss: MultiMarginLoss, torch.nn.MultiLabelMarginLoss: MultiLabelMarginLoss,
         torch.nn.TripletMarginWithDistanceLoss: TripletMarginWithDistanceLoss}
__all__ = ["MultiMarginLoss", "MultiLabelMarginLoss", "TripletMarginWithDistanceLoss"]
