"""MLflow: where runs go, and the one owner of their lifecycle. Every run is created here and ended
here, FINISHED only once everything it records is written; Lightning's logger only logs metrics."""

import subprocess
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME, MLFLOW_RUN_NOTE
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH
from omegaconf import OmegaConf
from pytorch_lightning.loggers import MLFlowLogger

from normexp.variants import variant_name

# src/normexp/tracking.py -> the repository root (the package is installed editable).
PROJECT_ROOT = Path(__file__).resolve().parents[2]
ERROR_ARTIFACT = "error.txt"  # the traceback of a FAILED run
# MLflow 3's experiment types (the UI's "experiment type"); MLflow has no constant for them yet.
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"


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
    """The MLflow client for `cfg` (the tracking group) and the id of `cfg.experiment`, created if new.
    A new experiment is marked as model training (the UI then opens on runs, metrics and charts);
    `cfg.description` (a preset's question) becomes the experiment's description."""
    client = MlflowClient(tracking_uri(cfg))
    experiment = client.get_experiment_by_name(cfg.experiment)
    if experiment is None:
        experiment_id = client.create_experiment(cfg.experiment, artifact_location=artifact_root(cfg),
                                                 tags={EXPERIMENT_KIND: MODEL_TRAINING})
    else:
        experiment_id = experiment.experiment_id
    if cfg.description and (experiment is None or experiment.tags.get(MLFLOW_RUN_NOTE) != cfg.description):
        client.set_experiment_tag(experiment_id, MLFLOW_RUN_NOTE, cfg.description)
    return client, experiment_id


def run_name(cfg) -> str:
    """e.g. bn-adam-lr0.01-bs64-s0; the model is named when it is not the default MLP."""
    parts = [] if cfg.model.name == "mlp" else [cfg.model.name]
    parts.append(variant_name(cfg.norm.kind, cfg.norm.placement))
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


def _create_run(tracking_cfg, tags: dict) -> tuple[MlflowClient, str]:
    client, experiment_id = client_and_experiment(tracking_cfg)
    run = client.create_run(experiment_id, tags={MLFLOW_GIT_COMMIT: git_commit()} | tags)
    return client, run.info.run_id


def start_run(cfg, parent_run_id: str | None, extra_params: dict | None = None) -> tuple[MlflowClient, str]:
    """Create the run of one training job (or study), with its config as params, tags and a YAML artifact."""
    tags = {
        MLFLOW_RUN_NAME: cfg.tracking.run_name or run_name(cfg),
        "dataset": cfg.dataset.name,
        "model": cfg.model.name,
        "norm": cfg.norm.kind,
        "placement": cfg.norm.placement,
        "optim": cfg.optim.name,
        "seed": str(cfg.seed),
    }
    if parent_run_id:
        tags |= {MLFLOW_PARENT_RUN_ID: parent_run_id, "sweep": parent_run_id}
    client, run_id = _create_run(cfg.tracking, tags)
    params = flat_params(cfg) | {k: str(v) for k, v in (extra_params or {}).items()}
    client.log_batch(run_id, params=[Param(k, v[:MAX_PARAM_VAL_LENGTH]) for k, v in params.items()])
    client.log_text(run_id, OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
    return client, run_id


def start_sweep_run(tracking_cfg, sweep_dir: Path, overrides: str) -> tuple[MlflowClient, str]:
    """Create the parent run of a Hydra multirun."""
    return _create_run(tracking_cfg, {MLFLOW_RUN_NAME: f"sweep {sweep_dir.name}", "sweep_dir": str(sweep_dir.resolve()),
                                      "overrides": overrides})


def reopen_run(client: MlflowClient, run_id: str) -> None:
    """RUNNING again (a resumed study's run); its children left RUNNING by a killed process end KILLED."""
    client.update_run(run_id, status="RUNNING")
    experiment_id = client.get_run(run_id).info.experiment_id
    stale = f"tags.mlflow.parentRunId = '{run_id}' and attributes.status = 'RUNNING'"
    for child in client.search_runs([experiment_id], stale):
        end_run(client, child.info.run_id, "KILLED")


def end_run(client: MlflowClient, run_id: str, status: str, error: BaseException | None = None) -> None:
    """The one place a run ends. A FAILED run records its error as the tag `error` and its traceback
    as error.txt."""
    if error is not None:
        client.set_tag(run_id, "error", f"{type(error).__name__}: {error}"[:MAX_TAG_VAL_LENGTH])
        client.log_text(run_id, "".join(traceback.format_exception(error)), ERROR_ARTIFACT)
    client.set_terminated(run_id, status)


@contextmanager
def ending(client: MlflowClient, run_id: str):
    """Around everything a run records: FINISHED after it, FAILED on an exception (recorded), KILLED
    on Ctrl-C (Lightning turns it into SystemExit) or SystemExit."""
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        end_run(client, run_id, "KILLED")
        raise
    except Exception as error:
        end_run(client, run_id, "FAILED", error)
        raise
    end_run(client, run_id, "FINISHED")


def log_metrics(client: MlflowClient, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])


def set_tags(client: MlflowClient, run_id: str, tags: dict) -> None:
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


class MetricsLogger(MLFlowLogger):
    """Lightning's MLflow logger for an existing run, minus ending it: Lightning finalizes the logger
    at the end of `fit` and again of `test`, before the run's outcome is written."""

    def __init__(self, tracking_cfg, run_id: str):
        super().__init__(experiment_name=tracking_cfg.experiment, tracking_uri=tracking_uri(tracking_cfg), run_id=run_id)

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
