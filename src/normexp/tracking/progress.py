"""How far a batch of jobs has got: a multirun's jobs (`[job 3/40]`, then a line as each one ends) or
normexp.answers' presets. A multirun's jobs run in the launching process, in joblib workers or as SLURM
jobs, so its record is a file in the sweep folder that each job appends one line to (one short O_APPEND
write: whole lines, whichever process writes), and the counts are read back from it."""

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

PROGRESS_FILE = "progress.jsonl"  # in a Hydra sweep folder: {"total", "at_once"}, then a line per job start and end


@dataclass
class Counts:
    total: int
    at_once: int                    # jobs that run at the same time (joblib's n_jobs; 1 for the basic launcher)
    done: int = 0
    failed: int = 0
    running: int = 0
    durations_s: list[float] = field(default_factory=list)  # of the jobs that ended, failed ones included

    def line(self) -> str:
        """e.g. '3/40 done, 2 running, 1 failed; about 12 min left (1.9 min a job, 2 at once)'."""
        text = f"{self.done}/{self.total} done, {self.running} running, {self.failed} failed"
        left = self.total - self.done - self.failed
        if left <= 0:
            return text
        if not self.durations_s:
            return f"{text}; time left unknown until a job ends"
        mean_s = sum(self.durations_s) / len(self.durations_s)
        left_s = mean_s * left / max(1, min(self.at_once, left))
        return f"{text}; about {_minutes(left_s)} left ({_minutes(mean_s)} a job, {self.at_once} at once)"


def say(line: str) -> None:
    """Print one line, whole, in one write. Parallel jobs share the terminal, and where stdout writes
    through (PYTHONUNBUFFERED, `python -u`: common in containers and CI) print() writes the text and its
    newline apart, so another job's line could land between the two."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def _append(path: Path, record: dict) -> None:
    with open(path, "a") as f:  # one write of one line: appends from several processes never interleave
        f.write(json.dumps(record) + "\n")


def begin(sweep_dir: Path, total: int, at_once: int) -> None:
    """A new multirun of `total` jobs, `at_once` at a time (the launching process, before any job)."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / PROGRESS_FILE).write_text(json.dumps({"total": total, "at_once": at_once}) + "\n")


def job_started(sweep_dir: Path, num: int) -> None:
    if (sweep_dir / PROGRESS_FILE).exists():
        _append(sweep_dir / PROGRESS_FILE, {"start": num, "pid": os.getpid(), "t": time.time()})


def job_ended(sweep_dir: Path, num: int, failed: bool) -> None:
    if (sweep_dir / PROGRESS_FILE).exists():
        _append(sweep_dir / PROGRESS_FILE, {"end": num, "failed": failed, "t": time.time()})


def total(sweep_dir: Path) -> int | None:
    """The multirun's number of jobs, or None where no progress is kept (a single run)."""
    path = sweep_dir / PROGRESS_FILE
    if not path.exists():
        return None
    with open(path) as f:
        return json.loads(f.readline())["total"]


def counts(sweep_dir: Path) -> Counts | None:
    path = sweep_dir / PROGRESS_FILE
    if not path.exists():
        return None
    header, *records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    started = {r["start"]: r["t"] for r in records if "start" in r}
    ended = {r["end"]: r for r in records if "end" in r}
    result = Counts(total=header["total"], at_once=header["at_once"])
    result.done = sum(not r["failed"] for r in ended.values())
    result.failed = len(ended) - result.done
    result.running = len(started.keys() - ended.keys())
    result.durations_s = [r["t"] - started[num] for num, r in ended.items() if num in started]
    return result
