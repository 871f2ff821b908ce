"""The command line of the Hydra entry points (`python -m normexp.train`, `python -m normexp.search`).

- Bad input is one line, `error: <the bad value, what is allowed, the fix>`, and exit status 1: our
  ConfigErrors and Hydra's own refusals (an unknown option of a group, a wrong type, an unknown key, an
  unparsable override), which Hydra would print as a multi-line block. So is a fault of the machine
  mid-run (normexp.tracking.faults: a full disk, a tracking server that stopped answering), once its runs
  have ended FAILED.
- SIGINT and SIGTERM end every run KILLED and exit non-zero. Inside a job, `signals_raise` turns the
  first one into KeyboardInterrupt / SystemExit, which the job's runs end on (tracking.ending). In the
  launching process of a joblib sweep the jobs run in worker processes: the signal is passed on to them
  (a terminal sends SIGINT to them too; SIGTERM reaches only this process) and this process waits until
  they have ended their runs before it stops.
"""

import functools
import gc
import multiprocessing
import os
import signal
import sys
import threading
from contextlib import contextmanager
from dataclasses import fields, is_dataclass

from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

import normexp
from normexp.errors import ConfigError
from normexp.tracking import faults, lifecycle, source

WORKERS_GRACE_S = 30  # how long an interrupted sweep waits for its joblib workers to end their runs
# The signal this process is ending on; later ones are ignored. Process state: signals come to the process.
_interrupted: list[int] = []
_imports_frozen: list[bool] = []  # freeze_imports has run in this process


def freeze_imports() -> None:
    """Moves every object alive now to the garbage collector's permanent generation, once per process, before
    its first run: ~1M objects of the modules imported (torch, Lightning, MLflow, Hydra), which no collection
    traverses again, neither the full ones during training nor the one at exit. A command's process spends
    ~2 s less CPU (docs/performance.md). Once only: a later call would also freeze the cycles of a finished
    run (a Trainer's), which the collector could then never free. Puts back the collector's thresholds, which
    normexp's import set to defer full passes while those modules loaded (normexp/__init__.py)."""
    if not _imports_frozen:
        gc.freeze()
        gc.set_threshold(*normexp.GC_THRESHOLDS)
        _imports_frozen.append(True)


def entry_point(hydra_main):
    """Wraps a @hydra.main function; see the module docstring."""

    @functools.wraps(hydra_main)
    def main():
        freeze_imports()
        entry = hydra_main.__module__  # under `python -m normexp.train` it is __main__, named by its spec
        if entry == "__main__":
            entry = getattr(sys.modules["__main__"].__spec__, "name", None) or sys.argv[0]
        source.record_command(entry, sys.argv[1:])
        asked = os.environ.get("HYDRA_FULL_ERROR")
        os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises its errors instead of printing them: we print one line
        try:
            with signals_raise(forward_to_workers=True):
                return hydra_main()
        except BaseException as error:
            lifecycle.end_held_runs(error)  # a sweep's parent run; a single run has ended already
            if isinstance(error, KeyboardInterrupt):
                print("interrupted: its runs ended KILLED", file=sys.stderr)
                sys.exit(128 + signal.SIGINT)  # without a traceback
            line = refusal(error) if isinstance(error, Exception) else None  # SystemExit: its line is made
            if line and asked != "1":
                sys.exit(f"error: {line}")
            raise
        finally:
            if asked is None:
                del os.environ["HYDRA_FULL_ERROR"]
            else:
                os.environ["HYDRA_FULL_ERROR"] = asked

    return main


@contextmanager
def signals_raise(forward_to_workers: bool):
    """While inside: the first SIGINT raises KeyboardInterrupt, the first SIGTERM SystemExit(143); later ones
    are ignored for the rest of the process, so that the runs' ending is not cut short (SIGKILL still
    stops it; the lease then tells). `forward_to_workers`: first pass the signal on to the child processes
    (joblib's workers) and wait for the runs under the runs this process holds to end.

    In a worker process (joblib's, the search's), the signals are ignored on leaving, until its next job:
    the launching process passes them on to every worker, and a worker that died of one between jobs
    made joblib see a broken pool and SIGKILL the others in the middle of ending their runs (which then
    waited WORKERS_GRACE_S, and the lease, to be ended KILLED)."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread receives signals
        yield
        return

    def handler(signum, frame):
        if _interrupted:
            return
        _interrupted.append(signum)
        workers = multiprocessing.active_children() if forward_to_workers else []
        for worker in workers:
            try:
                os.kill(worker.pid, signum)
            except ProcessLookupError:
                pass
        if workers:
            lifecycle.wait_for_children(WORKERS_GRACE_S)
        raise KeyboardInterrupt() if signum == signal.SIGINT else SystemExit(128 + signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    in_worker = not forward_to_workers and multiprocessing.parent_process() is not None
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, signal.SIG_IGN if in_worker else h)


def is_bad_input(error: BaseException) -> bool:
    return isinstance(error, (ConfigError, HydraException, OmegaConfBaseException))


def refusal(error: BaseException) -> str | None:
    """The one line a command ends with for bad input or a fault; None for a bug (its traceback is shown)."""
    return one_line(error) if is_bad_input(error) else faults.explain(error)


def one_line(error: BaseException) -> str:
    """Hydra's and OmegaConf's multi-line refusals as one line naming the bad value and what is allowed."""
    cause = error.__cause__ if isinstance(error.__cause__, OmegaConfBaseException) else error
    if isinstance(error, MissingConfigException) and error.options:
        group, _, name = (error.missing_cfg_file or "").rpartition("/")
        return f"unknown {group} '{name}'; expected one of {', '.join(error.options)}"
    if isinstance(error, OverrideParseException):
        return (f"cannot parse the override '{error.override}': {error.message.splitlines()[0]}; see "
                "https://hydra.cc/docs/advanced/override_grammar/basic/")
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and is_dataclass(cause.object_type):
        known = ", ".join(f.name for f in fields(cause.object_type))
        where = cause.full_key.rpartition(".")[0] or "the config"
        return f"unknown key {cause.full_key}; {where} ({cause.object_type_str}) has: {known}"
    if isinstance(cause, ValidationError) and is_dataclass(cause.object_type):
        kind = {f.name: f.type for f in fields(cause.object_type)}.get(cause.key)
        kind = kind.__name__ if isinstance(kind, type) else str(kind).replace("typing.", "")
        return f"{cause.full_key}={cause.value} is refused: {cause.full_key} is typed {kind} ({cause.msg.splitlines()[0]})"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    lines = lines[: next((i for i, line in enumerate(lines) if line.startswith("Config search path")), len(lines))]
    if cause is not error:
        lines.append(str(cause).splitlines()[0])
    return "; ".join(lines)
