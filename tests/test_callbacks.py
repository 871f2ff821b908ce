"""normexp.training.callbacks: the divergence guard, driven by a real Lightning fit whose losses are scripted."""

import math

import pytorch_lightning as pl
import torch
from torch import nn

from normexp.training.callbacks import CallbackGroup, DivergenceGuard


class ScriptedLoss(pl.LightningModule):
    """Step i's training loss is losses[i]; `poison_at` makes the BN running mean non-finite at that step."""

    def __init__(self, losses: list[float], poison_at: int | None = None):
        super().__init__()
        self.losses, self.poison_at, self.steps = losses, poison_at, 0
        self.w = nn.Parameter(torch.zeros(1))
        self.bn = nn.BatchNorm1d(1)

    def training_step(self, batch, batch_idx):
        self.steps += 1
        if batch_idx == self.poison_at:
            self.bn.running_mean.fill_(math.nan)
        return self.w.sum() * 0 + self.losses[batch_idx]

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def fit(losses: list[float], patience: int = 1, poison_at: int | None = None) -> tuple[DivergenceGuard, ScriptedLoss]:
    guard, module = DivergenceGuard(10, patience), ScriptedLoss(losses, poison_at)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[guard])
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(torch.zeros(len(losses), 1), batch_size=1))
    return guard, module


def test_a_loss_above_factor_times_the_first_stops_training_at_that_step():
    guard, module = fit([2.3, 2.2, 30.0, 2.0, 2.0])
    assert guard.diverged_at_step == 3 and module.steps == 3  # the steps after it never ran
    assert guard.reason == "loss 30 > 10 x first-step loss 2.3 for 1 steps"


def test_a_spike_that_recovers_within_the_patience_is_not_divergence():
    guard, module = fit([2.3, 2.2, 30.0, 40.0, 2.0, 2.1, 2.0], patience=3)
    assert guard.diverged_at_step is None and module.steps == 7


def test_a_blow_up_that_stays_diverges_at_the_step_it_began():
    guard, module = fit([2.3, 2.2, 30.0, 40.0, 1e6, 2.0], patience=3)
    assert guard.diverged_at_step == 3 and module.steps == 5  # stopped once it stayed up for 3 steps
    assert guard.reason == "loss 30 > 10 x first-step loss 2.3 for 3 steps"


def test_a_non_finite_loss_needs_no_patience():
    guard, _ = fit([2.3, math.inf, 2.0], patience=5)
    assert guard.diverged_at_step == 2 and guard.reason == "loss inf"


def test_a_loss_below_the_threshold_is_not_divergence():
    guard, module = fit([2.3, 22.9, 2.0])
    assert guard.diverged_at_step is None and guard.reason == "" and module.steps == 3


def test_a_non_finite_loss_diverges_at_once():
    guard, _ = fit([2.3, math.nan, 2.0])
    assert guard.diverged_at_step == 2 and guard.reason == "loss nan"


def test_non_finite_running_statistics_diverge_at_the_next_check():
    # Checked every STATS_EVERY-th step and at the epoch's last: poisoned in step 4, found at step 10.
    guard, module = fit([2.3] * 25, poison_at=3)
    assert guard.diverged_at_step == DivergenceGuard.STATS_EVERY == 10 and module.steps == 10
    assert guard.reason == "non-finite BN running statistics"
    guard, _ = fit([2.3] * 25, poison_at=21)
    assert guard.diverged_at_step == 25  # the epoch's last step


def test_a_group_calls_only_the_callbacks_that_override_a_hook_in_their_order_and_keeps_their_states():
    calls = []

    class First(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            calls.append(("first", batch_idx))

        def state_dict(self):
            return {"batches": len(calls)}

        def load_state_dict(self, state):
            calls.append(("loaded", state["batches"]))

    class Second(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            calls.append(("second", batch_idx))

        def on_train_epoch_end(self, trainer, pl_module):
            calls.append(("second", "epoch end"))

    group = CallbackGroup([First(), Second()])
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[group])
    trainer.fit(ScriptedLoss([2.3, 2.3]), train_dataloaders=torch.utils.data.DataLoader(torch.zeros(2, 1), batch_size=1))
    assert calls == [("first", 0), ("second", 0), ("first", 1), ("second", 1), ("second", "epoch end")]
    assert "on_train_batch_start" not in vars(group)  # overridden by none: Lightning calls the base no-op
    first = group.callbacks[0].state_key  # its qualified class name
    assert group.state_dict() == {first: {"batches": 5}}  # Second keeps no state
    group.load_state_dict({first: {"batches": 3}})
    assert calls[-1] == ("loaded", 3)
