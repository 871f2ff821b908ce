"""MLflow runs: their experiments and params, and the one owner of their lifecycle. Every run
is created here and ended here, FINISHED only once everything it records is written; Lightning's
logger only logs metrics."""

import logging
import threading
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME, MLFLOW_RUN_NOTE
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH
from omegaconf import OmegaConf

from normexp.errors import ConfigError
from normexp.tracking import run_names, sharing, source, stores
from normexp.config.schema import TrackingConfig, TrainConfig

ERROR_ARTIFACT = "error.txt"  # the traceback of a FAILED run
# MLflow 3's experiment types (the UI's "experiment type"); MLflow has no constant for them yet.
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
LEASE_TAG = "lease_until"  # unix seconds: a RUNNING run whose lease has run out lost its process
log = logging.getLogger(__name__)
# MLflow announces creating a new SQLite store's tables on stderr, before a one-line error if there is one.
logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
# The runs this process has started (or reopened) and not yet ended: run id -> (client, stops its lease).
# Process state on purpose: a signal, or the command's last `except`, must end them from wherever it
# comes, and each joblib worker or SLURM job is a process of its own, holding its own runs.
_held: dict[str, tuple[MlflowClient, threading.Event]] = {}


def client_and_experiment(cfg: TrackingConfig) -> tuple[MlflowClient, str]:
    """The MLflow client for `cfg` (the tracking group) and the id of `cfg.experiment`, created if new.
    A new experiment is marked as model training (the UI then opens on runs, metrics and charts);
    `cfg.description` (a preset's question) becomes the experiment's description."""
    client = sharing.Client(stores.tracking_uri(cfg))
    experiment = client.get_experiment_by_name(cfg.experiment)
    if experiment is None:
        experiment_id = client.create_experiment(cfg.experiment, artifact_location=stores.artifact_root(cfg),
                                                 tags={EXPERIMENT_KIND: MODEL_TRAINING})
    else:
        experiment_id = experiment.experiment_id
    if cfg.description and (experiment is None or experiment.tags.get(MLFLOW_RUN_NOTE) != cfg.description):
        client.set_experiment_tag(experiment_id, MLFLOW_RUN_NOTE, cfg.description)
    return client, experiment_id


def flat_params(cfg: TrainConfig) -> dict[str, str]:
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


def connect(cfg: TrackingConfig) -> MlflowClient:
    """The client of the store (`stores.check` it first), after ending the runs of dead processes (`reap_expired`).
    A SQLite store is in WAL mode (`sharing.Client`): readers and the one writer no longer block each other,
    which parallel sweeps (joblib workers, lease renewals) need; it stays so (a property of the file)."""
    try:
        client = sharing.Client(stores.tracking_uri(cfg))
        reap_expired(client)
    except MlflowException as error:  # e.g. an unknown scheme, or a plain path (MLflow 3 refuses file stores)
        raise ConfigError(f"tracking.uri={stores.tracking_uri(cfg)}: {str(error).strip().splitlines()[0]}; use "
                          "sqlite:///<path> or http://<host>:<port>") from None
    return client


def pages(search, *args, **kwargs) -> list:
    """Every item of an MLflow search (search_runs, search_experiments, ...), page after page."""
    page = search(*args, **kwargs)
    items = list(page)
    while page.token:
        page = search(*args, page_token=page.token, **kwargs)
        items += page
    return items


def reap_expired(client: MlflowClient) -> list[str]:
    """End KILLED every RUNNING run of the store whose lease has run out: its process was killed (SIGKILL)
    or its machine lost. Every normexp command (train, search, report) does this first."""
    experiment_ids = [e.experiment_id for e in pages(client.search_experiments)]
    running = pages(client.search_runs, experiment_ids, "attributes.status = 'RUNNING'") if experiment_ids else []
    now, reaped = time.time(), []
    for run in running:
        until = run.data.tags.get(LEASE_TAG)
        if until is not None and float(until) < now:
            expired = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(until)))
            client.set_tag(run.info.run_id, "killed_reason", f"lease expired at {expired}: its process was killed "
                                                             "or its machine lost")
            end_run(client, run.info.run_id, "KILLED")
            reaped.append(run.info.run_id)
    return reaped


def _lease_until(lease_s: float) -> str:
    return f"{time.time() + lease_s:.1f}"


