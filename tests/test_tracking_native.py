"""What MLflow's own UI and API expect of a run: its splits as dataset inputs, its trained network as a
logged model that loads in a fresh process and scores the run's test accuracy, its source, its system
metrics; a multirun's progress lines and a browse URL that opens the Runs table, in a real headless
Chromium on a real MLflow server."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from normexp import data
from normexp.tracking import stores
from tests import servers
from tests.conftest import compose, need

# 4 jobs; 12 epochs on digits take about a second, over several samples of system metrics a run.
SWEEP = ["-m", "norm=bn,none", "seed=0,1", "trainer.max_epochs=12", "probes.enabled=false",
         "trainer.progress_bar=false", "tracking.system_metrics_interval_s=0.05"]
NAMES = [f"{norm}-adam-lr0.001-bs64-s{seed}" for norm in ("bn", "none") for seed in (0, 1)]


def run_sweep(folder: Path) -> None:
    uri = f"sqlite:///{folder}/mlflow.db"
    done = subprocess.run([sys.executable, "-m", "normexp.train", *SWEEP, f"tracking.uri={uri}",
                           f"hydra.sweep.dir={folder}/sweep"], cwd=folder, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (folder / "output.txt").write_text(done.stdout + done.stderr)


@pytest.fixture(scope="module")
def sweep(built_once):
    """A 4-job multirun on digits in its own store, run once for all workers: (its stdout and stderr, the
    client, the experiment id, the runs by name)."""
    folder = built_once("native-sweep", run_sweep)
    client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
    experiment_id = client.get_experiment_by_name("normexp").experiment_id
    runs = {r.info.run_name: r for r in client.search_runs([experiment_id])}
    return (folder / "output.txt").read_text(), client, experiment_id, runs


def test_a_multirun_numbers_its_jobs_and_prints_its_progress_without_library_noise(sweep):
    output = sweep[0]
    for k, name in enumerate(NAMES, start=1):  # Hydra's order: the last override varies fastest
        assert f"[job {k}/4] {name}: " in output, output[-3000:]
    progress = [line for line in output.splitlines() if line.startswith("[sweep] ")]
    assert progress[0].startswith("[sweep] 1/4 done, 0 running, 0 failed; about ") and " left (" in progress[0]
    assert [line.split(" done")[0] for line in progress] == [f"[sweep] {k}/4" for k in range(1, 5)]
    assert progress[-1] == "[sweep] 4/4 done, 0 running, 0 failed"
    assert "Downloading artifacts" not in output and "Started monitoring system metrics" not in output
    assert "CloudPickle" not in output  # MLflow's warning on the pickled model, one a run


def test_each_run_records_its_three_splits_its_source_and_its_system_metrics(sweep):
    output, client, _, runs = sweep
    cfg = compose("train", "seed=1")
    splits = data.load(cfg.dataset, cfg.seed)
    run = runs[NAMES[1]]  # bn, seed 1
    inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert sorted(inputs) == ["test", "train", "validation"]
    for context, split in (("train", splits.train), ("validation", splits.val), ("test", splits.test)):
        dataset = inputs[context]
        assert dataset.name == "digits" and json.loads(dataset.profile)["features_shape"] == list(split.x.shape)
        assert json.loads(dataset.source) == {"tags": {"function": "sklearn.datasets.load_digits"}}
    assert len({d.digest for d in inputs.values()}) == 3  # each split its own data
    seed_0 = {i.tags[0].value: i.dataset.digest for i in runs[NAMES[0]].inputs.dataset_inputs}
    assert seed_0["train"] != inputs["train"].digest  # the seed splits the images otherwise
    assert run.data.tags["mlflow.source.name"] == "normexp.train" and run.data.tags["mlflow.source.type"] == "LOCAL"
    assert run.data.tags["command"].startswith("python -m normexp.train -m norm=bn,none seed=0,1 ")
    assert "system/cpu_utilization_percentage" in run.data.metrics
    assert "system/system_memory_usage_megabytes" in run.data.metrics


def test_the_logged_model_loads_in_a_fresh_process_and_scores_the_runs_test_accuracy(sweep):
    _, client, experiment_id, runs = sweep
    run = runs[NAMES[3]]  # none, seed 1
    (output,) = run.outputs.model_outputs
    model = client.get_logged_model(output.model_id)
    assert model.source_run_id == run.info.run_id and model.status == "READY"
    assert {m.key: m.value for m in model.metrics}["test/acc"] == run.data.metrics["test/acc"]
    script = f"""
import mlflow, torch
from normexp import data
from tests.conftest import compose
mlflow.set_tracking_uri({client.tracking_uri!r})
network = mlflow.pytorch.load_model("models:/{output.model_id}")
cfg = compose("train", "norm=none", "seed=1")
test = data.load(cfg.dataset, cfg.seed).test
with torch.no_grad():
    print("accuracy", (network(test.x).argmax(1) == test.y).float().mean().item())
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=stores.PROJECT_ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    accuracy = float(done.stdout.split("accuracy")[-1])
    assert accuracy == pytest.approx(run.data.metrics["test/acc"], abs=1e-6)


def test_log_model_and_system_metrics_switch_off(compose_cfg, mlflow_client):
    from normexp import train

    outcome = train.run(compose_cfg("tracking.log_model=false", "tracking.system_metrics=false",
                                    "tracking.system_metrics_interval_s=0.01", "probes.enabled=false"))
    run = mlflow_client.get_run(outcome.run_id)
    assert not run.outputs.model_outputs
    assert not [k for k in run.data.metrics if k.startswith("system/")]
    assert len(run.inputs.dataset_inputs) == 3  # the inputs stay: they cost nothing


def test_the_browse_url_opens_the_runs_table_with_dataset_source_and_model(sweep, tmp_path):
    need("chromium")
    from playwright.sync_api import sync_playwright

    _, client, experiment_id, runs = sweep
    with servers.mlflow_server(client.tracking_uri, tmp_path / "server") as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which(servers.CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 2400, "height": 1000})  # wide: every column drawn
            page.goto(stores.runs_url(url, experiment_id))
            parent = next(name for name in runs if name.startswith("sweep "))
            page.get_by_text(parent).first.wait_for(timeout=60_000)  # the Runs table, not the GenAI overview
            assert "workflowType=machine_learning" in page.url and "/runs" in page.url
            # The sweep's runs sit under its parent row: expand it.
            page.locator('[role="row"]').filter(has_text=parent).locator(
                'button[data-component-id*="runnamecellrenderer"]').first.click()
            page.get_by_text(NAMES[0]).first.wait_for(timeout=30_000)
            # The grid draws each row twice: the pinned run name, and the other columns; row-index joins them.
            cells: dict[str, list[str]] = {}
            for row in page.locator('[role="row"][row-index]').all():
                cells.setdefault(row.get_attribute("row-index"), []).append(row.inner_text())
        finally:
            browser.close()
    rows = {name: " ".join(parts) for parts in cells.values() for name in NAMES if name in " ".join(parts)}
    assert sorted(rows) == sorted(NAMES)
    for text in rows.values():
        assert "digits (" in text and "Train" in text and "Validation" in text  # the Dataset column
        assert "normexp.train" in text  # Source
        assert "\nmodel" in text  # Models
