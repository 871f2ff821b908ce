"""Scale-out end to end, with real servers (tests/servers.py): a joblib sweep on SQLite in which a job
fails; a parallel sweep and a 2-worker search at once on PostgreSQL, directly and through `mlflow server`;
a sweep submitted to a one-node SLURM cluster. Each lands in MLflow as one parent run with its children
and the end-of-sweep report, as a serial sweep does. And on PostgreSQL, a run whose dataset another
process inserted first."""

import math
import os
import subprocess
import sys
import threading
import uuid
from contextlib import closing
from pathlib import Path

import optuna
import psycopg2
import pytest
from mlflow.tracking import MlflowClient

from normexp import data
from normexp.stable_lr import study as studies
from normexp.tracking import inputs, sharing
from tests import forked, servers
from tests.conftest import NO_MODEL, compose

TINY_SWEEP = ["trainer.max_epochs=1", "probes.enabled=false", "trainer.progress_bar=false", NO_MODEL]
# Grid 0.1 and 0.01, one rate per worker: bracketed to a factor 10 by two 1-epoch trials.
TINY_SEARCH = ["search.workers=2", "search.epochs=1", "search.seeds=1", "search.lr_min=0.01", "search.lr_max=0.1",
               "search.resolution=10", "trainer.progress_bar=false", NO_MODEL]
RUN_NAMES = {"bn": "bn-adam-lr0.001-bs64-s0", "none": "none-adam-lr0.001-bs64-s0"}


def command(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", f"normexp.{module}", *args]


def finish(process: subprocess.Popen) -> tuple[str, str]:
    try:
        out, err = process.communicate(timeout=600)
    finally:
        process.kill()
    assert process.returncode == 0, err[-3000:]
    return out, err


def sweep_runs(client: MlflowClient, experiment: str) -> tuple:
    """(parent, children by run name) of the one sweep in `experiment`."""
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in runs if r is not parent)
    return parent, {r.info.run_name: r for r in runs if r is not parent}


def check_sweep(client: MlflowClient, experiment: str, stdout: str) -> None:
    """A finished sweep of norm=bn,none: one parent with the report, its two children FINISHED, one
    labelled summary line per job."""
    parent, children = sweep_runs(client, experiment)
    assert parent.info.status == "FINISHED" and sorted(children) == sorted(RUN_NAMES.values())
    assert all(c.info.status == "FINISHED" and "val/acc" in c.data.metrics for c in children.values())
    assert "report/report.md" in {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert "## Report" in stdout
    for name in RUN_NAMES.values():
        assert any(line.startswith("[job ") and f"] {name}: " in line for line in stdout.splitlines()), stdout


def check_search(client: MlflowClient, experiment: str, storage: str, stdout: str) -> None:
    """A finished 2-worker study of norm=bn (named after its experiment): every rate once, trained by
    labelled workers (with two short trials, the first worker up may train both), one MLflow run for it."""
    name = experiment
    decided = [t for t in optuna.load_study(study_name=name, storage=storage).trials if t.state in studies.DECIDED]
    assert len({round(math.log(t.params["lr"]), 9) for t in decided}) == len(decided) == 2
    assert stdout.count("[worker ") == 2 and all(t.user_attrs["worker"] for t in decided)
    parent, children = sweep_runs(client, experiment)
    assert parent.info.status == "FINISHED" and parent.data.tags["study"] == name
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children.values())
    assert parent.data.metrics["max_stable_lr"] == pytest.approx(0.01)