def _hold(client: MlflowClient, run_id: str, tracking_cfg: TrackingConfig) -> None:
    """Renew the run's lease every heartbeat_s seconds from a background thread, until `end_run`."""
    every_s, lease_s, stop = float(tracking_cfg.heartbeat_s), float(tracking_cfg.lease_s), threading.Event()
    _held[run_id] = client, stop

    def renew():
        while not stop.wait(every_s):
            try:
                client.set_tag(run_id, LEASE_TAG, _lease_until(lease_s))
            except Exception as error:  # a busy or unreachable store: the next beat tries again
                log.warning("could not renew the lease of run %s: %s", run_id, error)

    threading.Thread(target=renew, name=f"lease {run_id}", daemon=True).start()


def _create_run(tracking_cfg: TrackingConfig, tags: dict) -> tuple[MlflowClient, str]:
    client, experiment_id = client_and_experiment(tracking_cfg)
    lease = {LEASE_TAG: _lease_until(tracking_cfg.lease_s)}
    run = client.create_run(experiment_id, tags=source.tags() | lease | tags)
    _hold(client, run.info.run_id, tracking_cfg)
    return client, run.info.run_id


def start_run(cfg: TrainConfig, parent_run_id: str | None, extra_params: dict | None = None) -> tuple[MlflowClient, str]:
    """Create the run of one training job (or study), with its config as params, tags and a YAML artifact."""
    tags = {
        MLFLOW_RUN_NAME: run_names.name_of(cfg),
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
    with failing(client, run_id):  # e.g. a full artifact disk: the new run ends FAILED, not RUNNING
        params = flat_params(cfg) | {k: str(v) for k, v in (extra_params or {}).items()}
        client.log_batch(run_id, params=[Param(k, v[:MAX_PARAM_VAL_LENGTH]) for k, v in params.items()])
        client.log_text(run_id, OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
    return client, run_id


def start_sweep_run(tracking_cfg: TrackingConfig, sweep_dir: Path, overrides: str) -> tuple[MlflowClient, str]:
    """Create the parent run of a Hydra multirun."""
    return _create_run(tracking_cfg, {MLFLOW_RUN_NAME: f"sweep {sweep_dir.name}", "sweep_dir": str(sweep_dir.resolve()),
                                      "overrides": overrides})


def runs_like(client: MlflowClient, cfg: TrainConfig, statuses: tuple[str, ...]) -> list:
    """The runs of cfg's experiment in one of `statuses` whose config params equal cfg's (tracking and
    display settings aside), newest first."""
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    if experiment is None:
        return []
    wanted = {k: v[:MAX_PARAM_VAL_LENGTH] for k, v in flat_params(cfg).items()
              if not k.startswith(("tracking.", "trainer.resume", "trainer.progress_bar"))}
    found = client.search_runs([experiment.experiment_id], " or ".join(f"attributes.status = '{s}'" for s in statuses),
                               order_by=["attributes.start_time DESC"])
    return [run for run in found if all(run.data.params.get(k) == v for k, v in wanted.items())]


def reopen_run(client: MlflowClient, run_id: str, tracking_cfg: TrackingConfig) -> None:
    """RUNNING again (a resumed study or training run), holding a new lease; runs under it left RUNNING
    by a killed process end KILLED."""
    client.set_tag(run_id, LEASE_TAG, _lease_until(tracking_cfg.lease_s))
    client.update_run(run_id, status="RUNNING")
    if "killed_reason" in client.get_run(run_id).data.tags:
        client.delete_tag(run_id, "killed_reason")
    _hold(client, run_id, tracking_cfg)
    _kill_running_children(client, run_id)


def join_run(client: MlflowClient, run_id: str, tracking_cfg: TrackingConfig) -> None:
    """Hold the lease of a run that other processes hold too (a search's study run, shared by its workers
    on several machines), RUNNING again if it had ended; its running children are theirs, left alone."""
    client.set_tag(run_id, LEASE_TAG, _lease_until(tracking_cfg.lease_s))
    if client.get_run(run_id).info.status != "RUNNING":
        client.update_run(run_id, status="RUNNING")
    _hold(client, run_id, tracking_cfg)


def running_children(client: MlflowClient, run_id: str, max_results: int | None = None) -> list:
    """The runs under `run_id` that are RUNNING (at most max_results of them; None: all)."""
    experiment_id = client.get_run(run_id).info.experiment_id
    running = f"tags.mlflow.parentRunId = '{run_id}' and attributes.status = 'RUNNING'"
    if max_results is not None:
        return list(client.search_runs([experiment_id], running, max_results=max_results))
    return pages(client.search_runs, [experiment_id], running)


def _kill_running_children(client: MlflowClient, run_id: str) -> None:
    for child in running_children(client, run_id):
        _kill_running_children(client, child.info.run_id)
        end_run(client, child.info.run_id, "KILLED")


def end_held_runs(error: BaseException) -> None:
    """A command ends by `error`: every run this process still holds (a sweep's parent, whose end-of-sweep
    callback Hydra skips after a failed job) ends KILLED on an interrupt, FAILED (recorded) otherwise.
    Runs under it still RUNNING end KILLED: their processes are gone (joblib kills its workers on the
    way out). A store that cannot be written leaves them to their leases: `error` is what the command
    ends with."""
    interrupted = isinstance(error, (KeyboardInterrupt, SystemExit))
    for run_id, (client, _) in list(_held.items()):
        try:
            _kill_running_children(client, run_id)
            if client.get_run(run_id).info.status == "RUNNING":
                end_run(client, run_id, "KILLED" if interrupted else "FAILED", None if interrupted else error)
            else:  # ended by a joblib worker's job
                _held.pop(run_id)[1].set()
        except Exception as ending_error:
            if run_id in _held:
                _held.pop(run_id)[1].set()
            log.warning("run %s is left to its lease: %s: %s", run_id, type(ending_error).__name__, ending_error)


def wait_for_children(timeout_s: float) -> None:
    """Until no run under a run this process holds is RUNNING (joblib workers ending theirs), at most timeout_s."""
    deadline = time.monotonic() + timeout_s
    for run_id, (client, _) in list(_held.items()):
        while running_children(client, run_id, max_results=1) and time.monotonic() < deadline:
            time.sleep(0.2)


def end_run(client: MlflowClient, run_id: str, status: str, error: BaseException | None = None) -> None:
    """The one place a run ends. A FAILED run records its error as the tag `error` and its traceback
    as error.txt. The status is written whatever became of the traceback: on a full artifact disk,
    writing error.txt failed and left the run RUNNING."""
    if run_id in _held:
        _held.pop(run_id)[1].set()  # its lease is no longer renewed
    try:
        if error is not None:
            client.set_tag(run_id, "error", f"{type(error).__name__}: {error}"[:MAX_TAG_VAL_LENGTH])
            try:
                client.log_text(run_id, "".join(traceback.format_exception(error)), ERROR_ARTIFACT)
            except Exception as lost:  # the artifact store's fault, most likely the one being recorded
                client.set_tag(run_id, "error_txt", f"not written: {type(lost).__name__}: {lost}"[:MAX_TAG_VAL_LENGTH])
    finally:
        client.set_terminated(run_id, status)


@contextmanager
def ending(client: MlflowClient, run_id: str):
    """Around everything a run records: FINISHED after it, else as `failing` ends it."""
    with failing(client, run_id):
        yield
    end_run(client, run_id, "FINISHED")


@contextmanager
def failing(client: MlflowClient, run_id: str):
    """Around a run's writes: an exception ends the run FAILED (recorded), Ctrl-C (Lightning turns it
    into SystemExit) or SystemExit KILLED. The exception goes on unchanged, even where the run cannot
    be ended (an unreachable store: its lease then tells)."""
    try:
        yield
    except (KeyboardInterrupt, SystemExit) as error:
        _end_after(error, client, run_id, "KILLED")
        raise
    except Exception as error:
        _end_after(error, client, run_id, "FAILED")
        raise


def _end_after(error: BaseException, client: MlflowClient, run_id: str, status: str) -> None:
    try:
        end_run(client, run_id, status, error if status == "FAILED" else None)
    except Exception as ending_error:
        error.add_note(f"run {run_id} could not be ended {status} ({type(ending_error).__name__}: {ending_error}); "
                       "the next normexp command on the store ends it KILLED once its lease runs out")


def log_metrics(client: MlflowClient, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])


def set_tags(client: MlflowClient, run_id: str, tags: dict) -> None:
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
