"""normexp.sweep: Hydra multiruns of `python -m normexp.train` as MLflow parent and child runs, in the
session's temporary store; a failed job, Ctrl-C."""

import signal
import subprocess
import sys
import time

from normexp import sweep


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "normexp.train", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def test_design_card_multirun_makes_one_parent_and_six_children(tmp_path, tracking_uri, mlflow_client, experiment_runs,
                                                                 experiment_name):
    done = run_cli("-m", "norm=bn,none", "optim.lr=0.001,0.01,0.1", "trainer.max_epochs=2",
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
    done = run_cli("-m", "norm=bn,in", "trainer.max_epochs=1", f"tracking.uri={tracking_uri}",
                   f"tracking.experiment={experiment_name}", f"hydra.sweep.dir={tmp_path}/sweep", cwd=tmp_path)
    assert done.returncode != 0 and "norm=in (InstanceNorm) needs spatial dims" in done.stderr
    statuses = {r.info.run_name: r.info.status for r in experiment_runs()}
    assert "RUNNING" not in statuses.values()
    assert statuses["bn-adam-lr0.001-bs64-s0"] == "FINISHED"
    assert list(statuses.values()).count("FAILED") == 1  # the parent


def test_ctrl_c_in_a_sweep_leaves_no_run_running(tmp_path, tracking_uri, experiment_runs, experiment_name):
    # A process started in the background by a non-interactive shell ignores SIGINT, and so would
    # this child: restore the default handler, or Python never raises KeyboardInterrupt.
    process = subprocess.Popen(
        [sys.executable, "-m", "normexp.train", "-m", "norm=bn,none", "trainer.max_epochs=500",
         f"tracking.uri={tracking_uri}", f"tracking.experiment={experiment_name}",
         f"hydra.sweep.dir={tmp_path}/sweep"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while len(experiment_runs()) < 2:  # the parent and the first job's run: training has begun
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.5)
        time.sleep(2)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=120) != 0
    finally:
        process.kill()
    statuses = sorted(r.info.status for r in experiment_runs())
    assert statuses == ["KILLED", "KILLED"]  # the parent and the interrupted job; the second never started


def test_the_search_callback_works_in_a_single_run_too(tmp_path, tracking_uri, experiment_name):
    # Hydra calls a single run's on_job_end as well; the search's sweep callback must not fail there.
    done = subprocess.run(
        [sys.executable, "-m", "normexp.search", "norm=bn", "search.epochs=1", "search.seeds=1", "search.lr_min=0.01",
         "search.lr_max=0.1", "search.resolution=10", f"search.storage=sqlite:///{tmp_path}/optuna.db",
         f"tracking.uri={tracking_uri}", f"tracking.experiment={experiment_name}", f"hydra.run.dir={tmp_path}/out"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Warning" not in done.stderr and "Traceback" not in done.stderr
    assert "max stable lr" in done.stdout
