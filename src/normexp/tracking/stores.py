"""The stores that parallel processes share: MLflow's tracking store (where it is, its artifacts, and
whether it can be used) and the search's Optuna storage, on SQLite (one machine) or on a database
server (PostgreSQL: `postgresql+psycopg2://...`).

SQLite lets one process write at a time. In WAL mode (`use_wal`) readers and that writer no longer
block each other, and it stays so (a property of the file). MLflow's SQLite store waits up to 20 s for
the write lock; a write that waits longer fails with 'database is locked', and `Client` tries it again.
Optuna's SQLite storage waits OPTUNA_SQLITE_WAIT_S (pysqlite's default is 5 s). WAL needs the
processes on one machine: across machines, use PostgreSQL or an `mlflow server`.
"""

import fcntl
import functools
import hashlib
import logging
import math
import os
import signal
import sqlite3
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import closing, contextmanager
from pathlib import Path

import optuna
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from normexp.errors import ConfigError
from normexp.config.schema import TrackingConfig

# Library noise kept out of normal output: MLflow's progress bars when a report downloads artifacts, and
# Optuna's INFO line for each new study and trial. An explicit MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR wins.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
optuna.logging.set_verbosity(optuna.logging.WARNING)

# The repository root (the package is installed editable).
PROJECT_ROOT = Path(__file__).resolve().parents[3]  # src/normexp/tracking/stores.py
SERVER_RETRIES = 2          # MLflow's retries of a request to a tracking server (stores._check_server)
LOCKED_RETRIES = 5          # attempts after the first, each after MLflow's own 20 s wait
LOCKED_BACKOFF_S = 1.0      # doubled after each attempt: 1, 2, 4, 8, 16 s
OPTUNA_SQLITE_WAIT_S = 60   # how long an Optuna write waits for a busy SQLite file
log = logging.getLogger(__name__)
# The tracking URIs whose store this process has opened. Process state: a store is opened (its tables
# made, WAL set) once per process, whichever code asks first.
_opened: set[str] = set()
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


def use_wal(url: str) -> None:
    """Put the SQLite file of a `sqlite:///` URL in WAL mode (created if new); other URLs are left alone."""
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url.removeprefix("sqlite:///"), timeout=OPTUNA_SQLITE_WAIT_S) as db:
            db.execute("PRAGMA journal_mode=WAL")


def is_locked(error: BaseException) -> bool:
    return isinstance(error, MlflowException) and "database is locked" in str(error)


def lost_insert_race(error: BaseException) -> bool:
    """A row this write inserted had been inserted, and committed, by another process after this write
    looked for it: the database's unique key refused the second insert (PostgreSQL, through a server or not)."""
    return isinstance(error, MlflowException) and "duplicate key value violates unique constraint" in str(error)


@contextmanager
def signals_held():
    """While inside, a SIGINT or SIGTERM is only noted; on leaving, it is sent again, to the handlers it
    would have met. A KeyboardInterrupt raised inside SQLAlchemy can leave its connection in an open
    write transaction that the exception's traceback keeps alive: every later write of the process
    (ending its runs KILLED) then found the store locked, waited MLflow's 20 s and tried again, for
    minutes. (Python runs signal handlers in the main thread only: other threads need no holding.)"""
    signums = (signal.SIGINT, signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread() or None in map(signal.getsignal, signums):
        yield  # None: a handler installed outside Python, which could not be put back
        return
    arrived: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: arrived.append(signum)) for s in signums}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for signum in arrived:
            signal.raise_signal(signum)


