"""normexp.tracking.sharing: real SQLite stores shared by processes: a new store opened by several at once, in
their turns and in WAL mode, with no lock file left behind; a write that outlasts a lock held longer than
MLflow's own 20 s wait, a Ctrl-C that waits for the write it arrives in."""

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from normexp.tracking import sharing

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
    client = sharing.Client(mlflow_uri)
    assert len(client.search_runs([client.get_experiment_by_name(f"e{i}").experiment_id for i in range(3)])) == 3
    sharing.optuna_storage(optuna_uri)
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
    with sharing.one_at_a_time(uri), sqlite3.connect(tmp_path / "mlflow.db", isolation_level=None) as creator:
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
from normexp.tracking import sharing
with sharing.one_at_a_time(sys.argv[1]):
    print("inside", flush=True)
"""


def test_a_turn_leaves_no_lock_file_and_the_process_waiting_on_it_takes_the_next(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with sharing.one_at_a_time(uri):
        assert sharing.lock_path(uri).exists()
        waiting = subprocess.Popen([sys.executable, "-c", TAKE_TURN, uri], stdout=subprocess.PIPE, text=True)
        while waiting.poll() is None and not waits_for_a_lock(waiting.pid):
            time.sleep(0.1)
        assert waiting.poll() is None  # on the file this turn removes as it ends
    assert waiting.communicate(timeout=300)[0] == "inside\n" and waiting.returncode == 0
    assert not sharing.lock_path(uri).exists()


def test_a_write_outlasts_a_lock_held_longer_than_mlflow_waits(tmp_path, caplog):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = sharing.Client(uri)  # in WAL mode
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
    with caplog.at_level(logging.WARNING, logger="normexp.tracking.sharing"):
        client.set_tag(run_id, "written", "after the lock")
    holder.join()
    assert "MLflow store locked during set_tag" in caplog.text
    assert client.get_run(run_id).data.tags["written"] == "after the lock"


def test_a_ctrl_c_during_a_write_arrives_after_it_and_leaves_the_store_unlocked(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = sharing.Client(uri)  # in WAL mode
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
    sharing.Client(uri).set_tag(run_id, "next", "write")  # no transaction left open: no wait for the lock
    assert time.monotonic() - start < 5
