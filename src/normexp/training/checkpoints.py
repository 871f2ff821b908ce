"""A training run's checkpoint, to resume the run after its process was killed (`trainer.resume=true`).

Written at the end of every epoch (Lightning's own checkpoint: model, optimizer, loop counters and
every callback's `state_dict`), plus what lives outside those: the global RNG (dropout) and the
training batches' pass counter (pass k is shuffled with seed + k). Callbacks that keep per-epoch
state (the divergence guard's reference loss, the epoch history, the probes' histograms and their
metrics not yet written) carry it in their own `state_dict`. Loaded with `weights_only=True`.

One file per run, beside the store (`<artifact root>/checkpoints/<run id>/last.ckpt`), never in the
working directory; removed once the run is FINISHED.
"""

import shutil
from pathlib import Path

import pytorch_lightning as pl
import torch

from normexp.data import Batches
from normexp.errors import ConfigError
from normexp.tracking import lifecycle, stores
from normexp.training.callbacks import EpochHistory
from normexp.config.schema import TrackingConfig, TrainConfig

FILE = "last.ckpt"


def path(tracking_cfg: TrackingConfig, run_id: str) -> Path:
    root = stores.artifact_root(tracking_cfg)
    # A tracking server keeps its artifacts to itself: that run resumes on this machine only.
    base = stores.local_folder(root) if root else stores.PROJECT_ROOT / "mlruns"
    return base / "checkpoints" / run_id / FILE


def remove(tracking_cfg: TrackingConfig, run_id: str) -> None:
    shutil.rmtree(path(tracking_cfg, run_id).parent, ignore_errors=True)


def find_killed_run(client, cfg: TrainConfig) -> tuple[str, Path]:
    """The newest KILLED run with cfg's config that has a checkpoint, and that checkpoint."""
    for run in lifecycle.runs_like(client, cfg, ("KILLED",)):
        file = path(cfg.tracking, run.info.run_id)
        if file.exists():
            return run.info.run_id, file
    running = lifecycle.runs_like(client, cfg, ("RUNNING",))
    alive = (f"; run {running[0].info.run_id} with this config is still RUNNING (its process renews its lease): "
             "resume it once that process has ended") if running else ""
    raise ConfigError(f"trainer.resume=true: no KILLED run with this config and a checkpoint in experiment "
                      f"'{cfg.tracking.experiment}' of {stores.tracking_uri(cfg.tracking)}{alive}; drop trainer.resume "
                      "to start a new run, or give the killed run's exact overrides")


class Checkpointing(pl.Callback):
    """Saves the run's checkpoint at the end of every epoch; on resume, logs what the killed process
    may not have: the last checkpointed epoch's train metrics (Lightning logs them just after this hook)."""

    def __init__(self, file: Path, train_batches: Batches, history: EpochHistory):
        self.file, self.batches, self.history = file, train_batches, history

    def on_train_epoch_end(self, trainer, pl_module):
        # Last in the callback list: the other callbacks have recorded this epoch in their state.
        self.file.parent.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(self.file, weights_only=False)  # Lightning writes it atomically

    def on_fit_start(self, trainer, pl_module):
        if not self.history.epochs:  # a new run, or one killed before its first checkpoint
            return
        client, run_id, epoch = trainer.logger.experiment, trainer.logger.run_id, len(self.history.epochs)
        lifecycle.set_tags(client, run_id, {"resumed_from_epoch": epoch})
        missing = {key: value for key, value in self.history.epochs[-1].items()
                   if not any(m.step == epoch for m in client.get_metric_history(run_id, key))}
        lifecycle.log_metrics(client, run_id, missing, step=epoch)

    def state_dict(self) -> dict:
        return {"torch_rng": torch.get_rng_state(), "passes": self.batches.passes,
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []}

    def load_state_dict(self, state: dict) -> None:
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"]:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.batches.passes = state["passes"]
