"""Training callbacks: the divergence guard, the per-epoch history (with epoch timing and every
validation's accuracy), stopping once the target has held, the report of each epoch to an Optuna trial
(pruning), and the group that hands a run's callbacks to Lightning."""

import logging
import math
import time
from functools import partial

import pytorch_lightning as pl
import torch

log = logging.getLogger(__name__)


class DivergenceGuard(pl.Callback):
    """Stop training once the loss has stayed above `factor` x the first step's loss for `patience`
    consecutive steps, or at the first step whose loss is non-finite, or at the first check that finds
    the BN running statistics non-finite (every STATS_EVERY-th step and each epoch's last; once
    non-finite they stay so, and the check costs ~80 us, a few % of an MLP step). Divergence is a
    result: `diverged_at_step` is the global step it began at (the first step of the streak, or the
    check's), and training ends normally. A spike that recovers within `patience` steps is not divergence.

    The reference is the untrained model's loss (about ln(num_classes)): a first-epoch mean would
    already contain the blow-up it is meant to detect (Adam at lr 10 reaches 1e11 at step 2).
    """

    STATS_EVERY = 10

    def __init__(self, factor: float, patience: int):
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
        elif (self._running_stats and (step % self.STATS_EVERY == 0 or batch_idx == trainer.num_training_batches - 1)
              and not torch.isfinite(torch.cat(self._running_stats)).all()):  # one check, not one per layer
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

    # A resumed run (normexp.training.checkpoints) keeps the first step's loss and a streak that spans epochs.
    def state_dict(self) -> dict:
        return {"reference": self._reference, "above": self._above}

    def load_state_dict(self, state: dict) -> None:
        self._reference, self._above = state["reference"], [tuple(x) for x in state["above"]]


def epochs_trained(trainer) -> float:
    """Epochs trained so far, a fraction of one included: at a validation after the epoch's batch b of B,
    current epoch + b / B (a whole number at an epoch's end)."""
    return trainer.current_epoch + (trainer.fit_loop.epoch_loop.batch_idx + 1) / trainer.num_training_batches


class EpochHistory(pl.Callback):
    """Records each epoch's logged metrics and wall times; logs `time/epoch_s` (the epoch: training,
    validation and the epoch-end work of every callback) and `time/train_s` (the same without validation).
    Keeps every validation's (epochs trained, val accuracy) too: several an epoch with
    trainer.val_checks_per_epoch > 1, so that the time to target is measured finer than an epoch."""

    def __init__(self):
        self.epochs: list[dict[str, float]] = []  # one dict per epoch: {'train/loss': ..., 'val/acc': ...}
        self.checks: list[tuple[float, float]] = []  # (epochs trained, val/acc) of every validation

    def on_train_epoch_start(self, trainer, pl_module):
        self._start, self._validation_s = time.perf_counter(), 0.0

    def on_validation_start(self, trainer, pl_module):
        self._validation_start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module):
        self._validation_s += time.perf_counter() - self._validation_start
        self.checks.append((epochs_trained(trainer), float(trainer.callback_metrics["val/acc"])))

    def on_train_epoch_end(self, trainer, pl_module):
        # Validation runs inside the training epoch, so its time and metrics are already here.
        seconds = time.perf_counter() - self._start
        times = {"time/epoch_s": seconds, "time/train_s": seconds - self._validation_s}
        trainer.logger.log_metrics(times, step=trainer.current_epoch + 1)  # stepped by epoch, as every metric
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.split("/")[0] in ("train", "val")}
        self.epochs.append(metrics | times)

    def state_dict(self) -> dict:  # a resumed run's outcome covers its earlier epochs too
        return {"epochs": self.epochs, "checks": self.checks}

    def load_state_dict(self, state: dict) -> None:
        self.epochs, self.checks = state["epochs"], [tuple(c) for c in state.get("checks", [])]

    def curve(self, key: str) -> list[float]:
        return [epoch.get(key, math.nan) for epoch in self.epochs]


class StopAtTarget(pl.Callback):
    """trainer.stop_at_target: stop training once val accuracy has stayed >= `target` for `held` validations
    in a row, the rule by which the run's time to target is measured (train.epochs_to_target). A preset
    about time to target spends no epochs after its answer; one about final accuracy keeps its budget.

    After a validation at an epoch's end training stops there. After one inside an epoch it stops at the
    next batch's end, where the classifier, seeing should_stop, logs the epoch's train means (set during
    the validation, the epoch would end without them)."""

    def __init__(self, target: float, held: int):
        self.target, self.held, self.streak = target, held, 0

    def on_validation_end(self, trainer, pl_module):
        self.streak = self.streak + 1 if float(trainer.callback_metrics["val/acc"]) >= self.target else 0
        if self.streak >= self.held and trainer.fit_loop.epoch_loop.batch_idx == trainer.num_training_batches - 1:
            trainer.should_stop = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.streak >= self.held:
            trainer.should_stop = True

    def state_dict(self) -> dict:  # a streak may span a resume
        return {"streak": self.streak}

    def load_state_dict(self, state: dict) -> None:
        self.streak = state["streak"]


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


# The hooks Lightning calls on a callback (pl.Callback's methods but its checkpoint state's).
HOOKS = [name for name in vars(pl.Callback) if name.startswith("on_") or name in ("setup", "teardown")]


class CallbackGroup(pl.Callback):
    """Callbacks handed to Lightning as one. Lightning calls every callback at each of its six hooks a
    training step, whether it overrides the hook or not, each call inside a profiler context: ~25 us a
    step per callback, ~200 us of a ~3 ms Fashion-MNIST MLP step for a run's eight
    (benchmarks/epoch_time.py). The group calls, in their order, the callbacks that override a hook,
    and only those; a checkpoint holds their states under their state keys."""

    def __init__(self, callbacks: list[pl.Callback]):
        self.callbacks = list(callbacks)
        for hook in HOOKS:
            overriding = [getattr(c, hook) for c in self.callbacks
                          if getattr(type(c), hook) is not getattr(pl.Callback, hook)]
            if overriding:
                setattr(self, hook, partial(_call_each_quietly if hook == "on_exception" else _call_each, overriding))

    def state_dict(self) -> dict:
        return {c.state_key: state for c in self.callbacks if (state := c.state_dict())}

    def load_state_dict(self, state: dict) -> None:
        for c in self.callbacks:
            if c.state_key in state:
                c.load_state_dict(state[c.state_key])


def _call_each(hooks: list, *args, **kwargs) -> None:
    for hook in hooks:
        hook(*args, **kwargs)


def _call_each_quietly(hooks: list, *args, **kwargs) -> None:
    """on_exception: the run is failing already. A callback that cannot write what it buffered (the
    store's fault, most likely the one the run fails on) must not replace the exception it ends with."""
    for hook in hooks:
        try:
            hook(*args, **kwargs)
        except Exception as error:
            log.warning("%s while the run failed: %s: %s", hook.__qualname__, type(error).__name__, error)
