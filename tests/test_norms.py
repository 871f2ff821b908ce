"""normexp.models.norms: which layer each norm kind makes."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normexp.models import norms, scratch
from tests.conftest import compose


def norm_cfg(option: str, **overrides):
    """conf/norm/<option>.yaml as composed, with `overrides`."""
    return compose("train", f"norm={option}", *(f"norm.{k}={v}" for k, v in overrides.items())).norm


@pytest.mark.parametrize("kind, spatial, layer_type", [
    ("bn", False, nn.BatchNorm1d), ("bn", True, nn.BatchNorm2d), ("ln", False, nn.LayerNorm),
    ("ln", True, nn.GroupNorm), ("gn", True, nn.GroupNorm), ("in", True, nn.InstanceNorm2d),
    ("bn_scratch", False, scratch.BatchNorm), ("ln_scratch", False, scratch.LayerNorm),
])
def test_each_kind_makes_its_layer(kind, spatial, layer_type):
    layer = norms.make_norm(norm_cfg(kind), 16, spatial)
    assert type(layer) is layer_type


def test_no_norm_is_no_layer_at_all():
    assert norms.make_norm(norm_cfg("none"), 16, spatial=False) is None
    assert not norms.has_shift(norm_cfg("none")) and norms.has_shift(norm_cfg("bn"))
    assert not norms.has_shift(norm_cfg("bn", affine=False))


def test_layer_norm_of_a_conv_is_group_norm_with_one_group():
    layer = norms.make_norm(norm_cfg("ln"), 16, spatial=True)
    assert layer.num_groups == 1 and layer.weight.shape == (16,)


def test_settings_reach_the_layer():
    bn = norms.make_norm(norm_cfg("bn", eps=1e-3, momentum=0.01, affine=False), 8, spatial=False)
    assert (bn.eps, bn.momentum, bn.affine) == (1e-3, 0.01, False)
    gn = norms.make_norm(norm_cfg("gn", num_groups=4), 8, spatial=True)
    assert gn.num_groups == 4


def dead_feature_batch() -> torch.Tensor:
    """(16, 4) features; feature 1 is 0 for every example, like a ReLU unit dead on the whole batch."""
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
    x[:, 1] = 0.0
    return x


def test_torch_batchnorm_refuses_eps_zero_in_training():
    # The reason norm=bn refuses eps=0 up front (normexp.config.relations) rather than failing mid-run.
    with pytest.raises(ValueError, match="eps must be positive during training"):
        F.batch_norm(dead_feature_batch(), None, None, training=True, eps=0.0)


@pytest.mark.parametrize("eps", [0.0, 1e-5])
def test_a_dead_feature_with_eps_zero_divides_zero_by_zero_in_training_only(eps):
    # Its batch variance is 0: the output is (0 - 0) / sqrt(0 + eps): 0 / 0 = NaN for eps=0, else 0.
    bn = norms.make_norm(norm_cfg("bn_scratch", eps=eps), 4, spatial=False)
    x = dead_feature_batch()
    train_out = bn(x)  # (16, 4)
    live = torch.tensor([0, 2, 3])
    assert torch.isfinite(train_out[:, live]).all()
    if eps == 0:
        assert train_out[:, 1].isnan().all()
    else:
        assert torch.equal(train_out[:, 1], torch.zeros(16))
    # Eval mode divides by the running variance: 0.9 after this one step (momentum 0.1 from 1), finite.
    assert bn.running_var[1].item() == pytest.approx(0.9)
    eval_out = bn.eval()(x)
    assert torch.isfinite(eval_out).all() and torch.equal(eval_out[:, 1], torch.zeros(16))
