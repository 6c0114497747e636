"""Twin of torch.nn.CTCLoss."""
import torch

from ..functional import loss as F_ctc


class CTCLoss(torch.nn.CTCLoss):
    def forward(self, log_probs, targets, input_lengths, target_lengths):
        return F_ctc.ctc_loss(log_probs, targets, input_lengths, target_lengths, self.blank, self.reduction,
                              self.zero_infinity)


# native module class -> twin; read by torchbp.registry
TWINS = {torch.nn.CTCLoss: CTCLoss}
__all__ = ["CTCLoss"]
