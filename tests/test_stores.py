"""normexp.tracking.stores: real SQLite stores shared by processes: a new store opened by several at once, WAL mode,
a write that outlasts a lock held longer than MLflow's own 20 s wait, a Ctrl-C that waits for the write
it arrives in; where the tracking store is, and the check that refuses one that cannot be used."""

import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from normexp.errors import ConfigError
from normexp.tracking import stores
from tests.mounts import read_only_folder  # noqa: F401 (a fixture)

REPO = Path(__file__).resolve().parents[1]

OPEN_AND_WRITE = """
import sys
from omegaconf import OmegaConf
from normexp.tracking import lifecycle
client = lifecycle.connect(OmegaConf.create({"uri": sys.argv[1]}))  # as every command opens its store
experiment = client.create_experiment(sys.argv[2])
client.set_terminated(client.create_run(experiment).info.run_id)
"""


def test_a_new_store_opened_by_several_processes_at_once(tmp_path):
    mlflow_uri, optuna_uri = f"sqlite:///{tmp_path}/mlflow.db", f"sqlite:///{tmp_path}/optuna.db"
    opening = [subprocess.Popen([sys.executable, "-c", OPEN_AND_WRITE, mlflow_uri, f"e{i}"], stderr=subprocess.PIPE,
                                text=True) for i in range(3)]
    errors = [p.communicate(timeout=300)[1] for p in opening]
    assert [p.returncode for p in opening] == [0, 0, 0], errors
    client = stores.Client(mlflow_uri)
    assert len(client.search_runs([client.get_experiment_by_name(f"e{i}").experiment_id for i in range(3)])) == 3
    stores.optuna_storage(optuna_uri)
    for db in ("mlflow.db", "optuna.db"):
        with sqlite3.connect(tmp_path / db) as connection:
            assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def waits_for_a_lock(pid: int) -> bool:
    """Whether process `pid` is blocked on a file lock (flock or fcntl) now."""
    return any(line.split()[1] == "->" and f" {pid} " in line for line in Path("/proc/locks").read_text().splitlines())


def test_a_store_is_put_in_wal_mode_in_its_turn_not_while_another_process_creates_it(tmp_path):
    """Turning a file to WAL while another process holds its write lock (MLflow creating the tables) fails at
    once: SQLite does not wait for that lock. Here this test is the creator, in its turn (one_at_a_time)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with stores.one_at_a_time(uri), sqlite3.connect(tmp_path / "mlflow.db", isolation_level=None) as creator:
        creator.execute("BEGIN IMMEDIATE")  # the write lock
        opening = subprocess.Popen([sys.executable, "-c", OPEN_AND_WRITE, uri, "e"], stderr=subprocess.PIPE, text=True)
        while opening.poll() is None and not waits_for_a_lock(opening.pid):  # its turn, or its failure
            time.sleep(0.1)
        creator.execute("COMMIT")
    error = opening.communicate(timeout=300)[1]
    assert opening.returncode == 0, error[-3000:]
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


TAKE_TURN = """
import sys
from normexp.tracking import stores
with stores.one_at_a_time(sys.argv[1]):
    print("inside", flush=True)
