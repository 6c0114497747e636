"""Twin of torch.nn.SyncBatchNorm: native's forward line for line, with the δ batch_norm on one process and
the δ sync_batch_norm where the batch spans the processes of a group (on any device the group's backend
serves: native's own sync path runs on GPUs only)."""
import torch

from .. import functional as tbf
from ..functional.sync_batchnorm import sync_batch_norm


class SyncBatchNorm(torch.nn.SyncBatchNorm):
    def forward(self, input):
        self._check_input_dim(input)
        self._check_non_zero_input_channels(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / self.num_batches_tracked.item() if self.momentum is None else self.momentum
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        use_buffers = not self.training or self.track_running_stats
        running_mean = self.running_mean if use_buffers else None
        running_var = self.running_var if use_buffers else None
        dist = torch.distributed
        need_sync = bn_training and self.training and dist.is_available() and dist.is_initialized()
        if need_sync:
            group = self.process_group or dist.group.WORLD
            need_sync = dist.get_world_size(group) > 1
        if not need_sync:
            return tbf.batch_norm(input, running_mean, running_var, self.weight, self.bias, bn_training, factor,
                                  self.eps)
        return sync_batch_norm(input, self.weight, self.bias, running_mean, running_var, self.eps, factor, group)


# native module class -> twin; read by torchbp.registry
TWINS = {torch.nn.SyncBatchNorm: SyncBatchNorm}
__all__ = ["SyncBatchNorm"]
