"""normexp.training.classifier: the Classifier's epoch means and its optimizer (weight decay on weights only)."""

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from normexp.data import Batches, Split
from normexp.training.classifier import Classifier
from tests.conftest import compose


def optim_cfg(option: str, **overrides):
    """conf/optim/<option>.yaml as composed, with `overrides`."""
    return compose("train", f"optim={option}", *(f"optim.{k}={v}" for k, v in overrides.items())).optim


def test_epoch_means_weigh_every_example_equally_over_batches_of_unequal_size():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    x, y = torch.randn(7, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0])
    batches = Batches(Split(x, y), batch_size=3, shuffle=False, drop_last=False)  # 3, 3 and 1 examples
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(Classifier(model, optim_cfg("adam")), batches, verbose=False)
    with torch.no_grad():
        logits = model(x)
    assert float(trainer.callback_metrics["val/loss"]) == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-6)
    assert float(trainer.callback_metrics["val/acc"]) == pytest.approx(float((logits.argmax(dim=1) == y).float().mean()))


def test_lightning_hook_name_is_set_directly_and_submodules_still_register():
    classifier = Classifier(nn.Linear(2, 2), optim_cfg("adam"))
    classifier._current_fx_name = "training_step"
    assert vars(classifier)["_current_fx_name"] == "training_step"
    classifier.head = nn.Linear(2, 1)  # any other name still goes through nn.Module
    assert "head" in dict(classifier.named_children())


def test_weight_decay_falls_on_weight_matrices_only():
    model = nn.Sequential(nn.Linear(4, 8, bias=False), nn.BatchNorm1d(8), nn.Linear(8, 3))
    optimizer = Classifier(model, optim_cfg("adamw", weight_decay=0.05)).configure_optimizers()
    assert isinstance(optimizer, torch.optim.AdamW)
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.05 and {p.ndim for p in decayed["params"]} == {2}
    assert plain["weight_decay"] == 0.0 and {p.ndim for p in plain["params"]} == {1}  # gamma, beta, bias
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))


def test_sgd_gets_its_momentum_and_nesterov():
    optimizer = Classifier(nn.Linear(2, 2), optim_cfg("sgd", momentum=0.5, nesterov=True)).configure_optimizers()
    assert optimizer.defaults["momentum"] == 0.5 and optimizer.defaults["nesterov"] is True
