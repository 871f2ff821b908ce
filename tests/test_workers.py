"""normexp.stable_lr.workers: search workers sharing one study in a real SQLite storage: claims, leases, and a real
2-worker search in which one worker is killed mid-trial and another trains its rate again."""

import math
import os
import signal
import socket
import subprocess
import sys
import time

import optuna
from optuna.trial import TrialState

from normexp import search
from normexp.stable_lr import study as studies, workers
from tests import forked
from tests.conftest import NO_MODEL, compose_search


def test_the_second_claim_of_a_rate_gives_way_to_the_first(tmp_path):
    cfg = compose_search(f"search.storage=sqlite:///{tmp_path}/optuna.db", "search.study_name=s")
    first = workers.claim(studies.open_study(cfg), cfg, "grid", 0.1)
    assert first.params["lr"] == 0.1 and first.user_attrs["phase"] == "grid"
    assert first.user_attrs[workers.WORKER_ATTR] == f"{socket.gethostname()}:{os.getpid()}"
    assert workers.claim(studies.open_study(cfg), cfg, "grid", 0.1) is None  # another worker, the same rate
    trials = studies.open_study(cfg).get_trials()
    assert [t.state for t in trials] == [TrialState.RUNNING, TrialState.FAIL]
    assert trials[1].user_attrs["duplicate_of"] == first.number


def test_trials_whose_worker_is_gone_are_failed_and_their_rates_planned_again(tmp_path):
    cfg = compose_search(f"search.storage=sqlite:///{tmp_path}/optuna.db", "search.study_name=s",
                         "search.lr_min=0.01", "search.lr_max=1")  # grid 1, 0.1, 0.01
    study = studies.open_study(cfg)
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = workers.claim(study, cfg, "grid", 1.0)  # its process on this machine has ended
    gone.set_user_attr(workers.WORKER_ATTR, f"{socket.gethostname()}:{ended.stdout.strip()}")
    expired = workers.claim(study, cfg, "grid", 0.1)  # on another machine, its lease not renewed
    expired.set_user_attr(workers.WORKER_ATTR, "elsewhere:1")
    expired.set_user_attr(workers.LEASE_ATTR, time.time() - 1)
    workers.claim(study, cfg, "grid", 0.01)  # this process, its lease current
    assert workers.next_step(study, cfg)[:2] == (None, None)  # every grid rate is being trained
    assert sorted(workers.fail_lost(study, cfg.tracking.lease_s)) == [gone.number, expired.number]
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.FAIL, TrialState.RUNNING]
    assert workers.next_step(study, cfg)[:2] == ("grid", 1.0)  # the lost rates again, from the top


