import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from normexp import train
from normexp.tracking import lifecycle
from tests import forked


def test_flat_params_use_dotted_keys():
    cfg = OmegaConf.create({"optim": {"lr": 0.01, "betas": [0.9, 0.99]}, "seed": 3})
    assert lifecycle.flat_params(cfg) == {"optim.lr": "0.01", "optim.betas": "[0.9, 0.99]", "seed": "3"}


def new_run(client: MlflowClient, experiment_name: str) -> str:
    experiment_id = client.create_experiment(experiment_name)
    return client.create_run(experiment_id).info.run_id


def test_ending_records_an_exception_and_ends_the_run_failed(mlflow_client, experiment_name, tmp_path):
    run_id = new_run(mlflow_client, experiment_name)
    with pytest.raises(ValueError):
        with lifecycle.ending(mlflow_client, run_id):
            raise ValueError("optim.lr=-1 is not a rate")
    run = mlflow_client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "ValueError: optim.lr=-1 is not a rate"
    traceback = Path(mlflow_client.download_artifacts(run_id, lifecycle.ERROR_ARTIFACT, str(tmp_path))).read_text()
    assert traceback.startswith("Traceback") and 'raise ValueError("optim.lr=-1 is not a rate")' in traceback


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_ending_marks_an_interrupted_run_killed(mlflow_client, experiment_name, interrupt):
    run_id = new_run(mlflow_client, experiment_name)
    with pytest.raises(interrupt):
        with lifecycle.ending(mlflow_client, run_id):
            raise interrupt()
    run = mlflow_client.get_run(run_id)
    assert run.info.status == "KILLED" and "error" not in run.data.tags


class RecordStatus(pl.Callback):
    """The run's status in the store after `fit` has returned (and Lightning finalized its logger)."""

    def on_test_start(self, trainer, pl_module):
        self.after_fit = trainer.logger.experiment.get_run(trainer.logger.run_id).info.status

    def on_test_end(self, trainer, pl_module):
        self.after_test = trainer.logger.experiment.get_run(trainer.logger.run_id).info.status


def test_a_run_is_running_until_its_outcome_is_written(compose_cfg, mlflow_client):
    record = RecordStatus()
    outcome = train.run(compose_cfg("trainer.max_epochs=1"), callbacks=[record])
    assert record.after_fit == "RUNNING" and record.after_test == "RUNNING"
    run = mlflow_client.get_run(outcome.run_id)
    assert run.info.status == "FINISHED"
    assert {"test/acc", "outcome/final_val_acc"} <= set(run.data.metrics) and "converged" in run.data.tags


class Boom(pl.Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        raise RuntimeError("boom in epoch 1")


def test_an_exception_in_training_ends_the_run_failed(compose_cfg, experiment_runs):
    with pytest.raises(RuntimeError, match="boom"):
        train.run(compose_cfg("trainer.max_epochs=1"), callbacks=[Boom()])
    (run,) = experiment_runs()
    assert run.info.status == "FAILED" and run.data.tags["error"] == "RuntimeError: boom in epoch 1"


def test_a_new_experiment_is_marked_model_training_and_carries_its_description(tracking_uri, experiment_name):
    cfg = OmegaConf.create({"uri": tracking_uri, "artifact_root": None, "experiment": experiment_name,
                            "description": "How much faster does BN converge?"})
    client, experiment_id = lifecycle.client_and_experiment(cfg)
    tags = client.get_experiment(experiment_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    assert tags["mlflow.note.content"] == "How much faster does BN converge?"


def test_a_live_run_renews_its_lease_and_is_never_reaped(compose_cfg, mlflow_client, tmp_path):
    cfg = compose_cfg("tracking.heartbeat_s=0.1", "tracking.lease_s=0.6")
    client, run_id = lifecycle.start_sweep_run(cfg.tracking, tmp_path, "")
    time.sleep(1.5)  # more than twice its lease: only the renewals keep it
    assert lifecycle.reap_expired(client) == [] and mlflow_client.get_run(run_id).info.status == "RUNNING"
    assert float(mlflow_client.get_run(run_id).data.tags[lifecycle.LEASE_TAG]) > time.time()
    lifecycle.end_run(client, run_id, "FINISHED")
    time.sleep(1)  # the lease has run out, but the run has ended
    assert lifecycle.reap_expired(client) == [] and mlflow_client.get_run(run_id).info.status == "FINISHED"


def test_a_sigkilled_training_run_is_ended_killed_by_the_next_command(compose_cfg, tmp_path, tracking_uri,
                                                                     experiment_name, mlflow_client, experiment_runs):
    process = forked.Popen(
        [sys.executable, "-m", "normexp.train", "trainer.max_epochs=500", "tracking.heartbeat_s=0.5",
         "tracking.lease_s=3", f"tracking.uri={tracking_uri}", f"tracking.experiment={experiment_name}",
         f"hydra.run.dir={tmp_path}/out"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (runs := experiment_runs()) or not mlflow_client.get_metric_history(runs[0].info.run_id, "val/acc"):
            assert process.poll() is None, process.stderr.read()[-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        process.kill()  # SIGKILL: no handler runs, the run is left RUNNING
        process.wait()
    (killed,) = experiment_runs()
    assert killed.info.status == "RUNNING"
    assert lifecycle.reap_expired(mlflow_client) == []  # its lease is still valid: it could be a live run
    time.sleep(3)
    outcome = train.run(compose_cfg("trainer.max_epochs=1"))  # the next command on the store
    killed = mlflow_client.get_run(killed.info.run_id)
    assert killed.info.status == "KILLED" and killed.data.tags["killed_reason"].startswith("lease expired at ")
    assert mlflow_client.get_run(outcome.run_id).info.status == "FINISHED"
