"""make_norm: the only place that branches on the normalization kind (models ask it for a layer or none)."""

import torch
from torch import nn

from normexp.config.schema import NORMS
from normexp.errors import ConfigError
from normexp.models import scratch
from normexp.config.schema import NormConfig


def has_running_stats(module: nn.Module) -> bool:
    """Whether `module` keeps running statistics (BatchNorm; InstanceNorm2d has running_mean = None unless
    built with track_running_stats=True, which make_norm never does)."""
    return all(isinstance(getattr(module, name, None), torch.Tensor) for name in ("running_mean", "running_var"))


def has_shift(cfg: NormConfig) -> bool:
    """Whether the norm adds a learned shift (beta), making the preceding layer's bias redundant."""
    return cfg.kind != "none" and cfg.get("affine", True)


def make_norm(cfg: NormConfig, num_features: int, spatial: bool) -> nn.Module | None:
    """A norm layer for `num_features` features (N, F) or channels (N, C, H, W) when `spatial`;
    None for norm=none (the block then has no norm at all, not an identity that probes would see)."""
    kind = cfg.kind
    if kind == "none":
        return None
    if kind == "bn":
        batch_norm = nn.BatchNorm2d if spatial else nn.BatchNorm1d
        return batch_norm(num_features, eps=cfg.eps, momentum=cfg.momentum, affine=cfg.affine)
    if kind == "bn_scratch":
        return scratch.BatchNorm(num_features, eps=cfg.eps, momentum=cfg.momentum)
    if kind == "ln":
        # For conv features LayerNorm normalizes over (C, H, W) with per-channel gamma/beta:
        # that is GroupNorm with a single group.
        if spatial:
            return nn.GroupNorm(1, num_features, eps=cfg.eps, affine=cfg.affine)
        return nn.LayerNorm(num_features, eps=cfg.eps, elementwise_affine=cfg.affine)
    if kind == "ln_scratch":
        return scratch.LayerNorm(num_features, eps=cfg.eps)
    if kind == "gn":
        return nn.GroupNorm(cfg.num_groups, num_features, eps=cfg.eps, affine=cfg.affine)
    if kind == "in":
        return nn.InstanceNorm2d(num_features, eps=cfg.eps, affine=cfg.affine)
    raise ConfigError(f"unknown norm '{kind}'; expected one of {', '.join(NORMS)}")
