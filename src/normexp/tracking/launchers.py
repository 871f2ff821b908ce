"""Hydra launcher settings that cannot work, refused in one line before a multirun's parent run exists
(normexp.tracking.sweep): joblib's n_jobs out of range (joblib itself raises a bare ValueError mid-launch, or
quietly runs one job at a time), a SLURM partition the cluster does not have."""

import shutil
import subprocess
import warnings

from omegaconf import DictConfig

from normexp import threads
from normexp.errors import ConfigError

SINFO_TIMEOUT_S = 10  # a SLURM controller that does not answer sinfo within this is refused
# joblib's loky replaces a worker whose memory has grown 300 MB past what it held after its first job (a
# later job on a larger data set or model: make answers' CNN presets on Fashion-MNIST) and gives the
# pending jobs to the new one: nothing is lost, but it warns, in the launching process, in the sweep's output.
warnings.filterwarnings("ignore", message="A worker stopped while some jobs were given to the executor")


def check(launcher_cfg: DictConfig) -> None:
    target = launcher_cfg.get("_target_", "")
    if "joblib" in target:
        _joblib(launcher_cfg.n_jobs)
    if "SlurmLauncher" in target and launcher_cfg.get("partition"):
        _slurm_partition(launcher_cfg.partition)


def _joblib(n_jobs: int) -> None:
    """joblib's n_jobs: that many jobs at once; negative, all CPUs but -1 - n_jobs (-1: one per CPU)."""
    cpus = threads.cpus()
    if n_jobs == 0 or n_jobs < -cpus:
        raise ConfigError(f"hydra.launcher.n_jobs={n_jobs}: joblib runs n_jobs jobs at once, or with a negative "
                          f"count all {cpus} CPUs but -1 - n_jobs; use n_jobs >= 1 or -{cpus}..-1, e.g. "
                          f"hydra.launcher.n_jobs={cpus}")


def _slurm_partition(partition: str) -> None:
    if shutil.which("sinfo") is None:
        raise ConfigError(f"hydra.launcher.partition={partition}: SLURM is not installed here (no sinfo); run on "
                          "the cluster's login node, or install it: apt-get install slurm-wlm munge")
    try:
        done = subprocess.run(["sinfo", "--noheader", "--format=%R"], capture_output=True, text=True,
                              timeout=SINFO_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        done = None
    if done is None or done.returncode != 0:
        why = f"no answer within {SINFO_TIMEOUT_S} s" if done is None else (done.stderr.strip().splitlines() or ["?"])[0]
        raise ConfigError(f"hydra.launcher.partition={partition}: SLURM's controller does not answer sinfo ({why}); "
                          "start slurmctld, or point SLURM_CONF at the cluster's slurm.conf")
    known = sorted(set(done.stdout.split()))
    unknown = [p for p in partition.split(",") if p not in known]
    if unknown:
        raise ConfigError(f"hydra.launcher.partition={partition}: this SLURM cluster has no partition "
                          f"'{unknown[0]}'; it has {', '.join(known) or 'none'}: e.g. "
                          f"hydra.launcher.partition={known[0] if known else '<partition>'}")
