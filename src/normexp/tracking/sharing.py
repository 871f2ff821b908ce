"""How processes on one machine share a store: each opens it in its turn, in WAL mode, and its writes are
tried again while the store is locked.

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
import os
import signal
import sqlite3
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import optuna
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

# Library noise kept out of normal output: Optuna's INFO line for each new study and trial.
optuna.logging.set_verbosity(optuna.logging.WARNING)

LOCKED_RETRIES = 5          # attempts after the first, each after MLflow's own 20 s wait
LOCKED_BACKOFF_S = 1.0      # doubled after each attempt: 1, 2, 4, 8, 16 s
OPTUNA_SQLITE_WAIT_S = 60   # how long an Optuna write waits for a busy SQLite file
log = logging.getLogger(__name__)
# The tracking URIs whose store this process has opened. Process state: a store is opened (its tables
# made, WAL set) once per process, whichever code asks first.
_opened: set[str] = set()


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
