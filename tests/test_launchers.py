"""normexp.tracking.launchers: a launcher setting that cannot work stops a multirun in one line, before
its parent run or its store exists: joblib's n_jobs out of range, a SLURM partition the cluster (a real
one-node cluster, tests/servers.py) does not have."""

import subprocess
import sys

import pytest

from normexp import threads


def multirun(tmp_path, *overrides: str, env=None) -> str:
    """The one line `python -m normexp.train -m ...` ends with; nothing may be recorded."""
    done = subprocess.run([sys.executable, "-m", "normexp.train", "-m", "norm=bn,none", "trainer.max_epochs=1",
                           f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"hydra.sweep.dir={tmp_path}/sweep",
                           *overrides], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert not (tmp_path / "mlflow.db").exists()
    return done.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("n_jobs", [0, -(threads.cpus() + 1)])
def test_joblib_n_jobs_out_of_range_is_refused_before_the_sweep(tmp_path, n_jobs):
    cpus = threads.cpus()
    assert multirun(tmp_path, "hydra/launcher=joblib", f"hydra.launcher.n_jobs={n_jobs}") == (
        f"error: hydra.launcher.n_jobs={n_jobs}: joblib runs n_jobs jobs at once, or with a negative count all "
        f"{cpus} CPUs but -1 - n_jobs; use n_jobs >= 1 or -{cpus}..-1, e.g. hydra.launcher.n_jobs={cpus}")


def test_a_slurm_partition_the_cluster_lacks_is_refused_before_the_sweep(tmp_path, slurm_env):
    line = multirun(tmp_path, "hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu-large", env=slurm_env)
    assert line == ("error: hydra.launcher.partition=gpu-large: this SLURM cluster has no partition 'gpu-large'; "
                    "it has debug: e.g. hydra.launcher.partition=debug")
