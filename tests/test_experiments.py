"""The presets in conf/experiment/: each composes, every job of its sweep builds, and two run shrunk."""

import functools
import itertools
import json
import sys

import pytest
from hydra import compose as hydra_compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from normexp import data, train
from normexp.answers import questions
from normexp.config import schema
from normexp.models import networks
from normexp.tracking import sweep
from normexp.tracking.stores import PROJECT_ROOT
from tests import forked

from .conftest import CONF_DIR, NO_MODEL, compose

PRESETS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
# (C, H, W) of each data set, to build every job's model without the (possibly offline) data.
INPUT_SHAPES = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
GROUPS = {"dataset": "name", "model": "name", "norm": "kind", "optim": "name"}


@functools.cache
def preset(name: str):
    """conf/experiment/<name>.yaml with its hydra node (the sweep), composed once for the module's tests, which
    only read it (~0.1 s a compose)."""
    with initialize_config_dir(str(CONF_DIR), version_base=None):
        return hydra_compose("train", overrides=[f"experiment={name}"], return_hydra_config=True)


def sweep_jobs(params) -> list[list[str]]:
    """The overrides of every job, expanded by Hydra's own parser as the basic sweeper does."""
    parsed = OverridesParser.create().parse_overrides([f"{key}={value}" for key, value in params.items()])
    axes = [[f"{o.get_key_element()}={value}" for value in o.sweep_string_iterator()] for o in parsed]
    return [list(job) for job in itertools.product(*axes)]


@pytest.mark.parametrize("name", PRESETS)
def test_preset_is_a_multirun_of_several_jobs(name):
    cfg = preset(name)
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert len(sweep_jobs(cfg.hydra.sweeper.params)) >= 2


@pytest.mark.parametrize("name", PRESETS)
def test_every_job_of_a_preset_composes_and_builds_on_its_data_set_and_on_digits(name):
    params = preset(name).hydra.sweeper.params
    for job in sweep_jobs(params):
        for dataset in ([], ["dataset=digits"]):
            cfg = compose("train", f"experiment={name}", *dataset, *job)
            for override in job:  # the sweep value reached the config
                key, value = override.split("=", 1)
                chosen = cfg[key][GROUPS[key]] if key in GROUPS else OmegaConf.select(cfg, key)
                assert str(chosen) == value, (name, override)
            schema.check(cfg)
            networks.build(cfg.model, cfg.norm, INPUT_SHAPES[cfg.dataset.name], 10)
            if dataset:  # small enough to load: every epoch has at least one training batch
                assert cfg.dataset.name == "digits"
                assert len(data.load(cfg.dataset, cfg.seed).train) >= cfg.dataset.batch_size, (name, job)


@pytest.mark.parametrize("name, shrink, norms, models", [
    ("convergence", ["trainer.max_epochs=2"], {"none", "bn"}, {"mlp"}),
    ("norms_cnn", ["trainer.max_epochs=1"], {"none", "bn", "ln", "gn", "in"}, {"cnn"}),
])
def test_preset_runs_shrunk_as_one_tracked_sweep_with_its_report(name, shrink, norms, models, tmp_path, tracking_uri,
                                                                 experiment_name, experiment_runs, mlflow_client):
    # No -m: the preset itself makes it a multirun.
    done = forked.run(
        [sys.executable, "-m", "normexp.train", f"experiment={name}", "dataset=digits", *shrink,
         "probes.enabled=false", "trainer.progress_bar=false", NO_MODEL, f"tracking.uri={tracking_uri}",
         f"tracking.experiment={experiment_name}", f"hydra.sweep.dir={tmp_path}/sweep"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = experiment_runs()
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert {r.data.tags["norm"] for r in children} == norms and len(children) == len(norms) * len(models)
    assert all(r.info.status == "FINISHED" and r.data.tags["dataset"] == "digits" for r in children)
    assert {r.data.params["model.name"] for r in children} == models
    assert {r.data.params["dataset.batch_size"] for r in children} == {str(preset(name).dataset.batch_size)}
    # The sweep's answer: printed, and on the parent run as artifacts and as its description.
    assert "### Convergence per variant" in done.stdout
    parent_id = parents[0].info.run_id
    artifacts = {a.path for a in mlflow_client.list_artifacts(parent_id, "report")}
    assert {"report/report.md", "report/convergence.csv", "report/curves.png"} <= artifacts
    note = mlflow_client.get_run(parent_id).data.tags["mlflow.note.content"]
    assert note.startswith("## Report: ") and "### Each norm against no normalization" in note
    assert not (PROJECT_ROOT / "reports" / parent_id).exists()  # the hook logs to MLflow, writes no files


@pytest.mark.parametrize("name", sorted(set(PRESETS) - {"convergence", "norms_cnn"}))
def test_the_other_presets_run_one_job_shrunk(name, compose_cfg, experiment_runs):
    # The sweep's last job (the largest batch in batch_size), one epoch on digits, in this process.
    job = sweep_jobs(preset(name).hydra.sweeper.params)[-1]
    outcome = train.run(compose_cfg(f"experiment={name}", "dataset=digits", *job, "trainer.max_epochs=1"))
    (run,) = experiment_runs()
    assert run.info.status == "FINISHED" and outcome.epochs == 1 and 0 <= outcome.final_val_acc <= 1


def test_no_two_presets_train_the_same_runs_in_make_answers():
    """Every job of every question's preset, as `make answers` shrinks it (seed 0), is a config of its own:
    two presets that shared runs would answer two questions with one set of figures."""
    trained_by = {}  # the job's config without what names its preset (tracking, answers) -> preset
    for question in questions.QUESTIONS:
        for job in sweep_jobs(preset(question.preset).hydra.sweeper.params):
            cfg = OmegaConf.to_container(
                compose("train", f"experiment={question.preset}", *question.shrink, *job, "seed=0"))
            for node in ("tracking", "answers"):
                cfg.pop(node)
            key = json.dumps(cfg, sort_keys=True)
            assert key not in trained_by, f"{question.preset} {job} trains a run of {trained_by.get(key)}"
            trained_by[key] = question.preset
    assert len(set(trained_by.values())) == len(questions.QUESTIONS)


@pytest.mark.parametrize("name", PRESETS)
def test_the_parent_run_checks_every_job_of_the_preset_before_it_starts(name):
    """on_multirun_start checks the jobs Hydra will launch: the preset's own sweep (hydra.sweeper.params),
    not the un-swept base config (experiment=depth failed there: model.width without model.depth)."""
    params = preset(name).hydra.sweeper.params
    checked = [[o for o in job if o != f"experiment={name}"] for job in sweep._jobs(params, [f"experiment={name}"])]
    assert checked == sweep_jobs(params)


def test_a_command_line_sweep_replaces_the_presets_axis_of_the_same_key():
    params = preset("depth").hydra.sweeper.params
    jobs = sweep._jobs(params, ["experiment=depth", "model.depth=2,4", "dataset=digits"])
    assert len(jobs) == 3 * 2  # norm: none,bn,ln x model.depth: 2,4
    assert all("dataset=digits" in job and any(o in job for o in ("model.depth=2", "model.depth=4")) for job in jobs)
