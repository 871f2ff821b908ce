"""normexp.tracking.launchers: a launcher setting that cannot work stops a multirun in one line, before
its parent run or its store exists: joblib's n_jobs out of range, a SLURM partition the cluster (a real
one-node cluster, tests/servers.py) does not have."""

import pytest

from normexp import threads, train
from tests.conftest import refusal


def multirun(monkeypatch, tmp_path, *overrides: str) -> str:
    """The one line `python -m normexp.train -m ...` ends with (run in this process); nothing may be recorded."""
    message = refusal(train.main, monkeypatch, tmp_path, "norm=bn,none", "trainer.max_epochs=1", *overrides,
                      flags=("--multirun",))
    assert not list(tmp_path.glob("sweep/**/mlflow_parent_run_id"))
    return message


@pytest.mark.parametrize("n_jobs", [0, -(threads.cpus() + 1)])
def test_joblib_n_jobs_out_of_range_is_refused_before_the_sweep(monkeypatch, tmp_path, n_jobs):
    cpus = threads.cpus()
    assert multirun(monkeypatch, tmp_path, "hydra/launcher=joblib", f"hydra.launcher.n_jobs={n_jobs}") == (
        f"error: hydra.launcher.n_jobs={n_jobs}: joblib runs n_jobs jobs at once, or with a negative count all "
        f"{cpus} CPUs but -1 - n_jobs; use n_jobs >= 1 or -{cpus}..-1, e.g. hydra.launcher.n_jobs={cpus}")


def test_a_slurm_partition_the_cluster_lacks_is_refused_before_the_sweep(monkeypatch, tmp_path, slurm_env):
    monkeypatch.setenv("SLURM_CONF", slurm_env["SLURM_CONF"])  # sinfo asks the test's cluster
    line = multirun(monkeypatch, tmp_path, "hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu-large")
    assert line == ("error: hydra.launcher.partition=gpu-large: this SLURM cluster has no partition 'gpu-large'; "
                    "it has debug: e.g. hydra.launcher.partition=debug")
