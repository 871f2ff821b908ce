"""The domains that depend on other values of the config: each value is in its own domain already
(normexp.config.domains); here, whether the values fit together. Checked right after the domains
(normexp.config.schema.check), before data, model or store exist. Like the schemas, no code of the models:
they ask here what the config means (`hidden_widths`)."""

from normexp.errors import ConfigError


def check(cfg) -> None:
    _tracking(cfg.tracking)
    _dataset(cfg.dataset, cfg.model)
    if cfg.model.arch == "mlp":
        _mlp(cfg.model)
    if cfg.model.arch == "seq" and cfg.model.width % cfg.model.heads:
        divisors = [h for h in range(1, min(cfg.model.width, 16) + 1) if cfg.model.width % h == 0]
        raise ConfigError(f"model.heads={cfg.model.heads} does not divide model.width={cfg.model.width}; "
                          f"choose one of {divisors}")
    _norm(cfg.norm, cfg.model, cfg.dataset.batch_size)
    if cfg.optim.get("nesterov") and not cfg.optim.momentum > 0:  # torch.optim.SGD refuses it, mid-run
        raise ConfigError(f"optim.nesterov=true with optim.momentum={cfg.optim.momentum}: Nesterov momentum needs a "
                          "momentum; e.g. optim.momentum=0.9, or optim.nesterov=false")
    if "search" in cfg and not cfg.search.lr_min < cfg.search.lr_max:
        raise ConfigError(f"search.lr_min={cfg.search.lr_min:g}, search.lr_max={cfg.search.lr_max:g}: need "
                          "0 < lr_min < lr_max; e.g. search.lr_min=1e-4 search.lr_max=10")


def _tracking(cfg) -> None:
    if not cfg.heartbeat_s < cfg.lease_s:
        raise ConfigError(f"tracking.heartbeat_s={cfg.heartbeat_s:g}, tracking.lease_s={cfg.lease_s:g}: need 0 < "
                          "heartbeat_s < lease_s (a lease outlives missed renewals); e.g. tracking.heartbeat_s=10 "
                          "tracking.lease_s=60")


def _dataset(cfg, model_cfg) -> None:
    if len(cfg.mean) != len(cfg.std):
        raise ConfigError(f"dataset.mean={list(cfg.mean)} and dataset.std={list(cfg.std)}: one of each per channel; "
                          "give both the same length")
    if cfg.variable_length and model_cfg.arch != "seq":
        raise ConfigError(f"dataset.variable_length=true with model={model_cfg.name}: only model=seq masks the "
                          "padded rows; use model=seq or dataset.variable_length=false")


def _mlp(cfg) -> None:
    """model.widths, or model.depth with model.width (widths = [width] * depth), not both unless equal."""
    depth, width, widths = cfg.depth, cfg.width, cfg.widths
    if depth is None and width is None:
        if widths is None:
            raise ConfigError("model.widths=null and no model.depth / model.width; give either, "
                              "e.g. model.depth=8 model.width=128")
        if not widths:
            raise ConfigError("model.widths=[] must name at least one layer; e.g. model.widths=[256,128]")
        return
    if depth is None or width is None:
        raise ConfigError(f"model.depth={depth} with model.width={width}: give both, each >= 1; "
                          "e.g. model.depth=8 model.width=128")
    if widths is not None and list(widths) != [width] * depth:
        raise ConfigError(f"model.widths={list(widths)} disagrees with model.depth={depth} x model.width={width}; "
                          "add model.widths=null to use depth and width")


def mlp_widths(model_cfg) -> list[int]:
    """model.widths, or [model.width] * model.depth when depth and width are given (`_mlp` refuses any
    other combination)."""
    if model_cfg.depth is not None:
        return [model_cfg.width] * model_cfg.depth
    return list(model_cfg.widths)


def hidden_widths(model_cfg) -> list[int]:
    """The width of every normalized layer: what GroupNorm's num_groups must divide."""
    if model_cfg.arch == "mlp":
        return mlp_widths(model_cfg)
    if model_cfg.arch == "seq":
        return [model_cfg.width] * model_cfg.depth
    if model_cfg.arch == "cnn":
        return list(model_cfg.channels)
    return list(model_cfg.channels) + [model_cfg.head_channels]  # cnn_modern


def _norm(cfg, model_cfg, batch_size: int) -> None:
    """A norm that cannot work with the model's layer widths, its kind of features, or the batch size."""
    spatial = model_cfg.arch in ("cnn", "cnn_modern")
    if cfg.get("eps") == 0 and cfg.kind == "bn":
        # torch.nn.functional.batch_norm raises "eps must be positive during training": a feature that is
        # constant over the batch has variance 0, and 0 / sqrt(0) is NaN. The hand-written BN shows it.
        raise ConfigError(f"norm.eps={cfg.eps} with norm=bn: torch's BatchNorm refuses eps=0 in training; use "
                          "norm=bn_scratch norm.eps=0 to see what it does, or norm.eps=1e-5")
    if cfg.kind == "in" and not spatial:
        raise ConfigError("norm=in (InstanceNorm) needs spatial dims (H, W) and the model is an MLP; "
                          "use model=cnn or model=cnn_modern, or norm=ln / norm=gn")
    if cfg.kind == "ln_scratch" and spatial:
        raise ConfigError("norm=ln_scratch is written for (N, D) features; use it with model=mlp, or norm=ln")
    if cfg.kind in ("bn", "bn_scratch") and batch_size < 2:
        raise ConfigError(f"dataset.batch_size={batch_size} with norm={cfg.kind}: BatchNorm cannot train on a batch "
                          "of one; use dataset.batch_size=2 or more")
    if cfg.kind == "gn":
        widths = hidden_widths(model_cfg)
        bad = [w for w in widths if w % cfg.num_groups]
        if bad:
            divisors = sorted({g for g in range(1, min(widths) + 1) if all(w % g == 0 for w in widths)})
            raise ConfigError(f"norm.num_groups={cfg.num_groups} does not divide the layer width(s) {bad}; "
                              f"choose one of {divisors}")