def retrying(write, after_lost_insert_race: bool = False):
    """`write` (an MlflowClient method), whole or not at all (`signals_held`), tried again while the
    SQLite store is locked, and with `after_lost_insert_race` when another process inserted one of its
    rows first (a write that finds its rows before inserting them then finds them). Safe to repeat: the
    failed write was rolled back."""

    @functools.wraps(write)
    def call(*args, **kwargs):
        for attempt in range(LOCKED_RETRIES + 1):
            try:
                with signals_held():  # not the wait between attempts: Ctrl-C still ends that
                    return write(*args, **kwargs)
            except MlflowException as error:
                lost_race = after_lost_insert_race and lost_insert_race(error)
                if not (is_locked(error) or lost_race) or attempt == LOCKED_RETRIES:
                    raise
                wait_s = LOCKED_BACKOFF_S * 2**attempt
                log.log(logging.INFO if lost_race else logging.WARNING, "MLflow store %s during %s; trying again "
                        "in %g s", "lost an insert race" if lost_race else "locked", write.__name__, wait_s)
                time.sleep(wait_s)

    return call


def lock_path(url: str) -> Path:
    """The file whose lock is `url`'s turn (one_at_a_time)."""
    return Path(tempfile.gettempdir()) / f"normexp-store-{hashlib.sha256(url.encode()).hexdigest()[:16]}.lock"


@contextmanager
def one_at_a_time(url: str):
    """While inside, no other process on this machine is inside for the same `url`. Two processes that
    open a new database at once would both create its tables and break each other's migrations (a
    parallel sweep's first jobs, two commands started together): they take turns, and the second finds
    the tables made. (Across machines: create them first, e.g. `mlflow db upgrade <url>`.)

    The turn is a lock on a file in the temp folder, removed by its holder on leaving, so that one is not
    left behind for every store ever opened. A process that was waiting on a removed file takes the turn
    anew, on the file now at that path."""
    path = lock_path(url)
    while True:
        lock = open(path, "a")
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if os.stat(path).st_ino == os.fstat(lock.fileno()).st_ino:
                break  # the file at the path: the turn is this process's
        except FileNotFoundError:
            pass  # its holder removed it while this process waited
        lock.close()
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # before the lock goes: whoever waits on this file sees it gone
        lock.close()


class Client(MlflowClient):
    """MlflowClient whose writes to the database retry while a SQLite store stays locked (artifact
    writes go to files, not to the database); the first in a process opens its store `one_at_a_time`, in
    WAL mode (`use_wal`)."""

    def __init__(self, tracking_uri: str):
        if tracking_uri in _opened:
            return super().__init__(tracking_uri)
        with one_at_a_time(tracking_uri):
            # In its turn: turning a file to WAL while another process writes to it (creating the tables)
            # fails at once with 'database is locked', as SQLite does not wait for that lock.
            use_wal(tracking_uri)
            super().__init__(tracking_uri)  # creates the store, and its tables if new
        _opened.add(tracking_uri)

    create_experiment = retrying(MlflowClient.create_experiment)
    set_experiment_tag = retrying(MlflowClient.set_experiment_tag)
    create_run = retrying(MlflowClient.create_run)
    update_run = retrying(MlflowClient.update_run)
    set_terminated = retrying(MlflowClient.set_terminated)
    log_batch = retrying(MlflowClient.log_batch)
    log_metric = retrying(MlflowClient.log_metric)
    log_param = retrying(MlflowClient.log_param)
    set_tag = retrying(MlflowClient.set_tag)
    delete_tag = retrying(MlflowClient.delete_tag)
    # MLflow looks a run's datasets up in its experiment, then inserts those it did not find: two runs that
    # log the same split at once (a parallel sweep's jobs, a search's workers) can both miss it, and the
    # later insert breaks the table's key. Tried again, the write finds the dataset and links it.
    log_inputs = retrying(MlflowClient.log_inputs, after_lost_insert_race=True)


def optuna_storage(url: str) -> optuna.storages.RDBStorage:
    """The search's Optuna storage at `url`; a SQLite file in WAL mode, its writers waiting for each other."""
    with one_at_a_time(url):  # creates the tables, if new
        if url.startswith("sqlite:///"):
            use_wal(url)
            return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": OPTUNA_SQLITE_WAIT_S}})
        return optuna.storages.RDBStorage(url)
