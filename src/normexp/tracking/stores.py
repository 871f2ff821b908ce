"""The stores: MLflow's tracking store (where it is, its artifacts, how to browse it) and the search's Optuna
storage, on SQLite (one machine), on a database server (PostgreSQL: `postgresql+psycopg2://...`) or behind
an `mlflow server`; and the checks that refuse, in one line and before anything is recorded, one that cannot
be used. How parallel processes share one: normexp.tracking.sharing.
"""

import math
import os
import sqlite3
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from contextlib import closing
from pathlib import Path

from omegaconf import OmegaConf

from normexp.errors import ConfigError
from normexp.config.schema import TrackingConfig

# Library noise kept out of normal output: MLflow's progress bars when a report downloads artifacts. An
# explicit MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR wins.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

# The repository root (the package is installed editable).
PROJECT_ROOT = Path(__file__).resolve().parents[3]  # src/normexp/tracking/stores.py
SERVER_RETRIES = 2          # MLflow's retries of a request to a tracking server (stores._check_server)
MLFLOW_TABLES = {"experiments", "runs"}  # of a SQLite file that is an MLflow store
OPTUNA_TABLES = {"studies", "trials"}    # of one that is an Optuna storage


def tracking_uri(cfg: TrackingConfig) -> str:
    return cfg.uri or f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"


def tracking_defaults():
    """conf/tracking/default.yaml, for the commands that read runs without composing a config (report,
    answers): the store `python -m normexp.train` writes to by default, its server timeout."""
    return OmegaConf.load(PROJECT_ROOT / "conf" / "tracking" / "default.yaml")


def default_tracking_uri() -> str:
    return tracking_uri(tracking_defaults())


UI_PORT = 5000  # `mlflow ui`'s own default


def runs_url(uri: str, experiment_id: str) -> str:
    """The experiment's Runs table in the MLflow UI, in model-training mode: the UI keeps its mode in the
    browser, and a fresh browser opens an experiment on the GenAI overview unless the URL names the mode."""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else f"http://127.0.0.1:{UI_PORT}"
    return f"{base}/#/experiments/{experiment_id}?workflowType=machine_learning"


def browse_line(uri: str, experiment_id: str) -> str:
    """How to see an experiment's runs: the server's page, or the `mlflow ui` command for a store file first."""
    if uri.startswith(("http://", "https://")):
        return f"Browse the runs: {runs_url(uri, experiment_id)}"
    return (f"Browse the runs: mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port {UI_PORT}, "
            f"then open {runs_url(uri, experiment_id)}")


def artifact_root(cfg: TrackingConfig) -> str | None:
    """Artifacts go beside the SQLite file (mlruns/), never under the working directory."""
    if cfg.artifact_root:
        return Path(cfg.artifact_root).expanduser().resolve().as_uri()
    uri = tracking_uri(cfg)
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlruns").as_uri()
    if uri.startswith(("http://", "https://")):
        return None  # a tracking server chooses its own artifact store
    return (PROJECT_ROOT / "mlruns").as_uri()  # a database (postgresql://...): MLflow would use ./mlruns


def local_folder(uri: str) -> Path:
    return Path(urllib.request.url2pathname(urllib.parse.urlparse(uri).path))


def check(cfg: TrackingConfig) -> None:
    """Refuse, in seconds and before anything is recorded, a tracking server that does not answer within
    tracking.server_timeout_s (MLflow itself would retry for minutes), a store file that is not an
    MLflow store, and a store or artifact folder that cannot be written."""
    uri = tracking_uri(cfg)
    if uri.startswith(("http://", "https://")):
        _check_server(uri, "tracking.uri", cfg.server_timeout_s)
    folders = {"tracking.artifact_root" if cfg.artifact_root else "tracking.uri": local_folder(root)
               for root in [artifact_root(cfg)] if root}
    if uri.startswith("sqlite:///"):
        folders["tracking.uri"] = Path(uri.removeprefix("sqlite:///")).parent
    for key, folder in folders.items():
        check_writable(folder, key, cfg.artifact_root if key == "tracking.artifact_root" else uri,
                        f"tracking.uri=sqlite:///{Path.home()}/normexp/mlflow.db")
    if uri.startswith("sqlite:///"):
        _check_sqlite(uri, "tracking.uri", MLFLOW_TABLES, f"tracking.uri=sqlite:///{Path.home()}/normexp/mlflow.db")


def check_optuna(url: str) -> None:
    """The same for the search's Optuna storage (search.storage): its folder writable, its file Optuna's."""
    if url.startswith("sqlite:///"):
        fix = f"search.storage=sqlite:///{Path.home()}/normexp/optuna.db"
        check_writable(Path(url.removeprefix("sqlite:///")).parent, "search.storage", url, fix)
        _check_sqlite(url, "search.storage", OPTUNA_TABLES, fix)


def check_to_read(uri: str, key: str, timeout_s: float) -> None:
    """A store to read runs from (normexp.report's --tracking-uri): a server that answers, or a SQLite
    file that exists and is an MLflow store (MLflow would create an empty one)."""
    fix = f"e.g. {key}=sqlite:///{PROJECT_ROOT / 'mlflow.db'} (the default store)"
    if uri.startswith(("http://", "https://")):
        _check_server(uri, key, timeout_s)
    elif uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        if not path.is_file():
            raise ConfigError(f"{key}={uri}: no store at {path}; pass the store the runs were tracked in, {fix}")
        _check_sqlite(uri, key, MLFLOW_TABLES, fix)


def _check_server(uri: str, key: str, timeout_s: float) -> None:
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s).close()
    except urllib.error.HTTPError:
        pass  # it answers
    except OSError as error:
        raise ConfigError(f"{key}={uri} does not answer within {timeout_s:g} s ({getattr(error, 'reason', error)}); "
                          "start the server (mlflow server --host 127.0.0.1 --port PORT), or give the local SQLite "
                          "store") from None
    # MLflow's own requests: a server that stops answering mid-run fails the write in about 3 x timeout_s
    # (SERVER_RETRIES retries), not after MLflow's 7 retries of up to 120 s each. Set before any request;
    # an explicit setting in the environment wins.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(math.ceil(timeout_s)))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(SERVER_RETRIES))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")


def check_writable(folder: Path, key: str, value: str, fix: str) -> None:
    """`folder` (made if new) takes a file, or ConfigError: "key=value: cannot write to folder (why); e.g. fix"."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as error:
        raise ConfigError(f"{key}={value}: cannot write to {folder} ({error.strerror}); choose a writable place, "
                          f"e.g. {fix}") from None


def _check_sqlite(url: str, key: str, tables: set[str], fix: str) -> None:
    """An existing file must be a SQLite database, empty or holding `tables`: SQLite, MLflow and Optuna
    would each fail with their own raw error on anything else, or migrate another program's database."""
    path = Path(url.removeprefix("sqlite:///"))
    if not path.exists():
        return  # created on first use
    try:
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            found = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as error:
        raise ConfigError(f"{key}={url}: {path} is not a SQLite database ({error}); point {key} at a new file "
                          f"or at the store you meant, e.g. {fix}") from None
    if found and not tables <= found:
        raise ConfigError(f"{key}={url}: {path} is a database of something else (its tables: "
                          f"{', '.join(sorted(found)[:6])}); point {key} at a new file or at the store you meant, "
                          f"e.g. {fix}")
