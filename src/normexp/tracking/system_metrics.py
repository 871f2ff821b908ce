"""MLflow's system metrics (CPU, memory, disk, network, and GPU where pynvml finds one) for one run, from a
thread that samples them beside training (tracking.system_metrics)."""

import logging
from contextlib import contextmanager

from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from mlflow.tracking import MlflowClient

from normexp.config.schema import TrackingConfig

# Its start and stop lines (INFO) would repeat for every job of a sweep.
logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)


@contextmanager
def recording(cfg: TrackingConfig, client: MlflowClient, run_id: str):
    """While inside, a sample every cfg.system_metrics_interval_s, logged as system/* metrics of `run_id`."""
    if not cfg.system_metrics:
        yield
        return
    monitor = SystemMetricsMonitor(run_id, sampling_interval=cfg.system_metrics_interval_s,
                                   tracking_uri=client.tracking_uri)
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()  # joins the thread and writes what it had sampled
