"""Reliability: the status every run ends in under each fault, for a serial sweep (Hydra's basic
launcher) and a parallel one (`hydra/launcher=joblib`, two worker processes); then what each bad input
prints. Real commands (`python -m normexp.train` / `normexp.search`) on a temporary SQLite store.
Prints two Markdown tables (docs/reliability.md).

    python benchmarks/reliability.py            # about 15 minutes on a busy 2-core CPU
    python benchmarks/reliability.py --faults   # or only one of the two tables
    python benchmarks/reliability.py --inputs
"""

import argparse
import gzip
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from mlflow.tracking import MlflowClient

LAUNCHERS = {"serial": [], "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]}
LONG = ["norm=bn,none", "trainer.max_epochs=500"]  # two jobs that train until stopped
FAULTS = {  # fault -> (the sweep's overrides, what stops it)
    "normal": (["norm=bn,none", "trainer.max_epochs=2"], None),
    "exception in one job (no TPU here)": (["trainer.accelerator=cpu,tpu", "trainer.max_epochs=2"], None),
    "divergence (lr 10, no norm)": (["norm=none", "optim.lr=10,0.001", "trainer.max_epochs=2"], None),
    "SIGINT (Ctrl-C: the process group)": (LONG, "SIGINT"),
    "SIGTERM (the launching process)": (LONG, "SIGTERM"),
    "SIGKILL (the process group), then the next command": (LONG, "SIGKILL"),
}
# A short lease, so that the next command after a SIGKILL finds it expired within seconds.
LEASE = ["tracking.heartbeat_s=0.5", "tracking.lease_s=3"]


def start(args: list[str], folder: Path) -> subprocess.Popen:
    # Its own process group, as a terminal gives a command; SIGINT's default handler restored (a process
    # started in the background by a non-interactive shell ignores SIGINT).
    return subprocess.Popen([sys.executable, "-m", *args], cwd=folder, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def runs_of(client: MlflowClient, experiment: str) -> list:
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


def describe(run) -> str:
    tags = run.data.tags
    notes = ["diverged" if tags.get("diverged") == "true" else tags["error"].split(":")[0] if "error" in tags
             else "lease expired" if "killed_reason" in tags else "",
             f"failed_job: {tags['failed_job'].split()[0]}" if "failed_job" in tags else ""]
    notes = "; ".join(n for n in notes if n)
    return run.info.status + (f" ({notes})" if notes else "")


def fault_row(fault: str, launcher: str, folder: Path, uri: str) -> list[str]:
    overrides, stop = FAULTS[fault]
    experiment = f"{launcher}-{fault.split()[0]}"
    process = start(["normexp.train", "-m", *LAUNCHERS[launcher], *overrides, *LEASE, f"tracking.uri={uri}",
                     f"tracking.experiment={experiment}", f"hydra.sweep.dir={folder / experiment}",
                     "trainer.progress_bar=false"], folder)
    client, stopped_at, jobs_at_once = MlflowClient(uri), time.monotonic(), 2 if launcher == "joblib" else 1
    if stop:
        while sum(r.info.status == "RUNNING" and "val/acc" in r.data.metrics
                  for r in runs_of(client, experiment)) < jobs_at_once:
            if process.poll() is not None:
                raise SystemExit(f"{fault}, {launcher}: ended before the signal\n{process.stderr.read()[-3000:]}")
            time.sleep(0.3)
        time.sleep(1)
        stopped_at = time.monotonic()
        if stop == "SIGTERM":
            process.send_signal(signal.SIGTERM)
        else:
            os.killpg(process.pid, getattr(signal, stop))
    status = process.wait(timeout=600)
    seconds = time.monotonic() - stopped_at
    if stop == "SIGKILL":
        left = {describe(r) for r in runs_of(client, experiment)}
        time.sleep(3.5)  # the lease runs out
        subprocess.run([sys.executable, "-m", "normexp.report", "--experiment", experiment, "--tracking-uri", uri,
                        "--out", str(folder / "report")], cwd=folder, capture_output=True, timeout=300)
    runs = runs_of(client, experiment)
    parent = [describe(r) for r in runs if "mlflow.parentRunId" not in r.data.tags]
    jobs = sorted(describe(r) for r in runs if "mlflow.parentRunId" in r.data.tags)
    after = f"all {', '.join(sorted(left))} until the next command, then " if stop == "SIGKILL" else ""
    return [fault, launcher, str(status if status >= 0 else f"killed ({signal.Signals(-status).name})"),
            f"{seconds:.1f}" if stop else "", after + ", ".join(parent), ", ".join(jobs)]


def damaged_idx_folder(folder: Path) -> Path:
    """MNIST's four IDX files, tiny, the training images cut short (a download that broke off)."""
    folder.mkdir()
    for stem, n in (("train", 60), ("t10k", 20)):
        for kind, array in (("images-idx3", np.zeros((n, 28, 28))), ("labels-idx1", np.arange(n) % 10)):
            header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
            cut = -100 if (stem, kind) == ("train", "images-idx3") else None
            with gzip.open(folder / f"{stem}-{kind}-ubyte.gz", "wb") as f:
                f.write(header + array.astype(np.uint8).tobytes()[:cut])
    return folder


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bad_inputs(folder: Path) -> list[tuple[str, list[str]]]:
    return [
        ("train", ["norm=bm"]), ("train", ["model=mpl"]), ("train", ["dataset=minst"]), ("train", ["optim=adamm"]),
        ("train", ["experiment=convergance"]), ("train", ["optim.lr=-1"]), ("train", ["optim.lr=abc"]),
        ("train", ["optim.lrr=0.1"]), ("train", ["dataset.batch_size=1"]), ("train", ["norm=gn", "norm.num_groups=3"]),
        ("train", ["norm=in"]), ("train", ["dataset.fraction=1.5"]), ("train", ["dataset.val_fraction=0"]),
        ("train", ["dataset.train_size=100000"]), ("train", ["trainer.max_epochs=0"]),
        ("train", ["dataset=cifar10", f"dataset.download_dir={folder / 'nothing'}"]),
        ("train", ["dataset=mnist", f"dataset.root={damaged_idx_folder(folder / 'damaged')}"]),
        ("train", ["tracking.uri=sqlite:////proc/normexp/mlflow.db"]),
        ("train", [f"tracking.uri=http://127.0.0.1:{closed_port()}"]),
        ("train", ["trainer.resume=true"]),
        ("train", ["-m", "norm=bn,bm"]),
        ("search", ["search.lr_min=10", "search.lr_max=1"]),
        ("search", ["trainer.resume=true"]),
    ]


def input_row(module: str, overrides: list[str], folder: Path, index: int) -> list[str]:
    store = folder / f"input{index}"
    defaults = [f"hydra.run.dir={store}/out", f"hydra.sweep.dir={store}/sweep"]
    if not any(o.startswith("tracking.uri=") for o in overrides):
        defaults.append(f"tracking.uri=sqlite:///{store}/mlflow.db")
    if module == "search":
        defaults.append(f"search.storage=sqlite:///{store}/optuna.db")
    flags = [o for o in overrides if o.startswith("-")]
    start_s = time.monotonic()
    done = subprocess.run([sys.executable, "-m", f"normexp.{module}", *flags, *defaults,
                           *[o for o in overrides if not o.startswith("-")]], cwd=folder, capture_output=True,
                          text=True, timeout=600)
    seconds = time.monotonic() - start_s
    lines = done.stderr.strip().splitlines()
    recorded = (len(MlflowClient(f"sqlite:///{store}/mlflow.db").search_runs(
        [e.experiment_id for e in MlflowClient(f"sqlite:///{store}/mlflow.db").search_experiments()]))
                if (store / "mlflow.db").exists() else "0 (no store)")
    shown = " ".join(overrides).replace(str(folder), "<tmp>")
    printed = (lines[-1] if lines else "").replace(str(folder), "<tmp>").replace("|", "\\|")
    return [f"`normexp.{module} {shown}`", f"{len(lines)}: {printed}", str(done.returncode), f"{seconds:.1f}",
            str(recorded)]


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faults", action="store_true", help="only the faults table")
    parser.add_argument("--inputs", action="store_true", help="only the bad-input table")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # tiny models: a second thread per process only contends
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        uri = f"sqlite:///{folder}/mlflow.db"
        if not args.inputs:
            rows = [fault_row(fault, launcher, folder, uri) for fault in FAULTS for launcher in LAUNCHERS]
            print(table(["fault", "launcher", "exit status", "s to exit after the signal", "sweep's parent run",
                         "jobs' runs"], rows) + "\n")
        if not args.faults:
            rows = [input_row(module, overrides, folder, i) for i, (module, overrides) in enumerate(bad_inputs(folder))]
            print(table(["command (bad input)", "lines on stderr: the last", "exit status", "s", "runs recorded"], rows))


if __name__ == "__main__":
    main()