def test_a_worker_killed_mid_trial_loses_only_its_trial(tmp_path, tracking_uri, experiment_name, mlflow_client):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    # Grid 0.1 (unstable in one epoch) and 0.01 (stable), one per worker: bracketed to the factor 10.
    args = ["norm=bn", "search.workers=2", "search.epochs=1", "search.seeds=1", "search.lr_min=0.01",
            "search.lr_max=0.1", "search.resolution=10", f"search.storage={storage}", f"tracking.uri={tracking_uri}",
            f"tracking.experiment={experiment_name}", "trainer.progress_bar=false", NO_MODEL,
            f"hydra.run.dir={tmp_path}/out"]
    name = studies.study_name(compose_search(*args))
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # the workers' own thread policy
    search = forked.Popen([sys.executable, "-m", "normexp.search", *args], cwd=tmp_path, text=True, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        victim, deadline = None, time.monotonic() + 240
        while victim is None:
            assert search.poll() is None and time.monotonic() < deadline, "no trial started to kill"
            time.sleep(0.3)
            try:
                running = optuna.load_study(study_name=name, storage=storage).get_trials(states=(TrialState.RUNNING,))
            except KeyError:  # no study yet
                continue
            # The stable rate's trial trains a whole epoch; the unstable one may end in a few steps.
            victim = next((t for t in running if workers.WORKER_ATTR in t.user_attrs and t.params.get("lr", 1) < 0.05),
                          None)
            if victim is None:
                continue
            # Freeze the worker, then check that its trial is still running: a trial can end between our read
            # and the kill (CI saw one COMPLETE). If it ended, let the worker go on and look again.
            pid = int(victim.user_attrs[workers.WORKER_ATTR].rpartition(":")[2])
            os.kill(pid, signal.SIGSTOP)
            still = optuna.load_study(study_name=name, storage=storage).get_trials(states=(TrialState.RUNNING,))
            if victim.number not in {t.number for t in still}:
                os.kill(pid, signal.SIGCONT)
                victim = None
        os.kill(pid, signal.SIGKILL)
        out, err = search.communicate(timeout=300)
    finally:
        search.kill()
    assert search.returncode == 0, err[-3000:]
    trials = optuna.load_study(study_name=name, storage=storage).get_trials()
    decided = [t for t in trials if t.state in studies.DECIDED]
    assert next(t for t in trials if t.number == victim.number).state == TrialState.FAIL
    retried = [t for t in decided if math.isclose(t.params["lr"], victim.params["lr"])]
    assert len(retried) == 1 and retried[0].user_attrs[workers.WORKER_ATTR] != victim.user_attrs[workers.WORKER_ATTR]
    assert len({round(math.log(t.params["lr"]), 9) for t in decided}) == len(decided)  # no rate decided twice
    stable = [t.params["lr"] for t in decided if t.user_attrs["stable"]]
    unstable = [t.params["lr"] for t in decided if not t.user_attrs["stable"] and t.params["lr"] > max(stable)]
    assert min(unstable) / max(stable) <= 10  # bracketed all the same
    assert "lost its worker" in out and out.count("[worker ") == len(decided)  # a labelled line per trial
    # One study run for both workers; the killed trial's run (if it had begun) KILLED, none left RUNNING.
    runs = mlflow_client.search_runs([mlflow_client.get_experiment_by_name(experiment_name).experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.status == "FINISHED" and len(runs) - 1 >= len(decided)
    assert {r.data.tags["mlflow.parentRunId"] for r in runs if r is not parent} == {parent.info.run_id}
    assert all(r.info.status in ("FINISHED", "KILLED") for r in runs)
    cpus_each = str(max(1, len(os.sched_getaffinity(0)) // 2))  # two workers share the CPUs
    assert {r.data.tags["threads"] for r in runs if r.info.status == "FINISHED" and r is not parent} == {cpus_each}


def test_the_same_search_run_twice_at_once_shares_the_study_and_its_run(tmp_path, tracking_uri, experiment_name,
                                                                        mlflow_client):
    """As on two machines: one command creates the study's MLflow run, the other joins it; they train
    different rates."""
    storage = f"sqlite:///{tmp_path}/optuna.db"
    # Grid 1, 0.1, 0.01, then bisection to a factor 2: about five short trials.
    args = ["norm=bn", "search.epochs=1", "search.seeds=1", "search.lr_min=0.01", "search.lr_max=1",
            "search.resolution=2", f"search.storage={storage}", f"tracking.uri={tracking_uri}",
            f"tracking.experiment={experiment_name}", "trainer.progress_bar=false"]
    name = studies.study_name(compose_search(*args))
    searches = [forked.Popen([sys.executable, "-m", "normexp.search", *args, f"hydra.run.dir={tmp_path}/{i}"],
                             cwd=tmp_path, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                for i in range(2)]
    try:
        outputs = [process.communicate(timeout=300) for process in searches]
    finally:
        for process in searches:
            process.kill()
    assert [s.returncode for s in searches] == [0, 0], [err[-2000:] for _, err in outputs]
    decided = [t for t in optuna.load_study(study_name=name, storage=storage).trials if t.state in studies.DECIDED]
    assert len({round(math.log(t.params["lr"]), 9) for t in decided}) == len(decided)  # no rate twice
    runs = mlflow_client.search_runs([mlflow_client.get_experiment_by_name(experiment_name).experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]  # one study run, shared
    assert parent.info.status == "FINISHED" and len(runs) - 1 == len(decided)
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in runs if r is not parent)


def test_two_workers_never_claim_the_same_rate(tmp_path, tracking_uri, experiment_name):
    """Both workers start at once and plan from the same study: every trial, whatever its state, has
    its own rate (a claim is one write, and the workers of a machine plan one at a time)."""
    storage = f"sqlite:///{tmp_path}/optuna.db"
    # Grid 1 (unstable at once), 0.1, 0.01, then bisection to a factor 2: about five 1-epoch trials.
    cfg = compose_search("norm=bn", "search.workers=2", "search.epochs=1", "search.seeds=1", "search.lr_min=0.01",
                         "search.lr_max=1", "search.resolution=2", f"search.storage={storage}",
                         f"tracking.uri={tracking_uri}", f"tracking.experiment={experiment_name}",
                         "trainer.progress_bar=false")
    search.run(cfg)
    trials = optuna.load_study(study_name=studies.study_name(cfg), storage=storage).get_trials()
    rates = [round(math.log(t.params["lr"]), 9) for t in trials]
    assert len(set(rates)) == len(rates), [(t.number, t.state.name, t.params) for t in trials]
    assert all(t.state in studies.DECIDED for t in trials)
