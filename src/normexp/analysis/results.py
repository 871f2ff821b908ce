"""A run's result, defined once: the outcome figures that `train` logs (metrics outcome/<field>) and that
the reports read back (RunData.outcome), the pairing of two variants' runs by seed, and the speedup.

The speedup of a norm over no normalization, for one seed, is epochs to target without it / with it.
When a run never reached the target:
- the run with the norm: no speedup can be stated for that seed; the pair is left out and counted;
- the run without it (it stayed below, or diverged): its epoch budget (trainer.max_epochs) stands in,
  so that seed's speedup is a lower bound, and counted as one.
Tables and verdicts both use `speedups`, so they never disagree on the same runs.
"""

import math
from dataclasses import asdict, dataclass, fields
from functools import cached_property

PREFIX = "outcome/"


@dataclass(frozen=True)
class OutcomeMetrics:
    """The figures of a run's outcome, logged as metrics outcome/<field> (NaN or None: not recorded)."""
    best_val_acc: float = math.nan
    final_val_acc: float = math.nan
    train_val_gap: float = math.nan        # final train accuracy - final val accuracy
    epoch_s: float = math.nan              # mean wall seconds per epoch, validation included
    train_s: float = math.nan              # the same without validation
    epochs: float = math.nan               # epochs trained (fewer than max_epochs when diverged)
    diverged_at_step: float | None = None  # None: did not diverge
    epochs_to_target: float | None = None  # None: never reached the target

    def as_metrics(self) -> dict[str, float]:
        return {PREFIX + name: value for name, value in asdict(self).items() if value is not None}

    @classmethod
    def from_metrics(cls, metrics: dict[str, float]) -> "OutcomeMetrics":
        return cls(**{f.name: metrics[PREFIX + f.name] for f in fields(cls) if PREFIX + f.name in metrics})


@dataclass
class RunData:
    """A finished training run as the reports read it from MLflow."""
    run_id: str
    name: str
    params: dict[str, str]      # the flat config, as tracking.lifecycle.flat_params logged it
    metrics: dict[str, float]   # latest values: outcome/*, train/acc, ...
    diverged: bool
    diverged_at_step: int | None
    converged: bool
    train_loss: list[float]     # per epoch; [0] is epoch 1
    val_acc: list[float]
    jobs_at_once: int = 1       # > 1: timed while other jobs shared the CPUs (tag jobs_at_once)

    @cached_property
    def outcome(self) -> OutcomeMetrics:
        return OutcomeMetrics.from_metrics(self.metrics)

    def metric(self, key: str) -> float:
        return self.metrics.get(key, math.nan)


def by_seed(runs: list[RunData]) -> dict[str, RunData]:
    return {r.params.get("seed"): r for r in runs}


def paired(plain: list[RunData], normed: list[RunData]) -> list[tuple[RunData, RunData]]:
    """(run without the norm, run with it) for each seed that both ran, in `normed`'s order."""
    plain_by_seed = by_seed(plain)
    return [(plain_by_seed[r.params.get("seed")], r) for r in normed if r.params.get("seed") in plain_by_seed]


@dataclass(frozen=True)
class Speedups:
    values: list[float]   # one per pair whose normed run reached the target
    lower_bounds: int     # how many of them stand on the plain run's budget (it never reached the target)
    not_reached: int      # pairs left out: the normed run never reached the target


def speedups(pairs: list[tuple[RunData, RunData]]) -> Speedups:
    """Epochs to target without the norm / with it, per pair, by the rule in this module's docstring."""
    values, lower_bounds, not_reached = [], 0, 0
    for plain, normed in pairs:
        norm_epochs = normed.outcome.epochs_to_target
        if norm_epochs is None:
            not_reached += 1
            continue
        plain_epochs = plain.outcome.epochs_to_target
        if plain_epochs is None:
            plain_epochs, lower_bounds = float(plain.params["trainer.max_epochs"]), lower_bounds + 1
        values.append(plain_epochs / norm_epochs)
    return Speedups(values, lower_bounds, not_reached)


def differences(pairs: list[tuple[RunData, RunData]], value) -> list[float]:
    """value(normed run) - value(plain run), per pair."""
    return [value(normed) - value(plain) for plain, normed in pairs]
