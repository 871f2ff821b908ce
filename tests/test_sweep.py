"""normexp.tracking.sweep: Hydra multiruns of `python -m normexp.train` as MLflow parent and child runs, in the
session's temporary store; a failed job, SIGINT and SIGTERM, with Hydra's basic (serial) launcher and
with its joblib launcher (jobs in worker processes)."""

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from normexp.stable_lr import workers
from normexp.tracking import commands, progress, sweep
from tests import forked
from tests.conftest import NO_MODEL


def run_cli(*args, cwd):
    return forked.run([sys.executable, "-m", "normexp.train", *args], cwd=cwd, capture_output=True, text=True,
                      timeout=600)


def test_design_card_multirun_makes_one_parent_and_six_children(tmp_path, tracking_uri, mlflow_client, experiment_runs,
                                                                 experiment_name):
    done = run_cli("-m", "norm=bn,none", "optim.lr=0.001,0.01,0.1", "trainer.max_epochs=2", NO_MODEL,
                   f"tracking.uri={tracking_uri}", f"tracking.experiment={experiment_name}",
                   f"hydra.sweep.dir={tmp_path}/sweep", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = experiment_runs()
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 6
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert (tmp_path / "sweep" / sweep.PARENT_RUN_FILE).read_text() == parent.info.run_id
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert sorted(r.info.run_name for r in children) == sorted(
        f"{norm}-adam-lr{lr}-bs64-s0" for norm in ("bn", "none") for lr in ("0.001", "0.01", "0.1"))
    for child in children:
        assert child.info.status == "FINISHED"
        epochs = 1 if child.data.tags["diverged"] == "true" else 2  # none at lr 0.1 may blow up in epoch 1
        assert len(mlflow_client.get_metric_history(child.info.run_id, "val/acc")) == epochs
        assert child.data.params["optim.lr"] in ("0.001", "0.01", "0.1")
        assert child.data.tags["norm"] in ("bn", "none")
        assert [a.path for a in mlflow_client.list_artifacts(child.info.run_id) if a.path == "config.yaml"]
    assert not (tmp_path / "mlruns").exists()  # artifacts went beside the store, not into the cwd


def test_a_failing_sweep_job_marks_the_parent_failed_not_running(tmp_path, tracking_uri, experiment_runs,
                                                                  experiment_name):
    # A job that fails when it meets its data (a value out of its config domain would stop the sweep
    # before any job, test_cli).
    done = run_cli("-m", "dataset.train_size=256,100000", "trainer.max_epochs=1", NO_MODEL,
                   f"tracking.uri={tracking_uri}",
                   f"tracking.experiment={experiment_name}", f"hydra.sweep.dir={tmp_path}/sweep", cwd=tmp_path)
    assert done.returncode != 0 and "dataset.train_size=100000 is out of range" in done.stderr
    statuses = {r.info.run_name: r.info.status for r in experiment_runs()}
    assert "RUNNING" not in statuses.values()
    assert statuses["bn-adam-lr0.001-bs64-s0-train_size256"] == "FINISHED"  # the swept key in the name
    assert list(statuses.values()).count("FAILED") == 1  # the parent


def test_a_jobs_line_is_one_write_where_stdout_writes_through(monkeypatch):
    # Under PYTHONUNBUFFERED (many containers and CI set it; loky's workers inherit it) print() writes a line's
    # text and its newline apart: in a joblib sweep one job's `[sweep] 1/2 done` ran into the other's `[job 1/2]`.
    writes = []

    class Terminal(io.RawIOBase):
        def writable(self):
            return True

        def write(self, data):
            writes.append(bytes(data))
            return len(data)

    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(Terminal(), write_through=True))  # what -u makes of stdout
    progress.say("[job 1/2] bn-adam-lr0.001-bs64-s0: converged")
    assert writes == [b"[job 1/2] bn-adam-lr0.001-bs64-s0: converged\n"]


