"""normexp.norms: which layer each norm kind makes, and the refusals that need the widths and batch size."""

import pytest
from torch import nn

from normexp import norms, scratch
from normexp.errors import ConfigError
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


@pytest.mark.parametrize("kind, overrides, widths, spatial, batch_size, message", [
    ("gn", {"num_groups": 3}, [12, 8], False, 64, r"norm.num_groups=3 does not divide the layer width\(s\) \[8\]; choose one of \[1, 2, 4\]"),
    ("bn", {"kind": "bm"}, [8], False, 64, "unknown norm 'bm'; expected one of none, bn, ln, gn, in"),
    ("bn_scratch", {}, [8], False, 1, "dataset.batch_size=1 with norm=bn_scratch"),
    ("in", {}, [8], False, 64, r"norm=in \(InstanceNorm\) needs spatial dims"),
])
def test_check_refuses_what_cannot_work_with_the_fix(kind, overrides, widths, spatial, batch_size, message):
    with pytest.raises(ConfigError, match=message):
        norms.check(norm_cfg(kind, **overrides), widths, spatial, batch_size)
