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
import signal
import sqlite3
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import optuna
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from normexp.errors import ConfigError

# src/normexp/stores.py -> the repository root (the package is installed editable).
PROJECT_ROOT = Path(__file__).resolve().parents[2]
SERVER_TIMEOUT_S = 5        # a tracking server that does not answer the first request within this is refused
LOCKED_RETRIES = 5          # attempts after the first, each after MLflow's own 20 s wait
LOCKED_BACKOFF_S = 1.0      # doubled after each attempt: 1, 2, 4, 8, 16 s
OPTUNA_SQLITE_WAIT_S = 60   # how long an Optuna write waits for a busy SQLite file
log = logging.getLogger(__name__)
_opened: set[str] = set()   # the tracking URIs whose store this process has opened


def tracking_uri(cfg) -> str:
    return cfg.uri or f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"


def artifact_root(cfg) -> str | None:
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


def check(cfg) -> None:
    """Refuse, in seconds and before anything is recorded, a lease that cannot work, a tracking server
    that does not answer (MLflow itself would retry for minutes) and a store or artifact folder that
    cannot be written."""
    if not 0 < cfg.heartbeat_s < cfg.lease_s:
        raise ConfigError(f"tracking.heartbeat_s={cfg.heartbeat_s:g}, tracking.lease_s={cfg.lease_s:g}: need 0 < "
                          "heartbeat_s < lease_s (a lease outlives missed renewals); e.g. tracking.heartbeat_s=10 "
                          "tracking.lease_s=60")
    uri = tracking_uri(cfg)
    if uri.startswith(("http://", "https://")):
        try:
            urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=SERVER_TIMEOUT_S).close()
        except urllib.error.HTTPError:
            pass  # it answers
        except OSError as error:
            raise ConfigError(f"tracking.uri={uri} does not answer ({getattr(error, 'reason', error)}); start the "
                              "server (mlflow server --host 127.0.0.1 --port PORT) or drop tracking.uri for the "
                              "local SQLite store") from None
    folders = {"tracking.artifact_root" if cfg.artifact_root else "tracking.uri": local_folder(root)
               for root in [artifact_root(cfg)] if root}
    if uri.startswith("sqlite:///"):
        folders["tracking.uri"] = Path(uri.removeprefix("sqlite:///")).parent
    for key, folder in folders.items():
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=folder).close()
        except OSError as error:
            raise ConfigError(f"{key}={cfg.artifact_root if key == 'tracking.artifact_root' else uri}: cannot write "
                              f"to {folder} ({error.strerror}); choose a writable place, e.g. "
                              f"tracking.uri=sqlite:///{Path.home()}/normexp/mlflow.db") from None


def use_wal(url: str) -> None:
    """Put the SQLite file of a `sqlite:///` URL in WAL mode (created if new); other URLs are left alone."""
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url.removeprefix("sqlite:///"), timeout=OPTUNA_SQLITE_WAIT_S) as db:
            db.execute("PRAGMA journal_mode=WAL")


def is_locked(error: BaseException) -> bool:
    return isinstance(error, MlflowException) and "database is locked" in str(error)


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


def retrying(write):
    """`write` (an MlflowClient method), whole or not at all (`signals_held`), tried again while the
    SQLite store is locked. Safe to repeat: a locked write was rolled back."""

    @functools.wraps(write)
    def call(*args, **kwargs):
        for attempt in range(LOCKED_RETRIES + 1):
            try:
                with signals_held():  # not the wait between attempts: Ctrl-C still ends that
                    return write(*args, **kwargs)
            except MlflowException as error:
                if not is_locked(error) or attempt == LOCKED_RETRIES:
                    raise
                wait_s = LOCKED_BACKOFF_S * 2**attempt
                log.warning("MLflow store locked during %s; trying again in %g s", write.__name__, wait_s)
                time.sleep(wait_s)

    return call


@contextmanager
def one_at_a_time(url: str):
    """While inside, no other process on this machine is inside for the same `url`. Two processes that
    open a new database at once would both create its tables and break each other's migrations (a
    parallel sweep's first jobs, two commands started together): they take turns, and the second finds
    the tables made. (Across machines: create them first, e.g. `mlflow db upgrade <url>`.)"""
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"normexp-store-{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


class Client(MlflowClient):
    """MlflowClient whose writes to the database retry while a SQLite store stays locked (artifact
    writes go to files, not to the database); the first in a process opens its store `one_at_a_time`."""

    def __init__(self, tracking_uri: str):
        if tracking_uri in _opened:
            return super().__init__(tracking_uri)
        with one_at_a_time(tracking_uri):
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


def optuna_storage(url: str) -> optuna.storages.RDBStorage:
    """The search's Optuna storage at `url`; a SQLite file in WAL mode, its writers waiting for each other."""
    with one_at_a_time(url):  # creates the tables, if new
        if url.startswith("sqlite:///"):
            use_wal(url)
            return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": OPTUNA_SQLITE_WAIT_S}})
        return optuna.storages.RDBStorage(url)
