"""Twins of torch.nn's normalization layers: same constructor, parameters, buffers and state_dict;
forward routed through the δ Functions."""
import warnings

import torch

from .. import functional as tbf


class _BatchNormForward:
    """torch.nn.modules.batchnorm._BatchNorm.forward, line for line, with the δ batch_norm: the same
    momentum / cumulative-average factor, num_batches_tracked count and choice of statistics."""

    def forward(self, input):
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        use_buffers = not self.training or self.track_running_stats
        return tbf.batch_norm(input, self.running_mean if use_buffers else None,
                              self.running_var if use_buffers else None, self.weight, self.bias,
                              bn_training, factor, self.eps)


class BatchNorm1d(_BatchNormForward, torch.nn.BatchNorm1d):
    pass


class BatchNorm2d(_BatchNormForward, torch.nn.BatchNorm2d):
    pass


class BatchNorm3d(_BatchNormForward, torch.nn.BatchNorm3d):
    pass


class _InstanceNormForward:
    """torch.nn.modules.instancenorm._InstanceNorm.forward, line for line, with the δ instance_norm: the same
    checks, unbatched inputs, and choice of statistics (the running ones in eval with track_running_stats)."""

    def forward(self, input):
        self._check_input_dim(input)
        feature_dim = input.dim() - self._get_no_batch_dim()
        if input.size(feature_dim) != self.num_features:
            if self.affine:
                raise ValueError(f"expected input's size at dim={feature_dim} to match num_features"
                                 f" ({self.num_features}), but got: {input.size(feature_dim)}.")
            warnings.warn(f"input's size at dim={feature_dim} does not match num_features. You can silence this "
                          "warning by not passing in num_features, which is not used because affine=False",
                          stacklevel=2)
        batched = input.dim() != self._get_no_batch_dim()
        out = tbf.instance_norm(input if batched else input.unsqueeze(0), self.running_mean, self.running_var,
                                self.weight, self.bias, self.training or not self.track_running_stats,
                                self.momentum if self.momentum is not None else 0.0, self.eps)
        return out if batched else out.squeeze(0)


class InstanceNorm1d(_InstanceNormForward, torch.nn.InstanceNorm1d):
    pass


class InstanceNorm2d(_InstanceNormForward, torch.nn.InstanceNorm2d):
    pass


class InstanceNorm3d(_InstanceNormForward, torch.nn.InstanceNorm3d):
    pass


class LayerNorm(torch.nn.LayerNorm):
    def forward(self, input):
        return tbf.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)


class GroupNorm(torch.nn.GroupNorm):
    def forward(self, input):
        return tbf.group_norm(input, self.num_groups, self.weight, self.bias, self.eps)


TWINS = {torch.nn.BatchNorm1d: BatchNorm1d, torch.nn.BatchNorm2d: BatchNorm2d,
         torch.nn.BatchNorm3d: BatchNorm3d, torch.nn.InstanceNorm1d: InstanceNorm1d,
         torch.nn.InstanceNorm2d: InstanceNorm2d, torch.nn.InstanceNorm3d: InstanceNorm3d,
         torch.nn.LayerNorm: LayerNorm, torch.nn.GroupNorm: GroupNorm}

if hasattr(torch.nn, "RMSNorm"):  # torch >= 2.4
    class RMSNorm(torch.nn.RMSNorm):
        def forward(self, x):
            return tbf.rms_norm(x, self.normalized_shape, self.weight, self.eps)

    TWINS[torch.nn.RMSNorm] = RMSNorm

__all__ = [c.__name__ for c in TWINS.values()]
