"""Faults mid-run, for real: the artifact store's disk fills up (a small tmpfs), the artifact store
becomes read-only while a run trains (the tmpfs remounted), the tracking server stops answering (a
real `mlflow server`, stopped). Each command ends with one line naming the fault and the fix, no
traceback; each run ends FAILED with its error and its metrics where the store can still be written,
else the next command ends it KILLED: none is left RUNNING."""

import subprocess
import sys
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from normexp.tracking import lifecycle, sharing
from tests import forked, servers
from tests.mounts import remount_read_only, tmpfs

QUIET = ["probes.enabled=false", "trainer.progress_bar=false"]


def train(tmp_path: Path, *overrides: str) -> subprocess.Popen:
    return forked.Popen([sys.executable, "-m", "normexp.train", *QUIET, f"hydra.run.dir={tmp_path}/out",
                         *overrides], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def ended(process: subprocess.Popen, timeout_s: float = 300) -> tuple[int, str]:
    """(exit status, stderr); the stderr's last line is the one error line, and it has no traceback."""
    try:
        _, err = process.communicate(timeout=timeout_s)
    finally:
        process.kill()
    assert "Traceback" not in err, err[-3000:]
    return process.returncode, err.strip().splitlines()[-1]


def only_run(client: MlflowClient, experiment: str):
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return run


def wait_for_epoch(client: MlflowClient, experiment: str, process: subprocess.Popen, timeout_s: float = 240):
    """The run, once it has logged its first epoch's val/acc."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "no epoch logged"
        found = client.get_experiment_by_name(experiment)
        runs = client.search_runs([found.experiment_id]) if found else []
        if runs and "val/acc" in runs[0].data.metrics:
            return runs[0]
        time.sleep(0.2)


def test_a_full_artifact_disk_ends_the_run_failed_with_its_metrics_and_one_line(tmp_path):
    # 256 KB: the run's config.yaml fits, its first checkpoint (~700 KB) does not.
    with tmpfs(tmp_path / "artifacts", "256k") as artifacts:
        uri = f"sqlite:///{tmp_path}/mlflow.db"
        status, line = ended(train(tmp_path, f"tracking.uri={uri}", f"tracking.artifact_root={artifacts}",
                                   "tracking.experiment=full", "trainer.max_epochs=2"))
    assert status == 1
    assert line.startswith(f"error: no space left on the device of {artifacts}/checkpoints/") and line.endswith(
        "(No space left on device); free space there, or put the artifacts and checkpoints on another disk with "
        "tracking.artifact_root=<folder>")
    run = only_run(MlflowClient(uri), "full")
    assert run.info.status == "FAILED" and run.data.tags["error"].startswith("OSError: [Errno 28] No space left")
    assert {"train/loss", "val/acc"} <= set(run.data.metrics)  # the epoch it had trained
    # The traceback did not fit either; the status was written all the same.
    assert run.data.tags.get("error_txt", "").startswith("not written: OSError") or "error.txt" in {
        a.path for a in MlflowClient(uri).list_artifacts(run.info.run_id)}


def test_an_artifact_store_made_read_only_mid_run_ends_the_run_failed_and_one_line(tmp_path):
    uri, experiment = f"sqlite:///{tmp_path}/mlflow.db", "read-only"
    client = MlflowClient(uri)
    with tmpfs(tmp_path / "artifacts", "64m") as artifacts:
        process = train(tmp_path, f"tracking.uri={uri}", f"tracking.artifact_root={artifacts}",
                        f"tracking.experiment={experiment}", "trainer.max_epochs=300")
        wait_for_epoch(client, experiment, process)
        remount_read_only(artifacts)  # the next checkpoint cannot be written
        status, line = ended(process)
    assert status == 1
    assert line.startswith(f"error: cannot write {artifacts}/checkpoints/") and line.endswith(
        "(Read-only file system): the artifact store went away or became read-only; make it writable again, or "
        "choose another with tracking.artifact_root=<folder>")
    run = only_run(client, experiment)
    assert run.info.status == "FAILED" and "Read-only file system" in run.data.tags["error"]
    assert client.get_metric_history(run.info.run_id, "val/acc") and "outcome/epochs" not in run.data.metrics


def test_a_tracking_server_stopped_mid_run_ends_the_command_and_the_next_one_ends_the_run(tmp_path):
    backend, experiment = f"sqlite:///{tmp_path}/server.db", "server-stops"
    # The default server_timeout_s (5 s): a loaded CI machine's server took longer than 2 s to answer the
    # command's first request. A stopped server still fails the command in ~3 x 5 s (SERVER_RETRIES).
    lease = ["tracking.heartbeat_s=1", "tracking.lease_s=3"]
    with servers.mlflow_server(backend, tmp_path / "server") as url:
        client = MlflowClient(url)
        process = train(tmp_path, f"tracking.uri={url}", f"tracking.artifact_root={tmp_path}/artifacts",
                        f"tracking.experiment={experiment}", "trainer.max_epochs=300", *lease)
        run_id = wait_for_epoch(client, experiment, process).info.run_id
    start = time.monotonic()  # stopped
    status, line = ended(process, timeout_s=120)
    assert status == 1 and time.monotonic() - start < 60  # MLflow alone retries for minutes
    assert line.startswith(f"error: the tracking server {url} stopped answering (ConnectionError); the runs it could "
                           "not end stay RUNNING until the next normexp command on the store ends them KILLED")
    store = sharing.Client(backend)
    assert store.get_run(run_id).info.status == "RUNNING"  # nothing could be written
    time.sleep(3)  # tracking.lease_s: the lease, no longer renewed, runs out
    assert lifecycle.reap_expired(store) == [run_id]  # what the next command does first
    assert store.get_run(run_id).info.status == "KILLED" and "lease expired" in store.get_run(run_id).data.tags[
        "killed_reason"]
