"""normexp.models.sequence: the row-by-row transformer, its padding mask and its masked BatchNorm."""

import pytest
import torch
from torch import nn

from normexp import train
from normexp.models import networks
from normexp.models.sequence import SequenceClassifier
from normexp.probes import inference

DIGITS_SHAPE = (1, 8, 8)
LENGTHS = [8, 5, 3, 8, 6, 4]  # rows kept per image


def build(compose_cfg, *overrides) -> SequenceClassifier:
    cfg = compose_cfg("model=seq", *overrides)
    torch.manual_seed(0)
    return networks.build(cfg.model, cfg.norm, DIGITS_SHAPE, 10)


def padded_batch() -> torch.Tensor:
    """(6, 1, 8, 8) images whose rows past LENGTHS are NaN, as normexp.data pads them."""
    x = torch.randn(len(LENGTHS), *DIGITS_SHAPE, generator=torch.Generator().manual_seed(1))
    for i, length in enumerate(LENGTHS):
        x[i, :, length:] = float("nan")
    return x


def test_blocks_are_named_like_the_mlps_so_probes_find_them(compose_cfg):
    model = build(compose_cfg, "norm=bn")
    assert list(networks.hidden_blocks(model)) == ["block1", "block2"]
    assert all(isinstance(norm, nn.BatchNorm1d) for norm in networks.norm_layers(model).values())
    assert networks.norm_layers(build(compose_cfg, "norm=none")) == {}
    assert model(padded_batch()).shape == (6, 10)


@pytest.mark.parametrize("norm, placement", [("bn", "pre"), ("bn", "post"), ("ln", "pre"), ("none", "pre")])
def test_padding_changes_no_output(compose_cfg, norm, placement):
    # Eval mode: each padded image gives what the image cut to its length gives with no padding at all.
    model = build(compose_cfg, f"norm={norm}", f"norm.placement={placement}").eval()
    x = padded_batch()
    with torch.no_grad():
        padded = model(x)  # (6, 10)
        for i, length in enumerate(LENGTHS):
            alone = model(x[i : i + 1, :, :length])  # (1, 10): a sequence of `length` rows
            assert torch.allclose(padded[i], alone[0], atol=1e-5), (i, length)
    assert torch.isfinite(padded).all()


def test_batchnorm_statistics_cover_the_valid_tokens_only(compose_cfg):
    model = build(compose_cfg, "norm=bn").train()
    norm = model.block1.norm
    seen = []
    norm.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].detach()))
    model(padded_batch())
    tokens = seen[0]  # (M, D)
    assert tokens.shape == (sum(LENGTHS), 64) and torch.isfinite(tokens).all()
    # The running mean moved from 0 by momentum x the mean over those tokens: no padding in it.
    assert torch.allclose(norm.running_mean, norm.momentum * tokens.mean(dim=0), atol=1e-6)


def test_batchnorm_before_the_mlp_is_not_folded_into_it(compose_cfg):
    model = build(compose_cfg, "norm=bn").eval()
    folded = inference.fold_batchnorm(model)
    assert inference.running_stat_norms(folded) == inference.running_stat_norms(model) == ["block1.norm", "block2.norm"]


def test_a_variable_length_run_with_probes_logs_the_blocks(compose_cfg, mlflow_client):
    outcome = train.run(compose_cfg("model=seq", "norm=bn", "dataset.variable_length=true", "trainer.max_epochs=1"))
    run = mlflow_client.get_run(outcome.run_id)
    assert run.info.status == "FINISHED" and not outcome.diverged and outcome.final_val_acc > 0.2
    for block in ("block1", "block2"):
        assert {f"bn/{block}/train_eval_gap", f"act/{block}/dead_frac", f"grad/{block}/norm"} <= set(run.data.metrics)
    assert run.data.metrics["inference/bn_unfolded"] == 2
