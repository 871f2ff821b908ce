"""MLflow: tracking URI, experiments, runs with params/tags/config, and the parent run of a sweep."""

import logging
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME
from omegaconf import DictConfig, OmegaConf

from normexp.errors import ConfigError

# src/normexp/tracking.py -> the repository root (the package is installed editable).
PROJECT_ROOT = Path(__file__).resolve().parents[2]
PARENT_RUN_FILE = "mlflow_parent_run_id"  # in a Hydra sweep folder: the sweep's parent run
log = logging.getLogger(__name__)


def tracking_uri(cfg) -> str:
    return cfg.uri or f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"


def artifact_root(cfg) -> str | None:
    """Artifacts go beside the SQLite file (mlruns/), never under the working directory."""
    if cfg.artifact_root:
        return Path(cfg.artifact_root).expanduser().resolve().as_uri()
    uri = tracking_uri(cfg)
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlruns").as_uri()
    return None  # a tracking server chooses its own artifact store


def client_and_experiment(cfg) -> tuple[MlflowClient, str]:
    """The MLflow client for `cfg` (the tracking group) and the id of `cfg.experiment`, created if new."""
    client = MlflowClient(tracking_uri(cfg))
    experiment = client.get_experiment_by_name(cfg.experiment)
    if experiment is not None:
        return client, experiment.experiment_id
    return client, client.create_experiment(cfg.experiment, artifact_location=artifact_root(cfg))


def run_name(cfg) -> str:
    """e.g. bn-adam-lr0.01-bs64-s0; the model is named when it is not the default MLP."""
    parts = [] if cfg.model.name == "mlp" else [cfg.model.name]
    parts.append(cfg.norm.kind + ("-post" if cfg.norm.placement == "post" else ""))
    parts += [cfg.optim.name, f"lr{cfg.optim.lr:g}", f"bs{cfg.dataset.batch_size}", f"s{cfg.seed}"]
    return "-".join(parts)


def flat_params(cfg) -> dict[str, str]:
    """The resolved config as MLflow params: {'optim.lr': '0.01', 'model.widths': '[256, 128]', ...}."""
    container = OmegaConf.to_container(cfg, resolve=True)
    flat = {}

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = str(value)

    walk(container, "")
    return flat


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10)
    except OSError:
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def start_run(cfg, parent_run_id: str | None, extra_params: dict | None = None) -> tuple[MlflowClient, str]:
    """Create the run for one training job, with its config as params, tags and a YAML artifact."""
    client, experiment_id = client_and_experiment(cfg.tracking)
    tags = {
        MLFLOW_RUN_NAME: cfg.tracking.run_name or run_name(cfg),
        "dataset": cfg.dataset.name,
        "model": cfg.model.name,
        "norm": cfg.norm.kind,
        "placement": cfg.norm.placement,
        "optim": cfg.optim.name,
        "seed": str(cfg.seed),
        "git_commit": git_commit(),
    }
    if parent_run_id:
        tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
        tags["sweep"] = parent_run_id
    run = client.create_run(experiment_id, tags=tags)
    run_id = run.info.run_id
    params = flat_params(cfg) | {k: str(v) for k, v in (extra_params or {}).items()}
    items = [Param(k, v[:6000]) for k, v in params.items()]
    for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run_id, params=items[start : start + 100])
    client.log_text(run_id, OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
    return client, run_id


def log_metrics(client: MlflowClient, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    items = [Metric(k, float(v), 0, step) for k, v in metrics.items()]
    for start in range(0, len(items), 1000):
        client.log_batch(run_id, metrics=items[start : start + 1000])


def set_tags(client: MlflowClient, run_id: str, tags: dict) -> None:
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def sweep_parent_run_id() -> str | None:
    """The parent run of the Hydra multirun this job belongs to, or None outside a multirun."""
    if not HydraConfig.initialized():
        return None
    marker = Path(HydraConfig.get().sweep.dir) / PARENT_RUN_FILE
    return marker.read_text().strip() if HydraConfig.get().mode.name == "MULTIRUN" and marker.exists() else None


@contextmanager
def hydra_job(tracking_cfg):
    """Around the work of a Hydra job (train or search); yields the sweep's parent run id (None outside
    a multirun). A ConfigError in a single run becomes one line on stderr and exit status 1; in a
    multirun Hydra records the failed job, runs the others, then reports it. An interrupt ends the
    sweep's parent run KILLED: Hydra's end-of-sweep callbacks never run then."""
    parent_run_id = sweep_parent_run_id()
    try:
        yield parent_run_id
    except ConfigError as error:
        if HydraConfig.get().mode.name == "MULTIRUN":
            raise
        sys.exit(f"error: {error}")
    except (KeyboardInterrupt, SystemExit):  # Lightning turns Ctrl-C into SystemExit
        if parent_run_id:
            client_and_experiment(tracking_cfg)[0].set_terminated(parent_run_id, "KILLED")
        raise


class SweepParentRun(Callback):
    """Hydra callback: one MLflow parent run per multirun; jobs find its id in the sweep folder."""

    def __init__(self):
        self.run_id: str | None = None  # stays None in a single run, where there is no parent

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        client, experiment_id = client_and_experiment(config.tracking)
        sweep_dir = Path(config.hydra.sweep.dir)
        overrides = " ".join(config.hydra.overrides.task)
        run = client.create_run(
            experiment_id,
            tags={MLFLOW_RUN_NAME: f"sweep {sweep_dir.name}", "sweep_dir": str(sweep_dir.resolve()),
                  "overrides": overrides, "git_commit": git_commit()},
        )
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / PARENT_RUN_FILE).write_text(run.info.run_id)
        self.client, self.run_id, self.failed = client, run.info.run_id, False

    def on_job_end(self, config: DictConfig, job_return, **kwargs) -> None:
        # Hydra raises the first failed job only after the whole sweep; mark the parent now, so an
        # aborted sweep is never left RUNNING.
        if self.run_id and job_return.status.name == "FAILED" and not self.failed:
            self.failed = True
            self.client.set_tag(self.run_id, "failed_job", " ".join(job_return.overrides))
            self.client.set_terminated(self.run_id, "FAILED")

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if self.failed:
            return
        try:
            from normexp import report  # imported here: normexp.report imports this module

            answer = report.build_report(self.client, self.run_id)
            try:
                report.log_to_run(self.client, self.run_id, answer)
                print(answer.markdown)
            finally:
                answer.close()
        except Exception as error:  # every job has finished: a report bug must not leave the parent RUNNING
            log.exception("the sweep's report failed; its runs are complete in MLflow")
            self.client.set_tag(self.run_id, "report_error", repr(error)[:5000])
        finally:
            self.client.set_terminated(self.run_id, "FINISHED")
        print(f"\nBrowse the runs: mlflow ui --backend-store-uri {tracking_uri(config.tracking)} --host 127.0.0.1\n"
              f"  experiment '{config.tracking.experiment}', sweep parent run {self.run_id}; "
              f"Hydra's job folders: {config.hydra.sweep.dir}")
