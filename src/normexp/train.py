"""run(cfg) -> Outcome: the one function that trains. `python -m normexp.train` is its Hydra CLI."""

import logging
import math
import os
import sys
import warnings
from dataclasses import dataclass, field, fields

import hydra
import pytorch_lightning as pl
import torch
from torch import nn

from normexp import data, probes, threads
from normexp.analysis import plots
from normexp.analysis.results import OutcomeMetrics
from normexp.config import schema
from normexp.models import networks
from normexp.probes import inference
from normexp.tracking import (commands, inputs, lifecycle, logged_model, metrics, progress, run_names, stores, sweep,
                              system_metrics)
from normexp.training import checkpoints
from normexp.training.callbacks import CallbackGroup, DivergenceGuard, EpochHistory, StopAtTarget
from normexp.training.classifier import Classifier
from normexp.config.schema import TrainConfig


def _quiet_lightning() -> None:
    """Lightning's per-Trainer banner (GPU/TPU availability, a cloud-logger tip), a deprecation warning from
    its own internals and its hint to use `srun` wherever SLURM is installed would repeat for every job of a
    sweep; each run's summary line says what matters. Called by `run`, not at import: a joblib worker
    gets `python -m normexp.train`'s functions by value and never imports this module."""
    logging.getLogger("pytorch_lightning.utilities.rank_zero").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*`srun` command is available.*")


def _cached_cuda_check() -> None:
    """lightning_fabric sets PYTORCH_NVML_BASED_CUDA_CHECK=1 on import, so that looking for a GPU does not
    initialize CUDA before DDP forks its workers. torch then asks NVML afresh (dlopen, nvmlInit) on every
    torch.cuda.is_available(), which Adam's step calls on every step: ~80 us of a ~3 ms Fashion-MNIST MLP
    step on this CPU machine, where each call searches the library path for a libnvidia-ml that is not
    there (benchmarks/epoch_time.py). A run trains on one device and forks nothing, so the CUDA runtime's
    check, cached after its first call, is safe."""
    os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)


@dataclass
class Outcome:
    run_id: str
    name: str
    diverged: bool
    diverged_at_step: int | None
    diverged_reason: str            # what the divergence guard saw, e.g. "loss 1.2e+11 > 10 x first-step loss 2.316"
    converged: bool                 # not diverged and best val accuracy >= dataset.converge_acc
    epochs_to_target: float | None  # epochs trained at the first validation from which val accuracy stays >= target
    best_val_acc: float
    final_val_acc: float
    train_val_gap: float            # final train accuracy - final val accuracy
    epoch_s: float                  # mean wall seconds per epoch, validation included
    train_s: float                  # the same without validation
    epochs: int                     # epochs trained (fewer than max_epochs when diverged)
    test_acc: float
    val_acc_curve: list[float] = field(repr=False)

    def summary(self) -> str:
        verdict = f"DIVERGED at step {self.diverged_at_step} ({self.diverged_reason})" if self.diverged else (
            "converged" if self.converged else "did not converge")
        target = f"target at epoch {self.epochs_to_target:g}" if self.epochs_to_target else "target not reached"
        return (f"{self.name}: {verdict}; val acc {self.final_val_acc:.4f} (best {self.best_val_acc:.4f}), "
                f"{target}, test acc {self.test_acc:.4f}, {self.epoch_s:.2f} s/epoch  [run {self.run_id}]")


def prepare(cfg: TrainConfig) -> tuple[data.DataSplits, nn.Module]:
    """The data and the model: everything that can refuse the config, run before any MLflow run exists."""
    schema.check(cfg)
    splits = data.load(cfg.dataset, cfg.seed)
    model = networks.build(cfg.model, cfg.norm, splits.input_shape, splits.num_classes)
    stores.check(cfg.tracking)
    return splits, model


