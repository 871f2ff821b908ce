"""Where the test suite's CPU goes: the pytest workers' own tests against the processes the tests start.

    python benchmarks/suite_cpu.py [--workers 2] [--log FILE] [pytest arguments ...]

Runs `python -m pytest -n <workers> --dist worksteal` (make test) with a `sitecustomize.py` on PYTHONPATH,
which every Python process the tests start inherits: at its exit each writes its own CPU time (user +
system), pid and command line to a log. A process that is killed (SIGKILL, or a signal it does not handle),
a forked search worker (it ends with os._exit) and whatever is not Python (PostgreSQL, SLURM's daemons,
Chromium) write nothing: for those, every SAMPLE_EVERY_S this script reads each process's CPU so far in
/proc, which misses only a process's last fraction of a sample and processes shorter than one. The figures
group the processes by command; those that were running before the suite (kernel threads, the machine's
agents) count what they used during it. The rest of the machine's busy CPU over the run (/proc/stat: every
process, so the machine must be otherwise idle) is the last row. The suite's getrusage (its waited-for
descendants) is printed beside it: it misses the processes that no ancestor waits for (the search's
forkserver and the workers it forks, servers left to end on their own).

Last, the CPUs left idle: a pytest plugin (`-p suite_timeline`, written beside sitecustomize.py) notes when
each test starts and ends, and the sampler reads the machine's idle time (/proc/stat) at each sample. Each
sample's idle CPU-seconds are shared among the tests running then: the tests that wait (on a lock, a
server, a lease) while the other worker's processes do not fill both CPUs.
"""

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Written to PYTHONPATH/sitecustomize.py; Python imports it at every start (site), before the command runs.
LOGGER = """
import atexit, os
_log = os.environ.get("SUITE_CPU_LOG")
_command = " ".join(open("/proc/self/cmdline").read().replace("\\0", " ").split())  # one line: `-c` scripts have several

def _write():
    times = os.times()
    with open(_log, "a") as log:
        log.write(f"{times.user + times.system:.2f}\\t{os.getpid()}\\t{_command[:300]}\\n")

if _log:
    atexit.register(_write)
"""

# (group, pattern on the command line), first match wins: the tests' own temp paths contain "pytest".
GROUPS = [
    ("pytest workers (the tests run in-process)", r"execnet|xdist|import sys;exec"),
    ("joblib (loky) workers", r"loky\.backend\.popen"),
    # The workers it forks keep its command line; they end with os._exit, before any log line (sampled).
    ("search workers and their forkservers", r"multiprocessing\.forkserver"),
    # The commands it forks keep its command line (tests/forked.py).
    ("tests' command servers and the commands they fork", r"forked\.serve"),
    ("python -m normexp.train -m (multiruns)", r"-m normexp\.train -m "),
    ("python -m normexp.train (single runs, refusals)", r"-m normexp\.train "),
    ("python -m normexp.search", r"-m normexp\.search "),
    ("SLURM jobs (submitit)", r"submitit"),
    ("mlflow server, optuna-dashboard", r"mlflow server|uvicorn|optuna-dashboard"),
    ("resource trackers", r"resource_tracker"),
    ("pytest (the controller)", r"-m pytest"),
    ("PostgreSQL", r"^postgres|/postgresql/"),
    ("SLURM's and munge's daemons", r"slurmctld|slurmd|slurmstepd|munged"),
    ("Chromium (the browser test)", r"chromium|playwright"),
]
# Written beside it and loaded by `-p suite_timeline`: each test's start and end (wall clock) and node id.
TIMELINE = """
import os, time, pytest

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    started = time.time()
    yield
    with open(os.environ["SUITE_TIMELINE_LOG"], "a") as log:
        log.write(f"{started:.3f}\\t{time.time():.3f}\\t{item.nodeid}\\n")
"""
IDLE_TESTS_SHOWN = 12
SAMPLE_EVERY_S = 0.5  # a scan of /proc costs ~5 ms of this process's CPU


def machine_busy_and_idle_s() -> tuple[float, float]:
    """CPU seconds every process of the machine has used since boot, and those its CPUs sat idle (idle and
    iowait): /proc/stat's first line."""
    user, nice, system, idle, iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq + steal) / tick, (idle + iowait) / tick


def group_of(command: str) -> str:
    return next((name for name, pattern in GROUPS if re.search(pattern, command)), "other processes")


def processes_cpu_s() -> dict[tuple[int, int], tuple[float, str]]:
    """(pid, start time) -> (CPU seconds so far, command line) of every process on the machine now. The start
    time tells apart two processes that had the same pid."""
    found, tick = {}, os.sysconf("SC_CLK_TCK")
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
                command = " ".join(Path(entry.path, "cmdline").read_bytes().decode(errors="replace").split("\0"))
            except OSError:
                continue  # it ended meanwhile
            name, fields = stat[stat.find("(") + 1 : stat.rfind(")")], stat[stat.rfind(")") + 2 :].split()
            # fields 11 and 12: user and system time in ticks; 19: start time in ticks since boot
            found[int(entry.name), int(fields[19])] = ((int(fields[11]) + int(fields[12])) / tick,
                                                       command.strip() or f"[{name}]")
    return found


