import pytest
import torch
from torch import nn

from normexp.errors import ConfigError
from normexp.models import networks, scratch

DIGITS_SHAPE, MNIST_SHAPE = (1, 8, 8), (1, 28, 28)


def build(compose_cfg, *overrides, input_shape=DIGITS_SHAPE):
    cfg = compose_cfg(*overrides)
    return networks.build(cfg.model, cfg.norm, input_shape, 10)


def test_default_mlp_is_the_exercises_784_256_128_64_32_10(compose_cfg):
    model = build(compose_cfg, "norm=bn", input_shape=MNIST_SHAPE)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (784, 256), (256, 128), (128, 64), (64, 32), (32, 10)]
    assert all(isinstance(getattr(model, f"hidden{i}").norm, nn.BatchNorm1d) for i in range(1, 5))


def test_pre_placement_drops_the_bias_that_the_norm_shift_makes_redundant(compose_cfg):
    pre = build(compose_cfg, "norm=bn")
    assert list(pre.hidden1._modules) == ["layer", "norm", "act"] and pre.hidden1.layer.bias is None
    post = build(compose_cfg, "norm=bn", "norm.placement=post")
    assert list(post.hidden1._modules) == ["layer", "act", "norm"] and post.hidden1.layer.bias is not None
    plain = build(compose_cfg, "norm=none")
    assert list(plain.hidden1._modules) == ["layer", "act"] and plain.hidden1.layer.bias is not None


@pytest.mark.parametrize("norm, layer_type", [
    ("bn", nn.BatchNorm2d), ("ln", nn.GroupNorm), ("gn", nn.GroupNorm), ("in", nn.InstanceNorm2d),
    ("bn_scratch", scratch.BatchNorm),
])
def test_cnn_norm_layers(compose_cfg, norm, layer_type):
    model = build(compose_cfg, "model=cnn", f"norm={norm}", input_shape=MNIST_SHAPE)
    assert isinstance(model.conv1.norm, layer_type)
    assert model(torch.randn(4, *MNIST_SHAPE)).shape == (4, 10)


def test_cnn_modern_blocks_and_shapes(compose_cfg):
    model = build(compose_cfg, "model=cnn_modern", "norm=gn", input_shape=MNIST_SHAPE)
    assert [n for n in model._modules][:3] == ["conv1a", "conv1b", "pool1"]
    assert model.head.layer.out_channels == 128 and isinstance(model.pool1.drop, nn.Dropout)
    assert model(torch.randn(2, *MNIST_SHAPE)).shape == (2, 10)


def test_mlp_deep_has_more_than_five_hidden_layers(compose_cfg):
    model = build(compose_cfg, "model=mlp_deep")
    assert sum(name.startswith("hidden") for name in model._modules) > 5


def test_cnn_too_deep_for_the_input_is_refused(compose_cfg):
    with pytest.raises(ConfigError, match="pools the 8x8 input down to nothing"):
        build(compose_cfg, "model=cnn", "model.channels=[8,8,8,8]")


def weight_matrices(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if name.endswith("weight") and p.ndim > 1}


@pytest.mark.parametrize("model", ["mlp", "cnn", "seq"])
def test_init_scale_multiplies_every_weight_matrix_and_nothing_else(compose_cfg, model):
    built = {}
    for scale in (1.0, 3.0):
        torch.manual_seed(0)
        built[scale] = build(compose_cfg, f"model={model}", "norm=bn", f"model.init_scale={scale}")
    plain, scaled = built[1.0].state_dict(), built[3.0].state_dict()
    matrices = weight_matrices(built[1.0])
    assert len(matrices) >= 3
    for name, value in plain.items():
        expected = value * 3 if name in matrices else value  # biases, gammas, betas, running stats, positions
        assert torch.allclose(scaled[name], expected), name


@pytest.mark.parametrize("init, expected_std", [
    ("kaiming", (2 / 128) ** 0.5),        # He: sqrt(2 / fan_in) for hidden3's 128 inputs
    ("xavier", (2 / (128 + 64)) ** 0.5),  # Glorot: sqrt(2 / (fan_in + fan_out))
    ("normal", 0.01),
])
def test_each_init_scheme_gives_its_standard_deviation(compose_cfg, init, expected_std):
    torch.manual_seed(0)
    weight = build(compose_cfg, f"model.init={init}", "model.init_scale=2.0").hidden3.layer.weight  # (64, 128)
    assert weight.std().item() == pytest.approx(2 * expected_std, rel=0.05)


def test_depth_and_width_build_an_mlp_of_equal_layers(compose_cfg):
    model = build(compose_cfg, "model.widths=null", "model.depth=5", "model.width=16")
    blocks = networks.hidden_blocks(model)
    assert list(blocks) == [f"hidden{i}" for i in range(1, 6)]
    assert [b.layer.out_features for b in blocks.values()] == [16] * 5
    # The same list given both ways is no contradiction.
    build(compose_cfg, "model.widths=[16,16]", "model.depth=2", "model.width=16")