def _open_run(cfg: TrainConfig, parent_run_id: str | None, model: nn.Module) -> tuple:
    """(client, run id, checkpoint to resume from or None): a new run, or with trainer.resume=true the
    newest KILLED run of this config, RUNNING again."""
    client = lifecycle.connect(cfg.tracking)  # first, runs whose process died end KILLED
    if not cfg.trainer.resume:
        return *lifecycle.start_run(cfg, parent_run_id, extra_params=networks.parameter_counts(model)), None
    run_id, checkpoint = checkpoints.find_killed_run(client, cfg)
    lifecycle.reopen_run(client, run_id, cfg.tracking)
    return client, run_id, checkpoint


def run(cfg: TrainConfig, parent_run_id: str | None = None, callbacks: list[pl.Callback] = ()) -> Outcome:
    """Train and test one configuration, tracked as one MLflow run (a child of `parent_run_id`)."""
    _quiet_lightning()
    _cached_cuda_check()
    pl.seed_everything(cfg.seed, workers=False, verbose=False)
    splits, model = prepare(cfg)
    guard, history = DivergenceGuard(cfg.divergence.factor, cfg.divergence.patience), EpochHistory()
    probing = probes.make_callbacks(cfg.probes, splits.val) if cfg.probes.enabled else []

    client, run_id, resume_from = _open_run(cfg, parent_run_id, model)
    with lifecycle.ending(client, run_id):  # FINISHED only after the outcome and figures are written
        if resume_from is None:  # a resumed run has its inputs
            inputs.log_splits(client, run_id, splits, cfg.dataset.name)
        batch_size = cfg.dataset.batch_size
        train_batches = data.Batches(splits.train, batch_size, shuffle=True, drop_last=True, seed=cfg.seed)
        checkpointing = checkpoints.Checkpointing(checkpoints.path(cfg.tracking, run_id), train_batches, history)
        show_progress = cfg.trainer.progress_bar if cfg.trainer.progress_bar is not None else sys.stderr.isatty()
        trainer = pl.Trainer(
            max_epochs=cfg.trainer.max_epochs,
            accelerator=cfg.trainer.accelerator,
            devices=1,
            deterministic=cfg.trainer.deterministic,
            logger=metrics.MetricsLogger(cfg.tracking, run_id),
            # One callback for Lightning (CallbackGroup); the checkpoint last: all states in.
            callbacks=[CallbackGroup([guard, history, *probing, *callbacks,
                                      *([StopAtTarget(cfg.dataset.target_acc, TARGET_HELD_CHECKS)]
                                        if cfg.trainer.stop_at_target else []),
                                      checkpointing])],
            # Several validations an epoch measure the time to target to a fraction of one (EpochHistory.checks).
            val_check_interval=1 / cfg.trainer.val_checks_per_epoch,
            enable_checkpointing=False,
            enable_progress_bar=show_progress,
            enable_model_summary=show_progress,
            num_sanity_val_steps=0,
            log_every_n_steps=1,  # metrics are epoch means; this only silences a warning on small data
        )
        if trainer.strategy.root_device.type != "cpu":
            splits.move_to(trainer.strategy.root_device)
        classifier = Classifier(model, cfg.optim)
        with system_metrics.recording(cfg.tracking, client, run_id):
            trainer.fit(classifier, train_dataloaders=train_batches,
                        val_dataloaders=data.Batches(splits.val, batch_size, shuffle=False, drop_last=False),
                        ckpt_path=resume_from, weights_only=True)
            test_metrics = trainer.test(classifier, data.Batches(splits.test, batch_size, shuffle=False,
                                                                 drop_last=False), verbose=False)[0]
        outcome = _outcome(cfg, run_id, guard, history, test_metrics["test/acc"])
        if cfg.probes.enabled:
            x = splits.test.x[: cfg.probes.inference_batch_size].to(trainer.strategy.root_device)  # (N, C, H, W)
            lifecycle.log_metrics(client, run_id, inference.inference_metrics(model, x, cfg.probes.inference_repeats))
        _log_outcome(client, run_id, outcome, device=str(trainer.strategy.root_device))
        if cfg.tracking.log_model:  # after the test metrics, which are copied onto the model
            logged_model.log(client, client.get_run(run_id).info.experiment_id, run_id, model,
                             splits.test.x[:2].cpu().numpy())
        plots.log_figure(client, run_id, plots.curves(history.epochs), "plots/curves.png")
    checkpoints.remove(cfg.tracking, run_id)  # FINISHED: nothing left to resume
    return outcome