def start(module: str, *args: str, cwd) -> subprocess.Popen:
    # A process started in the background by a non-interactive shell ignores SIGINT, and so would
    # this child: restore_sigint, or Python never raises KeyboardInterrupt. Its own
    # session: a SIGINT to its process group is what a terminal's Ctrl-C sends (joblib's workers too).
    # PYTHONFAULTHANDLER: a SIGABRT prints every thread's stack (what `stop` shows of a process that hangs).
    return forked.Popen([sys.executable, "-m", module, *args], cwd=cwd, stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE, text=True, start_new_session=True,
                        env={**os.environ, "PYTHONFAULTHANDLER": "1"}, restore_sigint=True)


def wait_until(process, condition, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.3)


def stop(process, signum, within_s: float = 60) -> int:
    """Send `signum` (a negative one: to the process group, as a terminal does); the exit status."""
    start_s = time.monotonic()
    try:
        if signum < 0:
            os.killpg(process.pid, -signum)
        else:
            process.send_signal(signum)
        status = process.wait(timeout=within_s)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)
        stacks = process.communicate(timeout=30)[1].split("\nExtension modules:")[0]  # not the list after them
        pytest.fail(f"still running {within_s:g} s after signal {signum}; its stacks:\n{stacks[-8000:]}")
    finally:
        process.kill()
    assert time.monotonic() - start_s < within_s
    return status


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_sigint_or_sigterm_in_a_sweep_leaves_no_run_running(tmp_path, tracking_uri, experiment_runs, experiment_name,
                                                            signum):
    process = start("normexp.train", "-m", "norm=bn,none", "trainer.max_epochs=500", f"tracking.uri={tracking_uri}",
                    f"tracking.experiment={experiment_name}", f"hydra.sweep.dir={tmp_path}/sweep", cwd=tmp_path)
    wait_until(process, lambda: len(experiment_runs()) == 2)  # the parent and the first job's run: training began
    time.sleep(1)
    assert stop(process, signum) != 0
    statuses = sorted(r.info.status for r in experiment_runs())
    assert statuses == ["KILLED", "KILLED"]  # the parent and the interrupted job; the second never started


def test_a_joblib_sweep_names_its_failed_job_and_ends_killed_on_sigterm(tmp_path, tracking_uri, mlflow_client,
                                                                       experiment_runs, experiment_name):
    # Two jobs in two worker processes: one fails inside its run (no TPU here), the other trains until
    # SIGTERM reaches the launching process only (as from `kill` or a scheduler).
    process = start("normexp.train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                    "trainer.accelerator=cpu,tpu", "trainer.max_epochs=500", f"tracking.uri={tracking_uri}",
                    f"tracking.experiment={experiment_name}", f"hydra.sweep.dir={tmp_path}/sweep", cwd=tmp_path)

    def ready():
        runs = {r.data.params.get("trainer.accelerator"): r for r in experiment_runs()}
        return (runs.get("tpu") is not None and runs["tpu"].info.status == "FAILED" and runs.get("cpu") is not None
                and mlflow_client.get_metric_history(runs["cpu"].info.run_id, "val/acc")
                and "failed_job" in runs[None].data.tags)

    wait_until(process, ready)
    # Within the grace period: the workers end their runs themselves (the idle one, whose job failed, ignores
    # the signal; had it died of it, joblib would SIGKILL the other mid-ending and the parent wait it out).
    assert stop(process, signal.SIGTERM, within_s=commands.WORKERS_GRACE_S) == 128 + signal.SIGTERM
    runs = {r.data.params.get("trainer.accelerator"): r for r in experiment_runs()}
    assert runs["tpu"].data.tags["error"].startswith("ModuleNotFoundError")  # the failed job's run: FAILED, recorded
    assert runs["cpu"].info.status == "KILLED"
    parent = runs[None]
    assert parent.info.status == "KILLED" and parent.data.tags["failed_job"].startswith("trainer.accelerator=tpu")


