import signal
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from normexp import tracking

REPO = Path(__file__).resolve().parents[1]


def test_default_store_is_the_project_root_whatever_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    default = OmegaConf.create({"uri": None, "artifact_root": None, "experiment": "x"})
    assert tracking.tracking_uri(default) == f"sqlite:///{REPO / 'mlflow.db'}"
    assert tracking.artifact_root(default) == (REPO / "mlruns").as_uri()
    other = OmegaConf.create({"uri": f"sqlite:///{tmp_path}/a/b.db", "artifact_root": None})
    assert tracking.artifact_root(other) == (tmp_path / "a" / "mlruns").as_uri()
    assert tracking.artifact_root(OmegaConf.create({"uri": "http://127.0.0.1:5000", "artifact_root": None})) is None


def test_flat_params_use_dotted_keys():
    cfg = OmegaConf.create({"optim": {"lr": 0.01, "betas": [0.9, 0.99]}, "seed": 3})
    assert tracking.flat_params(cfg) == {"optim.lr": "0.01", "optim.betas": "[0.9, 0.99]", "seed": "3"}


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
    assert (tmp_path / "sweep" / tracking.PARENT_RUN_FILE).read_text() == parent.info.run_id
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


def test_bad_value_is_one_line_nonzero_exit_and_no_run_left_running(tmp_path, tracking_uri, experiment_runs,
                                                                     experiment_name):
    done = run_cli("norm=gn", "norm.num_groups=3", f"tracking.uri={tracking_uri}",
                   f"tracking.experiment={experiment_name}", cwd=tmp_path)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1] == (
        "error: norm.num_groups=3 does not divide the layer width(s) [256, 128, 64, 32]; choose one of [1, 2, 4, 8, 16, 32]")
    assert experiment_runs() == []


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
    sweep = subprocess.Popen(
        [sys.executable, "-m", "normexp.train", "-m", "norm=bn,none", "trainer.max_epochs=500",
         f"tracking.uri={tracking_uri}", f"tracking.experiment={experiment_name}",
         f"hydra.sweep.dir={tmp_path}/sweep"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while len(experiment_runs()) < 2:  # the parent and the first job's run: training has begun
            assert sweep.poll() is None and time.monotonic() < deadline
            time.sleep(0.5)
        time.sleep(2)
        sweep.send_signal(signal.SIGINT)
        assert sweep.wait(timeout=120) != 0
    finally:
        sweep.kill()
    statuses = sorted(r.info.status for r in experiment_runs())
    assert statuses == ["KILLED", "KILLED"]  # the parent and the interrupted job; the second never started
