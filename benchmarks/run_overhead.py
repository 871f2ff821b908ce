"""Where a sweep's time goes besides training: a 20-run digits sweep, timed from its MLflow records.

    python benchmarks/run_overhead.py [--runs 20] [--epochs 2] [--threads 1]

Runs `python -m normexp.train -m dataset=digits norm=none,bn seed=0,...` (the real CLI, serial launcher,
probes on) in a fresh SQLite store, then splits its wall time with the runs' own timestamps:

  start        process start -> the first run's start: Python, imports, Hydra, creating the store
  between      a run's end -> the next run's start: Hydra's next job, data, model, store connection
  set-up       a run's start -> its first epoch's start: the Trainer, the probes
  epochs       the sum of the run's time/epoch_s: training, validation and the probes' epoch-end work
  wrap-up      the last epoch's end -> the run's end: test, inference timing, outcome, figures
  report       the last run's end -> process exit: the sweep's report and its figures

(an epoch's start is its end, the timestamp of time/epoch_s, less time/epoch_s). Per run, the overhead is
the run's share of everything but the epochs. Digits epochs are short, so this is close to the
per-run cost of every sweep; Fashion-MNIST runs pay the same plus the reading of the data.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="even: none and bn, each over runs / 2 seeds")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the sweep")
    args = parser.parse_args()
    if args.runs < 2 or args.runs % 2:
        parser.error(f"--runs {args.runs}: use an even number >= 2 (none and bn over runs / 2 seeds)")

    with tempfile.TemporaryDirectory() as folder:
        uri = f"sqlite:///{folder}/mlflow.db"
        seeds = ",".join(map(str, range(args.runs // 2)))
        command = [sys.executable, "-m", "normexp.train", "-m", "dataset=digits", "norm=none,bn", f"seed={seeds}",
                   f"trainer.max_epochs={args.epochs}", "trainer.progress_bar=false", f"tracking.uri={uri}",
                   f"hydra.sweep.dir={folder}/multirun"]
        env = os.environ | {"OMP_NUM_THREADS": str(args.threads)}
        started = time.time()
        done = subprocess.run(command, cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        ended = time.time()
        if done.returncode != 0:
            sys.exit(f"the sweep failed:\n{done.stderr[-3000:]}")

        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("normexp")
        runs = [r for r in client.search_runs([experiment.experiment_id], max_results=1000)
                if "norm.kind" in r.data.params]  # the training runs, not the sweep's parent
        runs.sort(key=lambda r: r.info.start_time)
        phases = {"between": [], "set-up": [], "epochs": [], "wrap-up": []}
        for previous, run in zip([None, *runs], runs):
            epochs = client.get_metric_history(run.info.run_id, "time/epoch_s")  # one per epoch, step order
            epochs.sort(key=lambda m: m.step)
            first_epoch_start = epochs[0].timestamp / 1000 - epochs[0].value
            if previous is not None:
                phases["between"].append((run.info.start_time - previous.info.end_time) / 1000)
            phases["set-up"].append(first_epoch_start - run.info.start_time / 1000)
            phases["epochs"].append(sum(m.value for m in epochs))
            phases["wrap-up"].append(run.info.end_time / 1000 - epochs[-1].timestamp / 1000)

    wall = ended - started
    start_s = runs[0].info.start_time / 1000 - started
    report_s = ended - runs[-1].info.end_time / 1000
    epochs_s = sum(phases["epochs"])
    print(f"{len(runs)} digits runs (none, bn), {args.epochs} epochs each, OMP_NUM_THREADS={args.threads}, serial "
          f"launcher, probes on; {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end\n")
    print(f"{'phase':<10} {'total s':>8} {'per run s':>10} {'median s':>9}")
    print(f"{'start':<10} {start_s:>8.2f} {start_s / len(runs):>10.3f} {'':>9}")
    for name, values in phases.items():
        print(f"{name:<10} {sum(values):>8.2f} {sum(values) / len(runs):>10.3f} {statistics.median(values):>9.3f}")
    print(f"{'report':<10} {report_s:>8.2f} {report_s / len(runs):>10.3f} {'':>9}")
    print(f"{'wall':<10} {wall:>8.2f} {wall / len(runs):>10.3f}")
    print(f"\noverhead per run (wall - epochs) / runs: {(wall - epochs_s) / len(runs):.2f} s; "
          f"without the process start and the report: {(wall - epochs_s - start_s - report_s) / len(runs):.2f} s")


if __name__ == "__main__":
    main()
