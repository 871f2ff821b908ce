"""MLPs and CNNs built from widths and a norm config (and the sequence model of normexp.models.sequence).

Every hidden layer is a named block `nn.Sequential(layer, norm, act[, ...])` (placement=pre) or
`(layer, act, norm[, ...])` (placement=post), so probes find each block's `layer`, `norm` and `act`
by name: `hidden1.norm`, `conv2a.act`, ...
"""

from collections import OrderedDict

import torch
from torch import nn

from normexp.config import relations
from normexp.errors import ConfigError
from normexp.models import norms, sequence
from normexp.config.schema import ModelConfig, NormConfig

NORMAL_INIT_STD = 0.01  # init=normal: the classic "small random weights" N(0, 0.01^2), before Glorot and He


def build(model_cfg: ModelConfig, norm_cfg: NormConfig, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """The model for inputs of `input_shape` (C, H, W), from a config that normexp.config.schema.check accepted."""
    channels, height, width = input_shape
    if model_cfg.arch == "mlp":
        model = _mlp(model_cfg, norm_cfg, channels * height * width, num_classes)
    elif model_cfg.arch == "cnn":
        model = _cnn(model_cfg, norm_cfg, input_shape, num_classes)
    elif model_cfg.arch == "cnn_modern":
        model = _cnn_modern(model_cfg, norm_cfg, channels, num_classes)
    else:
        model = sequence.SequenceClassifier(model_cfg, norm_cfg, input_shape, num_classes)
    initialize(model, model_cfg.init, model_cfg.init_scale)
    return model


@torch.no_grad()
def initialize(model: nn.Module, init: str, scale: float) -> None:
    """Re-initialize every weight matrix / kernel (parameters named *weight with 2+ dims: Linear, Conv,
    attention) with `init`, then multiply it by `scale`. Norm gammas and betas, biases and the sequence
    model's positions keep their initialization: init_scale asks what the scale of the weights does."""
    for name, weight in model.named_parameters():
        if not (name.endswith("weight") and weight.ndim > 1):
            continue
        if init == "kaiming":
            nn.init.kaiming_normal_(weight, nonlinearity="relu")  # fan-in, gain sqrt(2)
        elif init == "xavier":
            nn.init.xavier_uniform_(weight)
        elif init == "normal":
            nn.init.normal_(weight, std=NORMAL_INIT_STD)
        weight.mul_(scale)


def _hidden_block(layer_class, fan_in: int, width: int, norm_cfg: NormConfig, spatial: bool, extra=()) -> nn.Sequential:
    """layer -> norm -> act (pre) or layer -> act -> norm (post), then `extra` (pool, dropout)."""
    shifted = norms.has_shift(norm_cfg) and norm_cfg.placement == "pre"
    kwargs = {"kernel_size": 3, "padding": 1} if spatial else {}
    # A norm with a learned shift right after the layer makes the layer's bias redundant.
    parts = [("layer", layer_class(fan_in, width, bias=not shifted, **kwargs))]
    act, norm = ("act", nn.ReLU()), norms.make_norm(norm_cfg, width, spatial)
    if norm is None:
        parts.append(act)
    else:
        parts += [("norm", norm), act] if norm_cfg.placement == "pre" else [act, ("norm", norm)]
    return nn.Sequential(OrderedDict(parts + list(extra)))


def _dropout(p: float) -> list:
    return [("drop", nn.Dropout(p))] if p > 0 else []


def _mlp(cfg: ModelConfig, norm_cfg: NormConfig, in_features: int, num_classes: int) -> nn.Sequential:
    blocks = [("flatten", nn.Flatten())]  # (N, C, H, W) -> (N, C*H*W)
    fan_in = in_features
    for i, width in enumerate(relations.mlp_widths(cfg), start=1):
        blocks.append((f"hidden{i}", _hidden_block(nn.Linear, fan_in, width, norm_cfg, False, _dropout(cfg.dropout))))
        fan_in = width
    blocks.append(("out", nn.Linear(fan_in, num_classes)))
    return nn.Sequential(OrderedDict(blocks))


def _cnn(cfg: ModelConfig, norm_cfg: NormConfig, input_shape, num_classes: int) -> nn.Sequential:
    channels, height, width = input_shape
    blocks, fan_in = [], channels
    for i, out_channels in enumerate(cfg.channels, start=1):
        pool = [("pool", nn.MaxPool2d(2))]  # halves H and W
        blocks.append((f"conv{i}", _hidden_block(nn.Conv2d, fan_in, out_channels, norm_cfg, True, pool)))
        fan_in, height, width = out_channels, height // 2, width // 2
    if height == 0 or width == 0:
        raise ConfigError(
            f"model.channels={list(cfg.channels)} pools the {input_shape[1]}x{input_shape[2]} input "
            "down to nothing; use fewer conv blocks"
        )
    blocks += [("flatten", nn.Flatten())] + _dropout(cfg.dropout)  # (N, C, H, W) -> (N, C*H*W)
    blocks.append(("out", nn.Linear(fan_in * height * width, num_classes)))
    return nn.Sequential(OrderedDict(blocks))


def _cnn_modern(cfg: ModelConfig, norm_cfg: ModelConfig, in_channels: int, num_classes: int) -> nn.Sequential:
    blocks, fan_in = [], in_channels
    for i, out_channels in enumerate(cfg.channels, start=1):
        blocks.append((f"conv{i}a", _hidden_block(nn.Conv2d, fan_in, out_channels, norm_cfg, True)))
        blocks.append((f"conv{i}b", _hidden_block(nn.Conv2d, out_channels, out_channels, norm_cfg, True)))
        # ceil_mode keeps odd sizes (7x7 after MNIST's first pool) from losing a row and column
        pool = [("pool", nn.MaxPool2d(2, ceil_mode=True))] + _dropout(cfg.dropout)
        blocks.append((f"pool{i}", nn.Sequential(OrderedDict(pool))))
        fan_in = out_channels
    blocks.append(("head", _hidden_block(nn.Conv2d, fan_in, cfg.head_channels, norm_cfg, True)))
    blocks.append(("gap", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())))  # (N, C, H, W) -> (N, C)
    blocks += _dropout(cfg.dropout)
    blocks.append(("out", nn.Linear(cfg.head_channels, num_classes)))
    return nn.Sequential(OrderedDict(blocks))


def hidden_blocks(model: nn.Module) -> dict[str, nn.Sequential]:
    """The model's hidden blocks by name: the top-level children with an `act`."""
    return {name: block for name, block in model.named_children() if hasattr(block, "act")}


def norm_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Each hidden block's norm module, keyed by the block name; none for norm=none."""
    return {name: block.norm for name, block in hidden_blocks(model).items() if hasattr(block, "norm")}


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Keras-style counts: trainable parameters vs non-trainable state (frozen params, BN running stats)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    running = sum(b.numel() for b in model.buffers() if b.is_floating_point())
    return {"params_trainable": trainable, "params_non_trainable": frozen + running}
