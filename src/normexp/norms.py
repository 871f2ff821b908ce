"""make_norm: the only place that branches on the normalization kind (models ask it for a layer or none)."""

from torch import nn

from normexp import scratch
from normexp.errors import ConfigError
from normexp.variants import NORMS, PLACEMENTS


def check(cfg, widths: list[int], spatial: bool, batch_size: int) -> None:
    """Refuse a norm config that cannot work with these layer widths and batch size, before anything is built."""
    if cfg.kind not in NORMS:
        raise ConfigError(f"unknown norm '{cfg.kind}'; expected one of {', '.join(NORMS)}")
    if cfg.placement not in PLACEMENTS:
        raise ConfigError(
            f"unknown norm.placement '{cfg.placement}'; expected one of {', '.join(PLACEMENTS)}"
        )
    eps = cfg.get("eps", 1.0)  # norm=none has no eps
    if eps < 0:
        raise ConfigError(f"norm.eps={eps} must be >= 0; e.g. norm.eps=1e-5")
    if not 0 <= cfg.get("momentum", 0) <= 1:  # PyTorch's convention: the weight of the new batch's statistics
        raise ConfigError(f"norm.momentum={cfg.momentum} must be in [0, 1]; e.g. norm.momentum=0.1")
    if eps == 0 and cfg.kind == "bn":
        # torch.nn.functional.batch_norm raises "eps must be positive during training": a feature that is
        # constant over the batch has variance 0, and 0 / sqrt(0) is NaN. The hand-written BN shows it.
        raise ConfigError(f"norm.eps={eps} with norm=bn: torch's BatchNorm refuses eps=0 in training; use "
                          "norm=bn_scratch norm.eps=0 to see what it does, or norm.eps=1e-5")
    if cfg.kind == "in" and not spatial:
        raise ConfigError(
            "norm=in (InstanceNorm) needs spatial dims (H, W) and the model is an MLP; "
            "use model=cnn or model=cnn_modern, or norm=ln / norm=gn"
        )
    if cfg.kind == "ln_scratch" and spatial:
        raise ConfigError("norm=ln_scratch is written for (N, D) features; use it with model=mlp, or norm=ln")
    if cfg.kind in ("bn", "bn_scratch") and batch_size < 2:
        raise ConfigError(
            f"dataset.batch_size={batch_size} with norm={cfg.kind}: BatchNorm cannot train on a batch of one; "
            "use dataset.batch_size=2 or more"
        )
    if cfg.kind == "gn":
        bad = [w for w in widths if w % cfg.num_groups]
        if bad:
            divisors = sorted({g for g in range(1, min(widths) + 1) if all(w % g == 0 for w in widths)})
            raise ConfigError(
                f"norm.num_groups={cfg.num_groups} does not divide the layer width(s) {bad}; "
                f"choose one of {divisors}"
            )


def has_shift(cfg) -> bool:
    """Whether the norm adds a learned shift (beta), making the preceding layer's bias redundant."""
    return cfg.kind != "none" and cfg.get("affine", True)


def make_norm(cfg, num_features: int, spatial: bool) -> nn.Module | None:
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