def test_joblib_sweep_reports_the_jobs_that_finished_when_one_fails(tmp_path, tracking_uri, experiment_name,
                                                                    mlflow_client):
    # Two jobs fail when they meet their data (a value out of its config domain would stop the sweep before any job).
    done = forked.run(command("train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "norm=bn,none",
                              "dataset.train_size=256,100000", *TINY_SWEEP, f"tracking.uri={tracking_uri}", f"tracking.experiment={experiment_name}",
                              f"hydra.sweep.dir={tmp_path}/sweep"),
                      cwd=tmp_path, capture_output=True, text=True, timeout=600,
                      env={k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"})  # the jobs' own policy
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("error: dataset.train_size=100000 is out of range")
    parent, children = sweep_runs(mlflow_client, experiment_name)
    assert parent.info.status == "FAILED" and "dataset.train_size=100000" in parent.data.tags["failed_job"]
    named = {norm: f"{name}-train_size256" for norm, name in RUN_NAMES.items()}  # the swept key in the name
    assert sorted(children) == sorted(named.values())
    assert all(c.info.status == "FINISHED" for c in children.values())
    assert {c.data.tags["threads"] for c in children.values()} == {str(max(1, len(os.sched_getaffinity(0)) // 2))}
    assert "report/report.md" in {a.path for a in mlflow_client.list_artifacts(parent.info.run_id, "report")}
    assert "## Report" in done.stdout and f"] {named['bn']}: " in done.stdout  # its verdict line
    assert "Joblib.Parallel(n_jobs=2" in done.stdout  # two at a time (one-epoch runs seldom overlap, so not timed)


@pytest.fixture(scope="module")
def postgres(postgres_url):
    """(MLflow's database, Optuna's database) on one PostgreSQL server."""
    return f"{postgres_url}/mlflow", f"{postgres_url}/optuna"


def run_sweep_and_search_at_once(tracking: str, storage: str, folder: Path, name: str) -> tuple[str, str]:
    """A 2-job joblib sweep (experiment name-sweep) and a 2-worker search (experiment and study name-search)
    at the same time; their stdouts."""
    # A database URI's artifacts go to a folder (else the project's mlruns/); a server stores them itself.
    common = [f"tracking.uri={tracking}"]
    if not tracking.startswith("http"):
        common.append(f"tracking.artifact_root={folder}/artifacts")
    sweep = forked.Popen(command("train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "norm=bn,none",
                                 *TINY_SWEEP, *common, f"tracking.experiment={name}-sweep", f"hydra.sweep.dir={folder}/sweep"),
                         cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    search = forked.Popen(command("search", "norm=bn", *TINY_SEARCH, *common, f"tracking.experiment={name}-search",
                                  f"search.study_name={name}-search", f"search.storage={storage}",
                                  f"hydra.run.dir={folder}/search"),
                          cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return finish(sweep)[0], finish(search)[0]


def test_parallel_sweep_and_search_workers_on_postgresql(postgres, tmp_path):
    mlflow_db, optuna_db = postgres
    sweep_out, search_out = run_sweep_and_search_at_once(mlflow_db, optuna_db, tmp_path, "direct")
    client = MlflowClient(mlflow_db)
    check_sweep(client, "direct-sweep", sweep_out)
    check_search(client, "direct-search", optuna_db, search_out)


def test_a_dataset_another_process_inserts_first_is_linked_to_the_run(postgres, tmp_path):
    """Two search workers log the same split at once: each looks for it, finds none, inserts it. Here the other
    process's insert is in the database, uncommitted, when this one looks: its insert waits on the key, then
    fails when the other commits; tried again, it finds the split."""
    client = sharing.Client(postgres[0])
    run_id = client.create_run(client.create_experiment("insert-race", artifact_location=tmp_path.as_uri())).info.run_id
    logged = inputs.datasets(data.load(compose("train").dataset, seed=0), "digits")
    first = logged[0].dataset
    with closing(psycopg2.connect(postgres[0].replace("postgresql+psycopg2", "postgresql"))) as other:
        other.cursor().execute(
            "INSERT INTO datasets (dataset_uuid, experiment_id, name, digest, dataset_source_type, dataset_source, "
            "dataset_schema, dataset_profile) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            (uuid.uuid4().hex, client.get_run(run_id).info.experiment_id, first.name, first.digest, first.source_type,
             first.source, first.schema, first.profile))
        threading.Timer(1.0, other.commit).start()  # while log_inputs waits on the key
        client.log_inputs(run_id, datasets=logged)
    assert sorted(d.dataset.digest for d in client.get_run(run_id).inputs.dataset_inputs) == sorted(
        d.dataset.digest for d in logged)


def test_parallel_sweep_and_search_workers_through_mlflow_server_on_postgresql(postgres, tmp_path):
    mlflow_db, optuna_db = postgres
    with servers.mlflow_server(mlflow_db, tmp_path / "server") as server:
        (tmp_path / "jobs").mkdir()
        sweep_out, search_out = run_sweep_and_search_at_once(server, optuna_db, tmp_path / "jobs", "server")
        client = MlflowClient(server)
        check_sweep(client, "server-sweep", sweep_out)
        check_search(client, "server-search", optuna_db, search_out)
    assert list((tmp_path / "server" / "artifacts").rglob("report.md"))  # uploaded through the server


def test_sweep_runs_as_slurm_jobs(slurm_env, tmp_path, tracking_uri, experiment_name, mlflow_client):
    done = forked.run(command("train", "-m", "hydra/launcher=submitit_slurm", "hydra.launcher.timeout_min=10",
                              "hydra.launcher.cpus_per_task=1", "norm=bn,none", *TINY_SWEEP,
                              f"tracking.uri={tracking_uri}", f"tracking.experiment={experiment_name}",
                              f"hydra.sweep.dir={tmp_path}/sweep"),
                      cwd=tmp_path, env=slurm_env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    # The jobs' own lines went to their SLURM logs (submitit's folder, named by SLURM job id).
    logs = "".join(p.read_text() for p in (tmp_path / "sweep" / ".submitit").glob("*/*_log.out"))
    check_sweep(mlflow_client, experiment_name, logs + done.stdout)
    assert f"[job 1/2] {RUN_NAMES['bn']}: converged" in logs
