"""What the MLflow-native records cost a run: the logged model (tracking.log_model) and the system metrics
(tracking.system_metrics), against a run with neither.

    python benchmarks/tracking_cost.py [--repeats 2] [--epochs 3] [--threads 1] [--dataset fashion_mnist]

In one process (as a sweep's jobs run), for each setting in turn, `--repeats` rounds of train.run on the
default MLP with probes off, in a fresh SQLite store. Each run is timed from the run's own MLflow start
and end, and its epochs from its time/epoch_s; the model's size is its artifact folder on disk. The
first run of the process also pays for loading the data (and, with log_model, for MLflow's one-time scan
of the installed packages): it is a warm-up, left out. Settings take turns round by round, so that
machine load hits each alike.

  run s      the run's wall time, start to end (MLflow's own timestamps), median over the rounds
  epoch s    the mean of its time/epoch_s, median over the rounds
  + s/run    run s - the plain setting's run s
  model KB   the logged model's folder (MLmodel, the pickled network, its requirements)

Data: Fashion-MNIST from Debian's dataset-fashion-mnist folder (the default; falls back to digits with a
line saying so when it is absent).
"""

import argparse
import os
import statistics
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {
    "plain": ["tracking.log_model=false", "tracking.system_metrics=false"],
    "log_model": ["tracking.log_model=true", "tracking.system_metrics=false"],
    "system_metrics 10 s": ["tracking.log_model=false", "tracking.system_metrics=true"],
    "system_metrics 1 s": ["tracking.log_model=false", "tracking.system_metrics=true",
                           "tracking.system_metrics_interval_s=1"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (OMP_NUM_THREADS)")
    parser.add_argument("--dataset", default="fashion_mnist", choices=["fashion_mnist", "digits"])
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)

    import torch
    from hydra import compose, initialize_config_dir
    from mlflow.tracking import MlflowClient

    import normexp.config.schema  # noqa: F401  registers the schemas conf/ extends
    from normexp import data, train

    torch.set_num_threads(args.threads)
    dataset = args.dataset
    if dataset == "fashion_mnist" and not data.KNOWN_LOCAL_ROOTS["fashion_mnist"].exists():
        print("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist): digits instead")
        dataset = "digits"
    store = Path(tempfile.mkdtemp(prefix="tracking_cost-"))
    uri = f"sqlite:///{store}/mlflow.db"
    client = MlflowClient(uri)

    def one_run(extra: list[str]):
        with initialize_config_dir(str(ROOT / "conf"), version_base=None):
            cfg = compose("train", overrides=[f"dataset={dataset}", f"trainer.max_epochs={args.epochs}",
                                              "probes.enabled=false", "trainer.progress_bar=false",
                                              f"tracking.uri={uri}", "tracking.experiment=tracking_cost", *extra])
        outcome = train.run(cfg)
        run = client.get_run(outcome.run_id)
        size = None
        if run.outputs.model_outputs:
            model = client.get_logged_model(run.outputs.model_outputs[0].model_id)
            folder = Path(model.artifact_location.removeprefix("file://"))
            size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1024
        return (run.info.end_time - run.info.start_time) / 1000, outcome.epoch_s, size

    print(f"data {dataset}, {args.epochs} epochs a run, {args.repeats} rounds, torch threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    one_run(SETTINGS["log_model"])  # warm-up: the data, MLflow's package scan
    results = {name: [] for name in SETTINGS}
    for _ in range(args.repeats):
        for name, extra in SETTINGS.items():
            results[name].append(one_run(extra))
    plain_s = statistics.median(r[0] for r in results["plain"])
    print(f"{'setting':<22}{'run s':>8}{'epoch s':>9}{'+ s/run':>9}{'model KB':>10}")
    for name, rows in results.items():
        run_s, epoch_s = statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows)
        sizes = [r[2] for r in rows if r[2] is not None]
        size = f"{statistics.median(sizes):.0f}" if sizes else "-"
        print(f"{name:<22}{run_s:>8.2f}{epoch_s:>9.2f}{run_s - plain_s:>+9.2f}{size:>10}")
    # The logging alone, on the last run's network: the first call in a fresh process pays MLflow's scan of
    # the installed packages, so it runs in a process of its own.
    last = client.search_runs([client.get_experiment_by_name("tracking_cost").experiment_id], max_results=1)[0]
    print(f"logged_model.log alone, first call in a process: {time_log_model(uri, last.info.run_id, 1):.2f} s; "
          f"later calls: {time_log_model(uri, last.info.run_id, 5):.2f} s (median of 5)")
    print(f"load average at the end {os.getloadavg()[0]:.2f}; store {store}")


def time_log_model(uri: str, run_id: str, calls: int) -> float:
    """Median seconds of `calls` logged_model.log calls (after one untimed call unless calls == 1), in a
    fresh process, for the default MLP on Fashion-MNIST-shaped inputs."""
    import subprocess
    import sys

    script = f"""
import statistics, time, numpy as np, torch
from mlflow.tracking import MlflowClient
from hydra import compose, initialize_config_dir
import normexp.config.schema
from normexp.models import networks
from normexp.tracking import logged_model
with initialize_config_dir({str(ROOT / "conf")!r}, version_base=None):
    cfg = compose("train")
net = networks.build(cfg.model, cfg.norm, (1, 28, 28), 10)
client = MlflowClient({uri!r})
run = client.get_run({run_id!r})
example = np.zeros((2, 1, 28, 28), dtype=np.float32)
times = []
for _ in range({calls} + ({calls} > 1)):
    start = time.perf_counter()
    logged_model.log(client, run.info.experiment_id, run.info.run_id, net, example)
    times.append(time.perf_counter() - start)
print(statistics.median(times[-{calls}:]))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return float(done.stdout.split()[-1])


if __name__ == "__main__":
    main()
