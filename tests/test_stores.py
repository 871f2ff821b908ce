"""normexp.tracking.stores: where the tracking store is, and the checks that refuse a store that cannot be used
(a server that does not answer, a file that is not a store, a folder that cannot be written)."""

import socket
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from normexp.errors import ConfigError
from normexp.tracking import sharing, stores
from tests.mounts import read_only_folder  # noqa: F401 (a fixture)

REPO = Path(__file__).resolve().parents[1]

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
    sharing.optuna_storage(f"sqlite:///{tmp_path}/optuna.db")
    with pytest.raises(ConfigError, match=r"optuna.db is a database of something else \(its tables: .*studies"):
        stores.check(tracking_cfg(uri=f"sqlite:///{tmp_path}/optuna.db"))
    sharing.Client(f"sqlite:///{tmp_path}/mlflow.db").search_experiments()  # creates MLflow's tables
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
