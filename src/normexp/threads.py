"""How many threads torch uses in a job: this machine's CPUs shared by the jobs that run on it at once.

Two jobs each using torch's default (a thread per core) on a 2-core machine run several times slower
than with one thread each: they fight over the cores. So each job of a parallel sweep
(`hydra/launcher=joblib`, `hydra.launcher.n_jobs` at once) and each search worker (`search.workers`)
gets CPUs // jobs at once, at least 1; a single run or a serial sweep keeps torch's default. An
explicit OMP_NUM_THREADS wins (joblib's workers get CPUs // n_jobs there as well). Under SLURM a job's
CPUs are its allocation (SLURM_CPUS_PER_TASK), not the node's.
"""

import os

import torch
from hydra.core.hydra_config import HydraConfig


def cpus() -> int:
    allocated = os.environ.get("SLURM_CPUS_PER_TASK")
    return int(allocated) if allocated else len(os.sched_getaffinity(0))


def sweep_jobs_at_once() -> int:
    """The jobs of this Hydra multirun that run at the same time on this machine: joblib's n_jobs
    (negative counts as joblib does: -1 is one per CPU); 1 otherwise (the basic launcher runs them one
    after another; SLURM gives each its own CPUs)."""
    if not HydraConfig.initialized():
        return 1
    return _joblib_jobs(HydraConfig.get().launcher) or 1


def launcher_jobs_at_once(launcher, jobs: int) -> int:
    """How many of a multirun's `jobs` its launcher (the hydra.launcher node) runs at once, on any machine:
    joblib's n_jobs, SLURM's array_parallelism (all, within it), 1 for the basic launcher."""
    target = launcher.get("_target_", "")
    if "submitit" in target:
        return max(1, min(jobs, launcher.get("array_parallelism") or jobs))
    return min(jobs, _joblib_jobs(launcher) or 1) or 1


def _joblib_jobs(launcher) -> int | None:
    n_jobs = launcher.get("n_jobs")
    if n_jobs is None or "joblib" not in launcher.get("_target_", ""):
        return None
    return n_jobs if n_jobs > 0 else max(1, cpus() + 1 + n_jobs)


# The jobs_at_once of the last use(): a run's timings are only comparable with runs timed alike. Process
# state, as torch's thread count is.
_sharing = 1


def sharing() -> int:
    """How many jobs this process shares the machine's CPUs with (itself included), as use() was told."""
    return _sharing


def per_job(jobs_at_once: int, cpu_count: int) -> int:
    return max(1, cpu_count // jobs_at_once)


def use(jobs_at_once: int) -> int:
    """Set torch's threads for one of `jobs_at_once` jobs on this machine; returns the number."""
    global _sharing
    _sharing = jobs_at_once
    explicit = os.environ.get("OMP_NUM_THREADS", "").strip()
    if explicit.isdigit() and int(explicit) > 0:
        count = int(explicit)
    elif jobs_at_once == 1 and "SLURM_CPUS_PER_TASK" not in os.environ:
        return torch.get_num_threads()  # alone on the machine: torch's own choice
    else:
        count = per_job(jobs_at_once, cpus())
    torch.set_num_threads(count)
    return count
