"""Shared fixtures: the real Hydra config, composed and shrunk, tracked in a real temporary SQLite store.

Light to import: pytest's controller loads this file before it starts the parallel workers, and its import
of torch, MLflow and Hydra (~6 s of one core, the other idle) delayed every worker's start. The helpers
below import them where they are used; in a worker, the test modules have imported them already."""

import copy
import functools
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
from filelock import FileLock

import normexp  # before torch, MLflow and Hydra: it defers the collector's full passes while they load, as in a command
import normexp.config.schema  # registers the config schemas that conf/*.yaml extend (no torch, no MLflow)
from tests import servers

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
# The commands of the tests that look at no logged model leave it out: a process's first one costs ~0.9 s of
# CPU (MLflow's scan of the installed packages, to check its requirements), each ~0.15 s. test_tracking_native.py
# checks the models; test_train.py logs one of every model and norm.
NO_MODEL = "tracking.log_model=false"

# The test models are tiny: a second thread only adds contention (5x slower on a busy 2-core
# machine). Set before torch is imported, which reads it; it also reaches the subprocesses that tests start.
os.environ["OMP_NUM_THREADS"] = "1"


def compose(config_name: str, *overrides: str):
    """conf/<config_name>.yaml with the overrides, composed as the command line would.

    Hydra composes the config of the defaults list (the group options) and then applies the value overrides
    (`optim.lr=0.1`), last. The first step (~80 ms) is done once per config name and group options; each call
    runs the second (~2 ms) on a copy, with Hydra's own code for it. Every other override (a group option, a
    top-level key, a sweep, hydra's own) goes to the first step as it is."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    values = [o for o in parsed if _is_value_override(o)]
    cfg = copy.deepcopy(_composed(config_name, tuple(o.input_line for o in parsed if o not in values)))
    ConfigLoaderImpl._apply_overrides_to_config(values, cfg)  # raises as hydra.compose does
    return cfg


def _is_value_override(override) -> bool:
    # A dotted key names a value: a config group's name has no dot.
    return ("." in override.key_or_group and override.package is None and not override.is_sweep_override()
            and not override.is_hydra_override())


@functools.cache
def _composed(config_name: str, overrides: tuple[str, ...]):
    """Callers get a copy: they may change it."""
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(str(CONF_DIR), version_base=None):
        return hydra_compose(config_name, overrides=list(overrides))


def compose_search(*overrides: str):
    return compose("search", *overrides)


def refusal(entry_point, monkeypatch, tmp_path, *overrides: str, flags: tuple[str, ...] = ()) -> str:
    """The message `entry_point` (normexp.train.main or normexp.search.main) exits with for these overrides,
    against stores in tmp_path: Hydra's real command line from sys.argv, run in this process. The real
    process's stderr, the same message alone, is test_commands' and test_domains' concern."""
    from normexp import search

    monkeypatch.chdir(tmp_path)
    storage = f"search.storage=sqlite:///{tmp_path}/optuna.db" if entry_point is search.main else "seed=0"
    monkeypatch.setattr(sys, "argv", ["normexp", f"--config-path={CONF_DIR}", *flags, storage,
                                      f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"hydra.run.dir={tmp_path}/out",
                                      f"hydra.sweep.dir={tmp_path}/sweep", *overrides])
    with pytest.raises(SystemExit) as refused:
        entry_point()
    message = str(refused.value.code)
    assert message.startswith("error: ") and "\n" not in message  # SystemExit(str): exit status 1
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "optuna.db").exists()  # nothing recorded
    return message


@pytest.fixture(scope="session")
def tracking_dir(tmp_path_factory) -> Path:
    # One SQLite store for the session (creating its tables takes seconds); each test gets its own
    # experiment in it, so tests never see each other's runs.
    return tmp_path_factory.mktemp("mlflow")


@pytest.fixture(scope="session")
def built_once(tmp_path_factory, worker_id):
    """built_once(name, build) -> folder: `build(folder)` runs in the first of the parallel workers to ask;
    the others wait for it and read the same folder. For a costly module fixture whose tests the workers
    share out among themselves (each would otherwise build it again). Its tests only read the folder."""
    # Every worker's base temp is a folder of the same session folder; without xdist it is its own.
    root = tmp_path_factory.getbasetemp() if worker_id == "master" else tmp_path_factory.getbasetemp().parent

    def get(name: str, build) -> Path:
        folder, built = root / name, root / f"{name}.built"
        with FileLock(root / f"{name}.lock"):
            if not built.exists():
                shutil.rmtree(folder, ignore_errors=True)  # a build that failed in another worker
                folder.mkdir()
                build(folder)
                built.touch()
        return folder

    return get


@pytest.fixture
def tracking_uri(tracking_dir) -> str:
    return f"sqlite:///{tracking_dir}/mlflow.db"


@pytest.fixture
def experiment_name(request) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid)


@pytest.fixture
def compose_cfg(tracking_uri, experiment_name):
    """compose_cfg(*overrides): conf/train.yaml with the overrides, shrunk to 2 quiet epochs and
    tracked in this test's own experiment of the session's temporary store."""

    def make(*overrides: str):
        return compose("train", f"tracking.uri={tracking_uri}", f"tracking.experiment={experiment_name}",
                       "trainer.max_epochs=2", "trainer.progress_bar=false", *overrides)

    return make


@pytest.fixture
def mlflow_client(tracking_uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri)


@pytest.fixture
def experiment_runs(mlflow_client, experiment_name):
    """experiment_runs(): every run of this test's experiment, oldest first."""

    def runs():
        experiment = mlflow_client.get_experiment_by_name(experiment_name)
        if experiment is None:
            return []
        return mlflow_client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])

    return runs


def need(service: str) -> None:
    """Skip a test whose system service is not installed, with the line that installs it. Under
    NORMEXP_REQUIRE_SERVICES=1 (.ci/run, which installs them all) such a test fails instead."""
    why = servers.missing(service)
    if why is None:
        return
    if os.environ.get("NORMEXP_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{why} (NORMEXP_REQUIRE_SERVICES=1)", pytrace=False)
    pytest.skip(why)


@pytest.fixture(scope="module")
def postgres_url():
    """A PostgreSQL server for the module's tests, with databases `mlflow` and `optuna`: its URL."""
    need("postgres")
    with servers.postgres() as url:
        yield url


@pytest.fixture
def slurm_env(tmp_path):
    """A one-node SLURM cluster for one test: the environment that points sbatch and the jobs at it."""
    need("slurm")
    with servers.slurm(tmp_path / "slurm") as env:
        yield env


# The modules whose tests start whole sweeps, searches and servers, in the order of their cost on the
# 2-core machine (`make test` prints the 15 slowest tests). They go first, so that parallel workers do
# not end on a long test while the others sit idle.
SLOW_MODULES = ("test_domains.py", "test_scale_out.py", "test_sweep.py", "test_workers.py", "test_faults.py",
                "test_tracking_native.py", "test_train.py", "test_search.py",
                "test_report.py", "test_experiments.py", "test_answers.py")


def pytest_collection_modifyitems(items):
    def cost_rank(item):
        name = item.path.name
        return SLOW_MODULES.index(name) if name in SLOW_MODULES else len(SLOW_MODULES)

    items.sort(key=cost_rank)  # stable: each module keeps its own order


def pytest_collection_finish(session):
    # What a command does first (commands.freeze_imports), after the test modules' imports: the garbage
    # collections of the runs the tests train in-process skip the modules.
    from normexp.tracking import commands

    commands.freeze_imports()
