"""normexp.tracking.commands: bad input on the command line of both entry points is one line `error: ...`, a non-zero
exit, nothing recorded; Hydra's own refusals included. The commands run in this process (Hydra's real
command line, from sys.argv) unless the test is about the process's real stderr."""

import gc
import socket
import subprocess
import sys
import time

import pytest

from normexp import search, train
from normexp.tracking import commands
from tests import forked
from tests.conftest import CONF_DIR, refusal


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("overrides, expected", [
    # Hydra's refusals: an unknown option of a group, a misspelt preset, a wrong type, an unknown key
    (["norm=bm"], "error: unknown norm 'bm'; expected one of bn, bn_scratch, gn, in, ln, ln_scratch, none"),
    (["model=mpl"], "error: unknown model 'mpl'; expected one of cnn, cnn_modern, mlp, mlp_deep"),
    (["dataset=minst"], "error: unknown dataset 'minst'; expected one of cifar10, digits, fashion_mnist, mnist"),
    (["optim=adamm"], "error: unknown optim 'adamm'; expected one of adam, adamw, sgd"),
    (["experiment=convergance"], "error: unknown experiment 'convergance'; expected one of batch_size"),
    (["optim.lr=abc"], "error: optim.lr=abc is refused: optim.lr is typed float"),
    (["optim.lrr=0.1"], "error: unknown key optim.lrr; optim (AdamConfig) has: name, lr, weight_decay, betas"),
    (["norm=["], "error: cannot parse the override 'norm=['"),
    # ours
    (["optim.lr=-1"], "error: optim.lr=-1.0 must be a finite number > 0; e.g. optim.lr=0.001"),
    (["dataset.batch_size=1"], "error: dataset.batch_size=1 with norm=bn: BatchNorm cannot train on a batch of one"),
    (["norm=gn", "norm.num_groups=3"], "error: norm.num_groups=3 does not divide the layer width(s) [256, 128, 64, 32]"),
    (["norm=in"], "error: norm=in (InstanceNorm) needs spatial dims"),
    (["dataset.fraction=1.5"], "error: dataset.fraction=1.5 must be a finite number in (0, 1]"),
    (["dataset.val_fraction=0"], "error: dataset.val_fraction=0.0 must be a finite number in (0, 1)"),
    (["dataset.train_size=100000"], "error: dataset.train_size=100000 is out of range"),
    (["trainer.max_epochs=0"], "error: trainer.max_epochs=0 must be an integer >= 1"),
    (["dataset=mnist", "dataset.root=/nonexistent"], "error: dataset.root=/nonexistent does not hold the mnist IDX files"),
    (["tracking.uri=sqlite:////proc/normexp/mlflow.db"],
     "error: tracking.uri=sqlite:////proc/normexp/mlflow.db: cannot write to /proc/normexp"),
    (["tracking.heartbeat_s=60", "tracking.lease_s=10"],
     "error: tracking.heartbeat_s=60, tracking.lease_s=10: need 0 < heartbeat_s < lease_s"),
])
def test_train_refuses_bad_input_in_one_line(monkeypatch, tmp_path, overrides, expected):
    assert refusal(train.main, monkeypatch, tmp_path, *overrides).startswith(expected)


@pytest.mark.parametrize("overrides, expected", [
    (["search.lr_min=10", "search.lr_max=1"], "error: search.lr_min=10, search.lr_max=1: need 0 < lr_min < lr_max"),
    (["trainer.resume=true"], "error: trainer.resume=true is for normexp.train"),
    (["search.epochs=abc"], "error: search.epochs=abc is refused: search.epochs is typed int"),
    (["norm=bm"], "error: unknown norm 'bm'"),
])
def test_search_refuses_bad_input_in_one_line(monkeypatch, tmp_path, overrides, expected):
    assert refusal(search.main, monkeypatch, tmp_path, *overrides).startswith(expected)


def test_a_multirun_with_one_bad_job_is_refused_before_its_parent_run_exists(monkeypatch, tmp_path):
    message = refusal(train.main, monkeypatch, tmp_path, "norm=bn,bm", "trainer.max_epochs=1", flags=("--multirun",))
    assert message.startswith("error: unknown norm 'bm'")
    assert not list(tmp_path.glob("sweep/**/mlflow_parent_run_id"))


def test_an_unreachable_tracking_server_is_refused_within_seconds(monkeypatch, tmp_path):
    start = time.monotonic()
    uri = f"http://127.0.0.1:{closed_port()}"
    assert refusal(train.main, monkeypatch, tmp_path, f"tracking.uri={uri}").startswith(
        f"error: tracking.uri={uri} does not answer")
    assert time.monotonic() - start < 15  # MLflow alone retries for minutes


def test_resume_without_a_killed_run_is_refused(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["normexp", f"--config-path={CONF_DIR}", f"tracking.uri=sqlite:///{tmp_path}/m.db",
                                      f"hydra.run.dir={tmp_path}/out", "trainer.resume=true"])
    with pytest.raises(SystemExit, match="error: trainer.resume=true: no KILLED run with this config"):
        train.main()


# A fresh interpreter, and forked as most tests' commands are (tests/forked.py): the same exit, the same stderr.
@pytest.mark.parametrize("run", [subprocess.run, forked.run], ids=["fresh", "forked"])
def test_the_real_stderr_is_the_one_line_and_no_traceback(tmp_path, run):
    done = run([sys.executable, "-m", "normexp.train", "experiment=convergance",
                f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"], cwd=tmp_path, capture_output=True, text=True,
               timeout=300)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: unknown experiment 'convergance'; expected one of " + ", ".join(
            sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")))]
    assert not (tmp_path / "mlflow.db").exists()


def test_the_imports_are_frozen_once_so_that_a_finished_runs_cycles_stay_collectable():
    commands.freeze_imports()  # the first call in this process was conftest's, after the test modules' imports
    frozen = gc.get_freeze_count()
    assert frozen > 100_000  # torch's, Lightning's, MLflow's and Hydra's objects
    cycle = {}
    cycle["self"] = cycle  # garbage only the collector frees, as a finished Trainer's
    commands.freeze_imports()
    assert gc.get_freeze_count() == frozen