"""


def test_a_turn_leaves_no_lock_file_and_the_process_waiting_on_it_takes_the_next(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with stores.one_at_a_time(uri):
        assert stores.lock_path(uri).exists()
        waiting = subprocess.Popen([sys.executable, "-c", TAKE_TURN, uri], stdout=subprocess.PIPE, text=True)
        while waiting.poll() is None and not waits_for_a_lock(waiting.pid):
            time.sleep(0.1)
        assert waiting.poll() is None  # on the file this turn removes as it ends
    assert waiting.communicate(timeout=300)[0] == "inside\n" and waiting.returncode == 0
    assert not stores.lock_path(uri).exists()


def test_a_write_outlasts_a_lock_held_longer_than_mlflow_waits(tmp_path, caplog):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    stores.use_wal(uri)
    client = stores.Client(uri)
    run_id = client.create_run(client.create_experiment("e")).info.run_id
    locked = threading.Event()

    def hold_the_write_lock():  # another process's long write, as a heavily loaded sweep can have
        with sqlite3.connect(tmp_path / "mlflow.db", isolation_level=None) as db:
            db.execute("BEGIN EXCLUSIVE")
            locked.set()
            time.sleep(21)  # MLflow's sessions wait 20 s, then fail with 'database is locked'
            db.execute("COMMIT")

    holder = threading.Thread(target=hold_the_write_lock)
    holder.start()
    locked.wait()
    with caplog.at_level(logging.WARNING, logger="normexp.tracking.stores"):
        client.set_tag(run_id, "written", "after the lock")
    holder.join()
    assert "MLflow store locked during set_tag" in caplog.text
    assert client.get_run(run_id).data.tags["written"] == "after the lock"


def test_a_ctrl_c_during_a_write_arrives_after_it_and_leaves_the_store_unlocked(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    stores.use_wal(uri)
    client = stores.Client(uri)
    run_id = client.create_run(client.create_experiment("e")).info.run_id
    locked, written = threading.Event(), threading.Event()

    def hold_the_write_lock_and_press_ctrl_c():  # the write waits on the lock while SIGINT comes
        with sqlite3.connect(tmp_path / "mlflow.db", isolation_level=None) as db:
            db.execute("BEGIN EXCLUSIVE")
            locked.set()
            time.sleep(0.5)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
            db.execute("COMMIT")

    # Python raises KeyboardInterrupt on SIGINT unless the process was started ignoring it (CI's background).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    holder = threading.Thread(target=hold_the_write_lock_and_press_ctrl_c)
    try:
        holder.start()
        locked.wait()
        with pytest.raises(KeyboardInterrupt):
            client.log_metric(run_id, "m", 1.0)
            written.set()  # never: the interrupt comes as the write returns
    finally:
        holder.join()
        signal.signal(signal.SIGINT, previous)
    assert not written.is_set()
    assert [m.value for m in client.get_metric_history(run_id, "m")] == [1.0]  # the write is whole
    start = time.monotonic()
    stores.Client(uri).set_tag(run_id, "next", "write")  # no transaction left open: no wait for the lock
    assert time.monotonic() - start < 5


def test_default_store_is_the_project_root_whatever_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    default = OmegaConf.create({"uri": None, "artifact_root": None, "experiment": "x"})
    assert stores.tracking_uri(default) == f"sqlite:///{REPO / 'mlflow.db'}"
    assert stores.artifact_root(default) == (REPO / "mlruns").as_uri()
    other = OmegaConf.create({"uri": f"sqlite:///{tmp_path}/a/b.db", "artifact_root": None})
    assert stores.artifact_root(other) == (tmp_path / "a" / "mlruns").as_uri()
    assert stores.artifact_root(OmegaConf.create({"uri": "http://127.0.0.1:5000", "artifact_root": None})) is None


def tracking_cfg(**values):
    return OmegaConf.create({"uri": None, "artifact_root": None, "experiment": "x", "heartbeat_s": 10, "lease_s": 60,
                             "server_timeout_s": 5} | values)


def test_check_refuses_an_unusable_store_within_seconds(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(ConfigError, match=f"tracking.uri=http://127.0.0.1:{port} does not answer"):
        stores.check(tracking_cfg(uri=f"http://127.0.0.1:{port}"))
    assert time.monotonic() - start < 10
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"cannot write to .*file/x \(Not a directory\)"):
        stores.check(tracking_cfg(uri=f"sqlite:///{tmp_path}/file/x/mlflow.db"))
    with pytest.raises(ConfigError, match=r"tracking.artifact_root=/proc/normexp: cannot write to /proc/normexp"):
        stores.check(tracking_cfg(uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_root="/proc/normexp"))
    stores.check(tracking_cfg(uri=f"sqlite:///{tmp_path}/new/folder/mlflow.db"))  # a new folder is made
    assert (tmp_path / "new" / "folder").is_dir() and not list((tmp_path / "new" / "folder").iterdir())


def test_a_server_that_accepts_but_never_answers_is_refused_after_its_timeout():
    with socket.socket() as silent:  # a real listening socket: connections are accepted, nothing is answered
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        start = time.monotonic()
        with pytest.raises(ConfigError, match=f"tracking.uri={uri} does not answer within 1 s \\(timed out\\); "
                                              "start the server"):
            stores.check(tracking_cfg(uri=uri, server_timeout_s=1))
        assert time.monotonic() - start < 5


def test_a_file_that_is_not_a_store_is_refused_in_one_line(tmp_path):
    (tmp_path / "notes.db").write_text("these are notes, not a database\n" * 100)
    with pytest.raises(ConfigError, match=rf"tracking.uri=sqlite:///{tmp_path}/notes.db: {tmp_path}/notes.db is not a "
                                          r"SQLite database \(file is not a database\); point tracking.uri at a new file"):
        stores.check(tracking_cfg(uri=f"sqlite:///{tmp_path}/notes.db"))
    with pytest.raises(ConfigError, match=rf"search.storage=sqlite:///{tmp_path}/notes.db: .* is not a SQLite database"):
        stores.check_optuna(f"sqlite:///{tmp_path}/notes.db")
    # Each store given as the other: a database, but another program's.
    stores.optuna_storage(f"sqlite:///{tmp_path}/optuna.db")
    with pytest.raises(ConfigError, match=r"optuna.db is a database of something else \(its tables: .*studies"):
        stores.check(tracking_cfg(uri=f"sqlite:///{tmp_path}/optuna.db"))
    stores.Client(f"sqlite:///{tmp_path}/mlflow.db").search_experiments()  # creates MLflow's tables
    with pytest.raises(ConfigError, match=r"search.storage=.*mlflow.db: .* is a database of something else"):
        stores.check_optuna(f"sqlite:///{tmp_path}/mlflow.db")
    stores.check(tracking_cfg(uri=f"sqlite:///{tmp_path}/mlflow.db"))  # each accepts its own
    stores.check_optuna(f"sqlite:///{tmp_path}/optuna.db")
    (tmp_path / "empty.db").write_bytes(b"")  # an empty file is an empty database: created on first use
    stores.check(tracking_cfg(uri=f"sqlite:///{tmp_path}/empty.db"))


def test_a_read_only_folder_is_refused_in_one_line(read_only_folder):
    for check, key in ((lambda uri: stores.check(tracking_cfg(uri=uri)), "tracking.uri"), (stores.check_optuna, "search.storage")):
        uri = f"sqlite:///{read_only_folder}/store.db"
        with pytest.raises(ConfigError, match=rf"{key}={uri}: cannot write to {read_only_folder} \(Read-only file system"
                                              r"\); choose a writable place"):
            check(uri)
