"""Training callbacks: the divergence guard, the per-epoch history (with epoch timing), and the
report of each epoch to an Optuna trial (pruning)."""

import math
import time

import pytorch_lightning as pl
import torch

from normexp.errors import ConfigError


class DivergenceGuard(pl.Callback):
    """Stop training once the loss has stayed above `factor` x the first step's loss for `patience`
    consecutive steps, or at the first step whose loss or BN running statistics are non-finite.
    Divergence is a result: `diverged_at_step` is the global step it began at (the first step of the
    streak), and training ends normally. A spike that recovers within `patience` steps is not divergence.

    The reference is the untrained model's loss (about ln(num_classes)): a first-epoch mean would
    already contain the blow-up it is meant to detect (Adam at lr 10 reaches 1e11 at step 2).
    """

    def __init__(self, factor: float, patience: int):
        if not factor > 1:
            raise ConfigError(f"divergence.factor={factor:g} must be > 1; e.g. divergence.factor=10")
        if patience < 1:
            raise ConfigError(f"divergence.patience={patience} must be >= 1 (steps); e.g. divergence.patience=5")
        self.factor, self.patience = factor, patience
        self.diverged_at_step: int | None = None
        self.reason = ""
        self._reference: float | None = None
        self._above: list[tuple[int, float]] = []  # (step, loss) of the current streak above the threshold

    def on_fit_start(self, trainer, pl_module):
        self._running_stats = [b.view(-1) for name, b in pl_module.named_buffers() if "running_" in name]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss, step = float(outputs["loss"]), trainer.global_step
        if self._reference is None:
            self._reference = loss
        if not math.isfinite(loss):
            self._stop(trainer, step, f"loss {loss}")
        elif self._running_stats and not torch.isfinite(torch.cat(self._running_stats)).all():  # one check, not one per layer
            self._stop(trainer, step, "non-finite BN running statistics")
        elif loss > self.factor * self._reference:
            self._above.append((step, loss))
            if len(self._above) >= self.patience:
                first_step, first_loss = self._above[0]
                self._stop(trainer, first_step, f"loss {first_loss:.4g} > {self.factor:g} x first-step loss "
                                                f"{self._reference:.4g} for {self.patience} steps")
        else:
            self._above = []

    def _stop(self, trainer, step: int, reason: str) -> None:
        self.diverged_at_step, self.reason = step, reason
        trainer.should_stop = True

    # A resumed run (normexp.checkpoints) keeps the first step's loss and a streak that spans epochs.
    def state_dict(self) -> dict:
        return {"reference": self._reference, "above": self._above}

    def load_state_dict(self, state: dict) -> None:
        self._reference, self._above = state["reference"], [tuple(x) for x in state["above"]]


class EpochHistory(pl.Callback):
    """Records each epoch's logged metrics and wall times; logs `time/epoch_s` (the epoch: training,
    validation and the epoch-end work of every callback) and `time/train_s` (the same without validation)."""

    def __init__(self):
        self.epochs: list[dict[str, float]] = []  # one dict per epoch: {'train/loss': ..., 'val/acc': ...}

    def on_train_epoch_start(self, trainer, pl_module):
        self._start, self._validation_s = time.perf_counter(), 0.0

    def on_validation_start(self, trainer, pl_module):
        self._validation_start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module):
        self._validation_s += time.perf_counter() - self._validation_start

    def on_train_epoch_end(self, trainer, pl_module):
        # Validation runs inside the training epoch, so its time and metrics are already here.
        seconds = time.perf_counter() - self._start
        times = {"time/epoch_s": seconds, "time/train_s": seconds - self._validation_s}
        trainer.logger.log_metrics(times, step=trainer.current_epoch + 1)  # stepped by epoch, as every metric
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.split("/")[0] in ("train", "val")}
        self.epochs.append(metrics | times)

    def state_dict(self) -> dict:  # a resumed run's outcome covers its earlier epochs too
        return {"epochs": self.epochs}

    def load_state_dict(self, state: dict) -> None:
        self.epochs = state["epochs"]

    def curve(self, key: str) -> list[float]:
        return [epoch.get(key, math.nan) for epoch in self.epochs]


class TrialPruning(pl.Callback):
    """Reports each epoch's val/acc to an Optuna trial (step = step_offset + epoch) and, when the
    study's pruner says so, stops training the way DivergenceGuard does: `pruned` becomes True and
    the MLflow run still ends FINISHED (raising optuna.TrialPruned inside fit would end it FAILED)."""

    def __init__(self, trial, step_offset: int):
        self.trial, self.step_offset, self.pruned = trial, step_offset, False

    def on_train_epoch_end(self, trainer, pl_module):
        value = trainer.callback_metrics.get("val/acc")  # validation ran inside this epoch
        if value is None or not math.isfinite(float(value)):
            return
        self.trial.report(float(value), self.step_offset + trainer.current_epoch + 1)
        if self.trial.should_prune():
            self.pruned, trainer.should_stop = True, True
