"""normexp.config.relations: values each in its domain that do not fit together are refused with the fix,
as normexp.config.schema.check sees them (composed, before data, model or store)."""

import pytest

from normexp.config import schema
from normexp.errors import ConfigError
from tests.conftest import compose


def check(*overrides: str, name: str = "train") -> None:
    schema.check(compose(name, *overrides))


@pytest.mark.parametrize("overrides, message", [
    (["norm=gn", "norm.num_groups=5"],
     r"norm.num_groups=5 does not divide the layer width\(s\) \[256, 128, 64, 32\]; choose one of \[1, 2, 4, 8, 16, 32\]"),
    (["norm=gn", "norm.num_groups=3", "model.widths=[12,8]"],
     r"norm.num_groups=3 does not divide the layer width\(s\) \[8\]; choose one of \[1, 2, 4\]"),
    (["norm=in"], r"norm=in \(InstanceNorm\) needs spatial dims"),
    (["norm=ln_scratch", "model=cnn"], r"norm=ln_scratch is written for \(N, D\) features"),
    (["norm=bn", "dataset.batch_size=1"], "dataset.batch_size=1 with norm=bn: BatchNorm cannot train on a batch of one"),
    (["norm=bn_scratch", "dataset.batch_size=1"], "dataset.batch_size=1 with norm=bn_scratch"),
    (["norm=bn", "norm.eps=0"], "norm.eps=0.0 with norm=bn: torch's BatchNorm refuses eps=0 in training; "
                                "use norm=bn_scratch norm.eps=0"),
    (["model.depth=5", "model.width=16"],
     r"model.widths=\[256, 128, 64, 32\] disagrees with model.depth=5 x model.width=16; add model.widths=null"),
    (["model.widths=null", "model.depth=5"], "model.depth=5 with model.width=None: give both, each >= 1"),
    (["model.widths=null"], "model.widths=null and no model.depth / model.width"),
    (["model.widths=[]"], r"model.widths=\[\] must name at least one layer"),
    (["model=seq", "model.heads=3"], r"model.heads=3 does not divide model.width=64; choose one of \[1, 2, 4, 8, 16\]"),
    (["dataset.variable_length=true"], "dataset.variable_length=true with model=mlp: only model=seq masks"),
    (["dataset.mean=[0.1,0.2]"], r"dataset.mean=\[0.1, 0.2\] and dataset.std=\[0.376\]: one of each per channel"),
    (["optim=sgd", "optim.nesterov=true", "optim.momentum=0"], "optim.nesterov=true with optim.momentum=0.0"),
    (["tracking.heartbeat_s=60", "tracking.lease_s=10"], "tracking.heartbeat_s=60, tracking.lease_s=10: need 0 < "
                                                         "heartbeat_s < lease_s"),
])
def test_values_that_do_not_fit_together_are_refused_with_the_fix(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check(*overrides)


def test_a_search_range_whose_minimum_is_not_below_its_maximum_is_refused():
    for low, high in (("10", "1"), ("1", "1")):
        with pytest.raises(ConfigError, match=f"search.lr_min={low}, search.lr_max={high}: need 0 < lr_min < lr_max"):
            check(f"search.lr_min={low}", f"search.lr_max={high}", name="search")


@pytest.mark.parametrize("overrides", [
    ["norm=gn", "norm.num_groups=4", "model.widths=[12,8]"],
    ["norm=ln", "dataset.batch_size=1"],                     # LayerNorm has no batch dependence
    ["norm=bn_scratch", "norm.eps=0"], ["norm=ln", "norm.eps=0"], ["norm=gn", "norm.eps=0"],
    ["model.widths=[16,16]", "model.depth=2", "model.width=16"],  # the same list given both ways
    ["model.widths=null", "model.depth=5", "model.width=16"],
    ["model=seq", "dataset.variable_length=true"],
    ["optim=sgd", "optim.nesterov=true", "optim.momentum=0.9"],
])
def test_values_that_fit_together_are_accepted(overrides):
    check(*overrides)
