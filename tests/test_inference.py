import pytest
import torch
from torch import nn

from normexp.models import networks, scratch
from normexp.probes.inference import (fold_batchnorm, fold_max_abs_diff, inference_metrics, ms_per_batch,
                               running_stat_norms)
from tests.conftest import compose

MNIST_SHAPE = (1, 28, 28)
FOLD_TOLERANCE = 1e-4


def build(model, norm, **overrides):
    """The real block structure: model=<model> norm=<norm> as composed, with `overrides` on the norm."""
    cfg = compose("train", f"model={model}", f"norm={norm}", *(f"norm.{k}={v}" for k, v in overrides.items()))
    return networks.build(cfg.model, cfg.norm, MNIST_SHAPE, 10)


def trained_ish(model, seed=0):
    """Random gamma/beta and running statistics far from their 1/0 defaults, as training would leave them."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".norm." in name:
                p.copy_((1 if name.endswith("weight") else 0) + 0.5 * torch.randn(p.shape, generator=gen))
        model.train()
        for _ in range(5):  # momentum 0.1: the running stats move well away from mean 0 / var 1
            model(3 * torch.randn(32, *MNIST_SHAPE, generator=gen) + 1)
    return model


def batch(seed=1, n=64):
    return 3 * torch.randn(n, *MNIST_SHAPE, generator=torch.Generator().manual_seed(seed)) + 1


@pytest.mark.parametrize("model_name", ["mlp", "cnn", "cnn_modern"])
@pytest.mark.parametrize("norm", ["bn", "bn_scratch"])
def test_pre_placement_folds_every_batchnorm_and_keeps_the_output(model_name, norm):
    model = trained_ish(build(model_name, norm))
    assert model.training  # fold_batchnorm must switch to eval itself, or the batch statistics would be used
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, (nn.modules.batchnorm._BatchNorm, scratch.BatchNorm)) for m in folded.modules())
    assert running_stat_norms(folded) == [] and len(running_stat_norms(model)) > 0
    assert fold_max_abs_diff(model, folded, batch()) < FOLD_TOLERANCE
    assert model.training  # the caller's model is left as it was
    first = "hidden1" if model_name == "mlp" else "conv1" if model_name == "cnn" else "conv1a"
    assert getattr(model, first).layer.bias is None and getattr(folded, first).layer.bias is not None


def test_folded_output_is_close_to_the_eval_output_not_the_train_one():
    # Guards the test above: in train mode the output differs far beyond the tolerance.
    model = trained_ish(build("cnn", "bn"))
    folded = fold_batchnorm(model)
    with torch.no_grad():
        assert (model.train()(batch()) - folded(batch())).abs().max().item() > 100 * FOLD_TOLERANCE


def test_batchnorm_without_affine_folds_with_gamma_one_beta_zero():
    model = trained_ish(build("mlp", "bn", affine=False))
    folded = fold_batchnorm(model)
    assert running_stat_norms(folded) == []
    assert fold_max_abs_diff(model, folded, batch()) < FOLD_TOLERANCE


@pytest.mark.parametrize("model_name", ["mlp", "cnn"])
def test_post_placement_is_left_unfolded_and_reported(model_name):
    model = trained_ish(build(model_name, "bn", placement="post"))
    folded = fold_batchnorm(model)
    assert running_stat_norms(folded) == running_stat_norms(model) != []
    assert fold_max_abs_diff(model, folded, batch()) == 0.0
    metrics = inference_metrics(model, batch(), repeats=2)
    assert metrics["inference/bn_folded"] == 0
    assert metrics["inference/bn_unfolded"] == len(running_stat_norms(model))


def test_metrics_for_a_model_with_batchnorm():
    model = trained_ish(build("cnn", "bn"))
    metrics = inference_metrics(model, batch(n=256), repeats=3)
    assert set(metrics) == {"inference/ms_per_batch", "inference/ms_per_batch_folded",
                            "inference/fold_max_abs_diff", "inference/bn_folded", "inference/bn_unfolded"}
    assert metrics["inference/ms_per_batch"] > 0 and metrics["inference/ms_per_batch_folded"] > 0
    assert metrics["inference/fold_max_abs_diff"] < FOLD_TOLERANCE
    assert (metrics["inference/bn_folded"], metrics["inference/bn_unfolded"]) == (2, 0)


@pytest.mark.parametrize("model_name, norm", [("mlp", "none"), ("mlp", "ln"), ("cnn", "ln"), ("cnn", "gn"),
                                              ("cnn", "in"), ("mlp", "ln_scratch")])
def test_models_without_running_stats_get_only_the_time(model_name, norm):
    model = build(model_name, norm)
    assert running_stat_norms(model) == []
    assert fold_batchnorm(model) is not model
    assert set(inference_metrics(model, batch(), repeats=2)) == {"inference/ms_per_batch"}


def test_ms_per_batch_is_positive_and_runs_in_eval_mode_without_grad():
    seen = []
    model = build("mlp", "bn")
    model.register_forward_hook(lambda m, inputs, out: seen.append((m.training, torch.is_grad_enabled())))
    assert ms_per_batch(model, batch(), repeats=4, warmup=1) > 0
    assert seen == [(False, False)] * 5 and model.training
    with pytest.raises(ValueError, match="repeats=0"):
        ms_per_batch(model, batch(), repeats=0)
