"""Metric writes while a run trains: Lightning's logger for a run that tracking.py owns (it never ends
it), and a buffer that writes the probes' metrics in batches. Runs are created and ended in tracking.py."""

import time

import torch
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from pytorch_lightning.loggers import MLFlowLogger

from normexp.tracking import sharing, stores
from normexp.config.schema import TrackingConfig


class MetricsLogger(MLFlowLogger):
    """Lightning's MLflow logger for an existing run, minus ending it: Lightning finalizes the logger
    at the end of `fit` and again of `test`, before the run's outcome is written."""

    def __init__(self, tracking_cfg: TrackingConfig, run_id: str):
        super().__init__(experiment_name=tracking_cfg.experiment, tracking_uri=stores.tracking_uri(tracking_cfg),
                         run_id=run_id)
        self._mlflow_client = sharing.Client(stores.tracking_uri(tracking_cfg))  # its writes, too, outlast a locked store

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        # Lightning adds its own "epoch" counter (at the global step) to every write: our metrics are
        # stepped by epoch already, and that counter is the one thing a resumed run could not log again.
        super().log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step)

    def finalize(self, status: str = "success") -> None:
        pass  # the run's owner ends it (`ending`)


class MetricBuffer:
    """Metrics kept in memory and written to a run in one batch, at most every `every_s` seconds
    (one SQLite write costs ~30 ms, a third of a digits epoch) or when forced."""

    def __init__(self, every_s: float):
        self.every_s = every_s
        self.items: list[Metric] = []
        self.written_at = time.monotonic()

    def add(self, values: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self.items += [Metric(key, float(value), now, step) for key, value in values.items()]

    def write(self, client: MlflowClient, run_id: str, force: bool = False) -> None:
        if not self.items or (not force and time.monotonic() - self.written_at < self.every_s):
            return
        client.log_batch(run_id, metrics=self.items)
        self.items, self.written_at = [], time.monotonic()

    # A checkpoint carries the metrics not yet written (normexp.training.checkpoints), packed: a few objects to
    # pickle each epoch however many metrics wait. Written again after a resume, MLflow keeps one of
    # two identical (key, value, timestamp, step).
    def state_dict(self) -> dict:
        return {"keys": "\n".join(m.key for m in self.items),
                "values": torch.tensor([m.value for m in self.items], dtype=torch.float64),
                "times_steps": torch.tensor([[m.timestamp, m.step] for m in self.items], dtype=torch.int64)}

    def load_state_dict(self, state: dict) -> None:
        keys = state["keys"].split("\n") if state["keys"] else []
        self.items = [Metric(key, value, time_ms, step) for key, value, (time_ms, step)
                      in zip(keys, state["values"].tolist(), state["times_steps"].tolist())]