def test_ctrl_c_in_a_joblib_search_sweep_fails_the_trials_and_kills_the_runs(tmp_path, tracking_uri, mlflow_client,
                                                                            experiment_runs, experiment_name):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    process = start("normexp.search", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "norm=bn,none",
                    "search.epochs=500", "search.seeds=1", "search.lr_max=0.1", "search.lr_min=0.01",
                    "trainer.progress_bar=false", f"search.storage={storage}",
                    f"tracking.uri={tracking_uri}", f"tracking.experiment={experiment_name}",
                    f"hydra.sweep.dir={tmp_path}/sweep", cwd=tmp_path)
    # The first trial of each study (lr 0.1) trains for 500 epochs: interrupted in both workers.
    wait_until(process, lambda: sum(r.info.status == "RUNNING" and "trial" in r.info.run_name
                                    for r in experiment_runs()) == 2)
    time.sleep(1)
    assert stop(process, -signal.SIGINT) != 0
    runs = experiment_runs()
    assert "RUNNING" not in {r.info.status for r in runs}
    assert sorted(r.info.status for r in runs if "trial" not in r.info.run_name) == ["KILLED"] * 3  # sweep, 2 studies
    for summary in optuna.get_all_study_summaries(storage):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        # Each worker tells its trial FAIL on the way out, from its claim on; an interrupt landing inside
        # Optuna's ask (the trial's row written, the trial not yet returned) leaves a trial whose worker is
        # gone, and the next search command fails it first thing (workers.fail_lost), before it plans:
        # either way no rate is left claimed.
        workers.fail_lost(study, lease_s=60)
        assert [t.state.name for t in study.trials] == ["FAIL"]


def children(pid: int) -> dict[int, str]:
    """pid -> command line of each process whose parent is `pid`."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rpartition(")")[2].split()[1]) == pid:
                found[int(stat.parent.name)] = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue  # it ended meanwhile
    return found


# A terminal's Ctrl-C (SIGINT to every process of the command), or `kill` of the search process alone.
@pytest.mark.parametrize("signum, line", [(-signal.SIGINT, "interrupted: its runs ended KILLED"), (signal.SIGTERM, None)])
def test_a_signal_while_the_workers_forkserver_imports_ends_the_search_and_no_worker_trains(
        tmp_path, tracking_uri, experiment_runs, experiment_name, signum, line):
    # The workers' forkserver imports the training stack (~3 s) before it ignores SIGINT itself. A Ctrl-C then
    # ended it with a KeyboardInterrupt traceback under the command's line; a SIGTERM to the search alone left it
    # to fork the worker the search had asked for, which trained after the search had ended
    # (stable_lr/forkserver_sigint.py, workers._worker_process).
    process = start("normexp.search", "norm=bn", "search.workers=2", "search.epochs=1", "search.seeds=1",
                    "search.lr_min=0.01", "search.lr_max=0.1", "search.resolution=10", "trainer.progress_bar=false",
                    NO_MODEL, f"search.storage=sqlite:///{tmp_path}/optuna.db", f"tracking.uri={tracking_uri}",
                    f"tracking.experiment={experiment_name}", f"hydra.run.dir={tmp_path}/out", cwd=tmp_path)

    def forkserver() -> int | None:
        return next((pid for pid, command in children(process.pid).items() if "multiprocessing.forkserver" in command),
                    None)

    wait_until(process, lambda: forkserver() is not None)
    assert not any(children(pid) for pid in children(process.pid))  # no worker yet: the forkserver still imports
    assert stop(process, signum) == 128 + abs(signum)
    # Read to its end, which the forkserver and any worker it forked hold open too.
    assert process.stderr.read().strip().splitlines() == ([line] if line else [])
    assert [r.info.status for r in experiment_runs()] == ["KILLED"]  # the study's run; no trial began


def test_the_search_callback_works_in_a_single_run_too(tmp_path, tracking_uri, experiment_name):
    # Hydra calls a single run's on_job_end as well; the search's sweep callback must not fail there.
    done = forked.run(
        [sys.executable, "-m", "normexp.search", "norm=bn", "search.epochs=1", "search.seeds=1", "search.lr_min=0.01",
         "search.lr_max=0.1", "search.resolution=10", f"search.storage=sqlite:///{tmp_path}/optuna.db",
         f"tracking.uri={tracking_uri}", f"tracking.experiment={experiment_name}", f"hydra.run.dir={tmp_path}/out"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Warning" not in done.stderr and "Traceback" not in done.stderr
    assert "max stable lr" in done.stdout
