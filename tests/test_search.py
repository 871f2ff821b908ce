"""normexp.search: real (tiny) Optuna studies on digits in a temporary SQLite storage, tracked in the
session's temporary MLflow store."""

import csv
import io
import json
import math
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from normexp import search
from normexp.errors import ConfigError
from normexp.stable_lr import bracket, study as studies
from tests import forked
from tests.conftest import NO_MODEL, compose_search, refusal

VENV_BIN = Path(sys.executable).parent
# One epoch per run, one seed, a factor-2 bracket: a handful of short trials.
TINY = ["search.epochs=1", "search.seeds=1", "search.resolution=2", "trainer.progress_bar=false", NO_MODEL]


def overrides(tracking_uri: str, experiment: str, storage: str, *extra: str) -> list[str]:
    return [f"tracking.uri={tracking_uri}", f"tracking.experiment={experiment}", f"search.storage={storage}",
            *TINY, *extra]


def runs_of(client: MlflowClient, experiment: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def decided(study: optuna.Study) -> list:
    return study.get_trials(states=studies.DECIDED)


@pytest.fixture(scope="module")
def bn_study(tracking_dir, tmp_path_factory):
    """One uninterrupted study on bn, shared by the tests that read it."""
    folder = tmp_path_factory.mktemp("optuna")
    storage = f"sqlite:///{folder}/optuna.db"
    # An experiment of its own: a parallel worker that runs this module's tests in two stretches (worksteal)
    # builds the fixture twice, in the same session store.
    uri, experiment = f"sqlite:///{tracking_dir}/mlflow.db", f"search-bn-{folder.name}"
    # Grid 0.1, 0.01, then bisection to a factor 4; two seeds, so a stable rate is trained twice.
    cfg = compose_search(*overrides(uri, experiment, storage, "norm=bn", "search.seeds=2", "search.lr_min=0.01",
                                    "search.lr_max=0.1", "search.resolution=4"))
    summary = search.run(cfg)
    study = optuna.load_study(study_name=studies.study_name(cfg), storage=storage)
    return summary, study, cfg, MlflowClient(uri), experiment


def test_bn_study_brackets_the_boundary_consistently_with_its_trials(bn_study):
    summary, study, cfg, _, _ = bn_study
    assert study.study_name == "stable-lr/digits/mlp/bn/adam-bs64"
    trials = decided(study)
    stable = [t.params["lr"] for t in trials if t.user_attrs["stable"]]
    unstable = [t.params["lr"] for t in trials if not t.user_attrs["stable"]]
    assert stable and unstable
    top, low = study.user_attrs["max_stable_lr"], study.user_attrs["min_unstable_lr"]
    assert top == max(stable) == summary["max_stable_lr"]
    assert low == min(lr for lr in unstable if lr > top) == summary["min_unstable_lr"]
    assert low / top <= cfg.search.resolution
    assert study.user_attrs["non_monotone"] == any(lr <= top for lr in unstable)
    assert "does not diverge" in study.user_attrs["definition"] and "0.8" in study.user_attrs["definition"]
    # The sampler's view: objective log10(lr) when stable, UNSTABLE otherwise; the best trial is the top.
    for t in trials:
        assert t.value == (math.log10(t.params["lr"]) if t.user_attrs["stable"] else studies.UNSTABLE)
        assert t.user_attrs["lr"] == t.params["lr"]  # the rate itself, beside the objective, its log
    assert study.best_trial.params["lr"] == top
    assert study.metric_names == ["log10(lr) if stable, else -10"]  # named in optuna-dashboard
    # Every seed must converge; a failing seed ends the trial.
    for t in trials:
        verdicts = t.user_attrs["seed_verdicts"]
        assert t.user_attrs["stable"] == (verdicts == ["converged", "converged"])  # search.seeds=2
        assert all(v == "converged" for v in verdicts[:-1]) and len(verdicts) == t.user_attrs["seeds_run"]
    assert len({round(math.log(t.params["lr"]), 9) for t in trials}) == len(trials)  # no rate tried twice
    assert summary["epochs_spent"] == sum(t.user_attrs["epochs"] for t in trials)


def test_study_is_a_parent_run_with_one_child_per_seed_run(bn_study):
    summary, study, _, client, experiment = bn_study
    runs = runs_of(client, experiment)
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.run_id == study.user_attrs["mlflow_run_id"] and parent.info.status == "FINISHED"
    assert {k: parent.data.tags[k] for k in ("variant", "dataset", "model")} == {
        "variant": "bn", "dataset": "digits", "model": "mlp"}
    metrics = parent.data.metrics
    assert metrics["max_stable_lr"] == pytest.approx(summary["max_stable_lr"])
    assert metrics["min_unstable_lr"] == pytest.approx(summary["min_unstable_lr"])
    assert metrics["trials"] == summary["trials"] and metrics["epochs_spent"] == summary["epochs_spent"]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert "plots/val_acc_vs_lr.png" in artifacts
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    trials = decided(study)
    assert len(children) == sum(t.user_attrs["seeds_run"] for t in trials) == len(runs) - 1
    by_id = {r.info.run_id: r for r in children}
    for t in trials:
        for run_id, verdict in zip(t.user_attrs["mlflow_run_ids"], t.user_attrs["seed_verdicts"]):
            tags = by_id[run_id].data.tags
            assert by_id[run_id].info.status == "FINISHED" and tags["trial"] == str(t.number)
            assert tags["seed_verdict"] == verdict and tags["trial_verdict"] == t.user_attrs["verdict"]
            assert tags["diverged"] == str(verdict == "diverged").lower()
            assert float(by_id[run_id].data.params["optim.lr"]) == pytest.approx(t.params["lr"])
            assert "val/acc" in by_id[run_id].data.metrics


def test_optuna_cli_lists_the_study(bn_study):
    _, study, cfg, _, _ = bn_study
    out = subprocess.run([str(VENV_BIN / "optuna"), "studies", "--storage", cfg.search.storage, "-f", "json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert study.study_name in out.stdout


def test_optuna_dashboard_opens_the_storage(bn_study):
    _, study, cfg, _, _ = bn_study
    with socket.socket() as probe:  # a free port on the loopback interface
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([str(VENV_BIN / "optuna-dashboard"), cfg.search.storage, "--host", "127.0.0.1",
                               "--port", str(port), "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline, body = time.monotonic() + 60, None
        while body is None:
            assert server.poll() is None and time.monotonic() < deadline, "optuna-dashboard did not start"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as response:
                    body = json.load(response)
            except OSError:
                time.sleep(0.5)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert study.study_name in json.dumps(body), body


def test_killed_search_resumes_without_repeating_or_losing_trials(tracking_uri, experiment_name, mlflow_client,
                                                                   tmp_path):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    # Grid 1, 0.1, 0.01, then bisection: about five trials, the first one fast (lr 1 fails).
    args = overrides(tracking_uri, experiment_name, storage, "norm=bn", "search.lr_min=1e-3", "search.lr_max=1",
                     f"hydra.run.dir={tmp_path}/outputs")
    cfg = compose_search(*args)
    name = studies.study_name(cfg)
    proc = forked.Popen([sys.executable, "-m", "normexp.search", *args], cwd=tmp_path, stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE, text=True, env=os.environ | {"PYTHONWARNINGS": "ignore"})
    try:
        deadline, done = time.monotonic() + 240, []
        while not done and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            try:
                done = optuna.load_study(study_name=name, storage=storage).get_trials(states=(TrialState.COMPLETE,))
            except KeyError:  # no study yet
                pass
        assert proc.poll() is None, f"the search ended before it could be killed: {proc.stderr.read()[-2000:]}"
    finally:
        proc.kill()
        proc.wait()
    before = optuna.load_study(study_name=name, storage=storage).get_trials(states=(TrialState.COMPLETE,))
    assert before

    summary = search.run(cfg)  # the same search again: resumes

    study = optuna.load_study(study_name=name, storage=storage)
    after = decided(study)
    assert [(t.number, t.params, t.value) for t in after[: len(before)]] == [
        (t.number, t.params, t.value) for t in before]  # nothing lost or changed
    assert len({round(math.log(t.params["lr"]), 9) for t in after}) == len(after)  # nothing repeated
    assert bracket.plan(cfg, after) == (None, None) and len(after) > len(before)  # and finished
    assert all(t.state in (*studies.DECIDED, TrialState.FAIL) for t in study.trials)  # a killed trial is FAIL
    assert summary["trials"] == len(after) and summary["min_unstable_lr"] / summary["max_stable_lr"] <= 2
    runs = runs_of(mlflow_client, experiment_name)
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]  # the same parent, reused
    assert parent.info.run_id == study.user_attrs["mlflow_run_id"] and parent.info.status == "FINISHED"
    assert all(r.info.status in ("FINISHED", "KILLED") for r in runs)  # the killed trial's run is KILLED

    # Asking for more: one trial proposed by the TPE sampler; the earlier ones stay as they were.
    summary = search.run(compose_search(*args, "search.refine_trials=1"))
    more = decided(optuna.load_study(study_name=name, storage=storage))
    assert [t.user_attrs["phase"] for t in more].count("refine") == 1
    assert [(t.number, t.params) for t in more[: len(after)]] == [(t.number, t.params) for t in after]
    assert summary["trials"] == len(more)


def test_pruned_trials_end_their_runs_finished_and_count_as_unstable(tracking_uri, experiment_name, mlflow_client,
                                                                      tmp_path):
    # ThresholdPruner(lower=0.99) prunes every trial after its first of two epochs (digits val acc < 0.99).
    cfg = compose_search(*overrides(tracking_uri, experiment_name, f"sqlite:///{tmp_path}/optuna.db"),
                         "search.epochs=2", "search.lr_min=0.005", "search.lr_max=0.01",
                         "search.pruner._target_=optuna.pruners.ThresholdPruner", "+search.pruner.lower=0.99")
    summary = search.run(cfg)
    study = optuna.load_study(study_name=studies.study_name(cfg), storage=cfg.search.storage)
    assert [t.state for t in study.trials] == [TrialState.PRUNED, TrialState.PRUNED]
    assert all(t.user_attrs["verdict"] == "pruned" and t.user_attrs["epochs"] == 1 for t in study.trials)
    assert summary["max_stable_lr"] is None and summary["epochs_spent"] == 2
    runs = runs_of(mlflow_client, experiment_name)
    assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs)
    assert sorted(r.data.tags.get("seed_verdict", "") for r in runs) == ["", "pruned", "pruned"]


@pytest.mark.parametrize("bad, message", [
    (["search.lr_min=10", "search.lr_max=1"], "search.lr_min=10"),
    (["search.seeds=0"], "search.seeds=0"),
    (["norm.kind=bm"], "norm.kind=bm must be one of none, bn, ln, gn, in"),
])
def test_bad_input_is_refused_before_any_study_or_run(tracking_uri, experiment_name, mlflow_client, tmp_path,
                                                      bad, message):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    with pytest.raises(ConfigError, match=message):
        search.run(compose_search(*overrides(tracking_uri, experiment_name, storage), *bad))
    assert runs_of(mlflow_client, experiment_name) == []
    assert not (tmp_path / "optuna.db").exists()


def test_bad_input_on_the_command_line_is_one_line_and_a_nonzero_exit(monkeypatch, tmp_path):
    assert refusal(search.main, monkeypatch, tmp_path, "search.lr_min=10", "search.lr_max=1") == (
        "error: search.lr_min=10, search.lr_max=1: need 0 < lr_min < lr_max; e.g. search.lr_min=1e-4 search.lr_max=10")


def test_multirun_logs_the_cross_variant_table_to_the_sweep_parent(tracking_uri, experiment_name, mlflow_client,
                                                                    tmp_path):
    # Grid 0.1, 0.01 and stop at a factor-10 bracket: two 1-epoch trials per variant.
    args = overrides(tracking_uri, experiment_name, f"sqlite:///{tmp_path}/optuna.db", "search.lr_min=0.01",
                     "search.lr_max=0.1", "search.resolution=10", f"hydra.sweep.dir={tmp_path}/sweep")
    out = forked.run([sys.executable, "-m", "normexp.search", "-m", "norm=bn,none", *args], cwd=tmp_path,
                     capture_output=True, text=True, timeout=300, env=os.environ | {"PYTHONWARNINGS": "ignore"})
    assert out.returncode == 0, out.stderr[-3000:]
    runs = runs_of(mlflow_client, experiment_name)
    (sweep,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    studies = {r.data.tags["variant"]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == sweep.info.run_id}
    assert set(studies) == {"bn", "none"} and sweep.info.status == "FINISHED"
    assert all(r.info.status == "FINISHED" for r in runs)
    rows = {r["variant"]: r for r in csv.DictReader(io.StringIO((tmp_path / "sweep" / "stable_lr.csv").read_text()))}
    for variant, run in studies.items():
        row = rows[variant]
        assert float(row["max_stable_lr"]) == pytest.approx(run.data.metrics["max_stable_lr"], rel=1e-3)
        ratio = run.data.metrics["max_stable_lr"] / studies["none"].data.metrics["max_stable_lr"]
        assert float(row["ratio_to_none"]) == pytest.approx(ratio, rel=1e-3)
    assert sweep.data.metrics["max_stable_lr/bn"] == pytest.approx(studies["bn"].data.metrics["max_stable_lr"])
    artifacts = {a.path for a in mlflow_client.list_artifacts(sweep.info.run_id)}
    assert {"stable_lr.md", "stable_lr.csv", "plots"} <= artifacts
    markdown = Path(mlflow_client.download_artifacts(sweep.info.run_id, "stable_lr.md", str(tmp_path))).read_text()
    assert "| bn |" in markdown and "| none |" in markdown