# A validation "reaches" the target when val accuracy stays at or above it for this many validations in a
# row (fewer at the end of training): one lucky validation in a noisy curve does not count.
TARGET_HELD_CHECKS = 3


def epochs_to_target(checks: list[tuple[float, float]], target: float) -> float | None:
    """The epochs trained at the first validation from which val accuracy stays >= target for
    TARGET_HELD_CHECKS validations; `checks` is every validation's (epochs trained, val accuracy), one an
    epoch (1, 2, ...) or several (0.1, 0.2, ...: trainer.val_checks_per_epoch)."""
    for start in range(len(checks)):
        if all(acc >= target for _, acc in checks[start : start + TARGET_HELD_CHECKS]):
            return round(checks[start][0], 3)
    return None


def _outcome(cfg: TrainConfig, run_id: str, guard: DivergenceGuard, history: EpochHistory, test_acc: float) -> Outcome:
    val_acc = history.curve("val/acc")
    finite = [a for a in val_acc if math.isfinite(a)] or [0.0]
    diverged = guard.diverged_at_step is not None
    final = history.epochs[-1] if history.epochs else {}
    return Outcome(
        run_id=run_id,
        name=run_names.name_of(cfg),
        diverged=diverged,
        diverged_at_step=guard.diverged_at_step,
        diverged_reason=guard.reason,
        converged=not diverged and max(finite) >= cfg.dataset.converge_acc,
        epochs_to_target=epochs_to_target(history.checks, cfg.dataset.target_acc),
        best_val_acc=max(finite),
        final_val_acc=final.get("val/acc", math.nan),
        train_val_gap=final.get("train/acc", math.nan) - final.get("val/acc", math.nan),
        epoch_s=sum(history.curve("time/epoch_s")) / max(1, len(history.epochs)),
        train_s=sum(history.curve("time/train_s")) / max(1, len(history.epochs)),
        epochs=len(history.epochs),
        test_acc=float(test_acc),
        val_acc_curve=val_acc,
    )


def _log_outcome(client, run_id: str, outcome: Outcome, device: str) -> None:
    """The verdict (and where it was trained) as tags, filterable in the MLflow UI; the figures as metrics."""
    lifecycle.set_tags(client, run_id, {
        "device": device,
        "threads": torch.get_num_threads(),  # normexp.threads: CPUs shared by the jobs at once; s/epoch depends on it
        "jobs_at_once": threads.sharing(),   # > 1: timed while other jobs shared the CPUs (reports say so)
        "diverged": str(outcome.diverged).lower(),
        "converged": str(outcome.converged).lower(),
        **({"diverged_at_step": outcome.diverged_at_step, "diverged_reason": outcome.diverged_reason}
           if outcome.diverged else {}),
    })
    figures = OutcomeMetrics(**{f.name: getattr(outcome, f.name) for f in fields(OutcomeMetrics)})
    lifecycle.log_metrics(client, run_id, figures.as_metrics())


@commands.entry_point
@sweep.reports_failed_sweeps
@hydra.main(version_base=None, config_path="../../conf", config_name="train")
def main(cfg: TrainConfig) -> Outcome:
    with sweep.hydra_job(cfg.tracking) as parent_run_id:
        if cfg.tracking.run_name is None:  # in a multirun, named by all its jobs differ in
            cfg.tracking.run_name = run_names.run_name(cfg, sweep.swept_keys())
        outcome = run(cfg, parent_run_id=parent_run_id)
    progress.say(sweep.job_label() + outcome.summary())  # flushed: a joblib worker may be stopped, not exit
    return outcome


if __name__ == "__main__":
    main()