class Sampler(threading.Thread):
    """Every process's CPU over the run, read from /proc until `stop` is set."""

    def __init__(self):
        super().__init__(daemon=True)
        self.before = processes_cpu_s()  # what those already running had used
        self.last = dict(self.before)    # each process's last reading: CPU time only grows
        self.stop = threading.Event()
        self.idle = [(time.time(), machine_busy_and_idle_s()[1])]  # (wall clock, machine idle s since boot)

    def run(self) -> None:
        while not self.stop.wait(SAMPLE_EVERY_S):
            self.idle.append((time.time(), machine_busy_and_idle_s()[1]))
            for key, (cpu_s, command) in processes_cpu_s().items():
                if command.startswith("[") and key in self.last:  # an exiting process's command line is empty
                    command = self.last[key][1]
                self.last[key] = (cpu_s, command)

    def used(self) -> dict[tuple[int, int], tuple[float, str, bool]]:
        """(pid, start time) -> (CPU seconds during the run, command line, whether it was running before)."""
        return {key: (cpu_s - self.before.get(key, (0.0,))[0], command, key in self.before)
                for key, (cpu_s, command) in self.last.items()}


def idle_by_test(idle: list[tuple[float, float]], tests: list[tuple[float, float, str]]) -> dict[str, float]:
    """Test id -> the idle CPU-seconds of the samples taken while it ran, each sample's shared among the tests
    running at its middle; "(no test)" for the suite's start and end."""
    blamed = defaultdict(float)
    for (start, idle_before), (end, idle_after) in zip(idle, idle[1:]):
        middle = (start + end) / 2
        running = [name for began, ended, name in tests if began <= middle <= ended] or ["(no test)"]
        for name in running:
            blamed[name] += (idle_after - idle_before) / len(running)
    return blamed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="pytest-xdist workers (make test's TEST_WORKERS)")
    parser.add_argument("--log", type=Path, help="also keep every process's line (CPU s, command) in this file")
    args, pytest_args = parser.parse_known_args()

    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "sitecustomize.py").write_text(LOGGER)
        Path(folder, "suite_timeline.py").write_text(TIMELINE)
        log, timeline = Path(folder, "cpu.log"), Path(folder, "timeline.log")
        env = os.environ | {"SUITE_CPU_LOG": str(log), "SUITE_TIMELINE_LOG": str(timeline),
                            "PYTHONPATH": os.pathsep.join(filter(None, [folder, os.environ.get("PYTHONPATH")]))}
        sampler = Sampler()
        sampler.start()
        started, (busy_before, idle_before) = time.monotonic(), machine_busy_and_idle_s()
        done = subprocess.run([sys.executable, "-m", "pytest", "-n", str(args.workers), "--dist", "worksteal", "-q",
                               "-p", "suite_timeline", *pytest_args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              text=True)
        wall_s = time.monotonic() - started
        busy_s, idle_s = (now - before for now, before in zip(machine_busy_and_idle_s(), (busy_before, idle_before)))
        sampler.stop.set()
        sampler.join()
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        lines = log.read_text().splitlines() if log.exists() else []
        tests = [(float(began), float(ended), name) for began, ended, name in
                 (line.split("\t", 2) for line in timeline.read_text().splitlines())] if timeline.exists() else []
    if args.log:
        args.log.write_text("".join(f"{line}\n" for line in lines))

    total_s = usage.ru_utime + usage.ru_stime
    logged = {}  # pid -> (CPU seconds, command line): exact to its exit, but for its shutdown after the log line
    for line in lines:
        seconds, pid, command = line.split("\t", 2)
        logged[int(pid)] = (float(seconds), command)
    by_group, count = defaultdict(float), defaultdict(int)
    already_running = "already running: kernel threads, the machine's agents, this script"
    for (pid, _), (seconds, command, before) in sampler.used().items():
        seconds = max(seconds, logged.pop(pid, (0.0,))[0])
        if seconds >= 0.01:
            group = already_running if before else group_of(command)
            by_group[group] += seconds
            count[group] += 1
    for seconds, command in logged.values():  # shorter than a sample
        by_group[group_of(command)] += seconds
        count[group_of(command)] += 1
    seen_s = sum(by_group.values())
    # pytest's --durations table (make test asks for the 15 slowest) and its summary line.
    output = done.stdout.strip()
    print(output[output.find("slowest"):] if "slowest" in output else output or "(pytest printed nothing)")
    print(f"\n{args.workers} workers, {os.cpu_count()} CPUs: {wall_s:.0f} s wall, {total_s:.0f} s CPU "
          f"({100 * total_s / wall_s:.0f}% of one core); the machine: {busy_s:.0f} s busy "
          f"({100 * busy_s / wall_s:.0f}% of one core)\n")
    print(f"{'CPU s':>7} {'share':>6} {'procs':>6} {'s each':>7}  processes")
    for name in sorted(by_group, key=by_group.get, reverse=True):  # shares of the machine's busy CPU
        print(f"{by_group[name]:7.0f} {100 * by_group[name] / busy_s:5.0f}% {count[name]:6d} "
              f"{by_group[name] / count[name]:7.1f}  {name}")
    print(f"{busy_s - seen_s:7.0f} {100 * (busy_s - seen_s) / busy_s:5.0f}% {'':>6} {'':>7}  "
          "not seen: processes shorter than a sample that are not Python, the kernel's own work")

    blamed = idle_by_test(sampler.idle, tests)
    print(f"\nThe CPUs sat idle {idle_s:.0f} s of {os.cpu_count() * wall_s:.0f} s ({os.cpu_count()} CPUs x wall), "
          f"{idle_s / os.cpu_count():.0f} s of wall time had they all been kept busy. While these tests ran:\n")
    print(f"{'idle s':>7}  test")
    for name in sorted(blamed, key=blamed.get, reverse=True)[:IDLE_TESTS_SHOWN]:
        print(f"{blamed[name]:7.1f}  {name}")
    sys.exit(done.returncode)


if __name__ == "__main__":
    main()
