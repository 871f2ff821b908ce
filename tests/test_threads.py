"""normexp.threads: torch's threads per job, from the CPUs and the jobs that share them."""

import os

import torch

from normexp import threads


def test_the_cpus_are_shared_by_the_jobs_at_once():
    assert threads.per_job(1, 16) == 16  # a single run or a serial sweep: every CPU
    assert threads.per_job(4, 16) == 4
    assert threads.per_job(3, 2) == 1    # never below one thread
    assert threads.sweep_jobs_at_once() == 1  # outside a Hydra multirun


def test_use_sets_torch_and_an_explicit_omp_num_threads_wins(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    try:
        torch.set_num_threads(1)
        assert threads.use(1) == torch.get_num_threads() == 1  # alone: left as it is
        assert threads.use(2) == torch.get_num_threads() == max(1, len(os.sched_getaffinity(0)) // 2)
        monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")  # a SLURM job's allocation, not the node
        assert threads.use(1) == torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        assert threads.use(2) == torch.get_num_threads() == 3
        assert threads.sharing() == 2  # what the run's tag jobs_at_once records
    finally:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        threads.use(1)  # alone, one thread: as conftest set it for the other tests
