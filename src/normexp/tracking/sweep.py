"""A Hydra multirun in MLflow: its parent run (a Hydra callback in the launching process) and the guard
around each job's work; the report that ends the sweep is normexp.sweep_report's. Callbacks hold no state that the jobs
must change: what a job produced is read back from MLflow, so they work under any launcher and in
single runs (where there is no parent) alike."""

import functools
import itertools
import logging
from contextlib import contextmanager
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from mlflow.utils.validation import MAX_TAG_VAL_LENGTH
from omegaconf import DictConfig

from normexp import threads
from normexp.config import schema as schemas
from normexp.tracking import commands, faults, launchers, lifecycle, progress, stores
from normexp.config.schema import TrackingConfig

PARENT_RUN_FILE = "mlflow_parent_run_id"  # in a Hydra sweep folder: the sweep's parent run
SWEPT_KEYS_FILE = "swept_keys"  # beside it: the keys its jobs differ in, one a line (their run names say them)
log = logging.getLogger(__name__)


def _sweep_file(name: str) -> str | None:
    """The text of file `name` in this Hydra multirun's sweep folder (the launching process writes it);
    None outside a multirun, or where there is no such file."""
    if not HydraConfig.initialized() or HydraConfig.get().mode.name != "MULTIRUN":
        return None
    marker = Path(HydraConfig.get().sweep.dir) / name
    return marker.read_text() if marker.exists() else None


def parent_run_id() -> str | None:
    """The parent run of the Hydra multirun this job belongs to, or None outside a multirun."""
    text = _sweep_file(PARENT_RUN_FILE)
    return text.strip() if text else None


def swept_keys() -> list[str]:
    """The keys the jobs of this Hydra multirun differ in (e.g. ['norm', 'model.depth']); [] outside one."""
    return (_sweep_file(SWEPT_KEYS_FILE) or "").split()


@contextmanager
def hydra_job(tracking_cfg: TrackingConfig):
    """Around the work of a Hydra job (train or search), in the process that runs it (the launching
    process, or a joblib worker); yields the sweep's parent run id (None outside a multirun). SIGINT and
    SIGTERM raise (commands.signals_raise): the job's runs end KILLED, and so does the sweep's parent run,
    whose end-of-sweep callback Hydra never runs then. Bad input and faults are raised: a single run
    prints their one line (commands.entry_point); a multirun records the failed job, runs the others, then
    raises it."""
    commands.freeze_imports()  # a joblib or SLURM worker, at its first job (a command froze at its start)
    parent = parent_run_id()
    threads.use(threads.sweep_jobs_at_once())  # a parallel sweep's jobs share the CPUs
    with commands.signals_raise(forward_to_workers=False):
        try:
            yield parent
        except (KeyboardInterrupt, SystemExit):  # Lightning turns Ctrl-C into SystemExit
            if parent:
                lifecycle.end_run(lifecycle.client_and_experiment(tracking_cfg)[0], parent, "KILLED")
            raise
        except Exception as error:
            line = commands.refusal(error) if parent is None else None
            if line:  # else Hydra adds a line "Error executing job ..."
                raise SystemExit(f"error: {line}") from None
            raise


def job_label() -> str:
    """'[job 3/40] ' in a job of a multirun (parallel jobs' lines interleave), else ''. Counted from 1: the
    job's Hydra folder is one less (its hydra.job.num)."""
    if not HydraConfig.initialized() or HydraConfig.get().mode.name != "MULTIRUN":
        return ""
    total = progress.total(Path(HydraConfig.get().sweep.dir))
    return f"[job {HydraConfig.get().job.num + 1}{f'/{total}' if total else ''}] "


def reports_failed_sweeps(hydra_main):
    """Wraps a @hydra.main function (inside commands.entry_point). After the last job, Hydra raises the first
    failed job's error and skips on_multirun_end: the report of the jobs that did finish is made here,
    then the error goes on (commands.entry_point ends the parent run FAILED, recording it)."""

    @functools.wraps(hydra_main)
    def main():
        try:
            return hydra_main()
        except Exception:
            for sweep in list(_open_sweeps):
                sweep.report_safely()
                sweep.print_where()
            raise

    return main


def _jobs(sweeper_params, task_overrides) -> list[list[str]]:
    """The jobs' overrides, as Hydra's basic sweeper splits a multirun: a preset's hydra.sweeper.params,
    then the command line's overrides, a later one replacing an earlier one of the same key (a,b,c
    sweeps; others left to Hydra)."""
    params = [f"{key}={value}" for key, value in (sweeper_params or {}).items()]
    choices = {}
    for override in OverridesParser.create().parse_overrides(params + list(task_overrides)):
        key = override.get_key_element()
        values = (override.sweep_string_iterator() if override.is_discrete_sweep()
                  else [] if override.is_sweep_override() else [override.get_value_element_as_str()])
        choices[key] = [f"{key}={value}" for value in values]
    return [list(job) for job in itertools.product(*choices.values())]


class SweepParentRun(Callback):
    """One MLflow parent run per multirun (jobs find its id in the sweep folder); at the end, the report
    that a subclass makes (normexp.sweep_report) on it and in the terminal."""

    def __init__(self):
        self.run_id: str | None = None  # stays None in a single run, where there is no parent

    def on_multirun_start(self, config: DictConfig, config_name: str | None = None, **kwargs) -> None:
        # Refuse a misspelt option, a wrong type, a value out of its domain, a launcher setting or a store
        # that cannot work before the parent run exists (Hydra composes the jobs' configs only after
        # this). Hydra turns a callback's exception into a warning and goes on: SystemExit stops it,
        # with the one line.
        jobs = _jobs(config.hydra.sweeper.get("params"), config.hydra.overrides.task)
        try:
            for job in jobs if config_name else []:  # None: not called by Hydra
                schemas.check(hydra.compose(config_name, overrides=job))
            launchers.check(config.hydra.launcher)
            stores.check(config.tracking)
            lifecycle.connect(config.tracking)
        except Exception as error:
            if not commands.is_bad_input(error):
                raise
            raise SystemExit(f"error: {commands.one_line(error)}") from None
        sweep_dir = Path(config.hydra.sweep.dir)
        self.client, self.run_id = lifecycle.start_sweep_run(config.tracking, sweep_dir,
                                                            " ".join(config.hydra.overrides.task))
        progress.begin(sweep_dir, len(jobs), threads.launcher_jobs_at_once(config.hydra.launcher, len(jobs)))
        (sweep_dir / PARENT_RUN_FILE).write_text(self.run_id)
        values = {}  # key -> the values its jobs give it
        for override in (o for job in jobs for o in job):
            key, value = override.split("=", 1)
            values.setdefault(key, set()).add(value)
        (sweep_dir / SWEPT_KEYS_FILE).write_text("".join(f"{key}\n" for key, seen in values.items() if len(seen) > 1))
        self.config = config
        _open_sweeps.append(self)  # until on_multirun_end, which a failed job skips (reports_failed_sweeps)

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        if HydraConfig.get().mode.name == "MULTIRUN":  # also called for a single run, which keeps no progress
            progress.job_started(Path(config.hydra.sweep.dir), config.hydra.job.num)

    def on_job_end(self, config: DictConfig, job_return, **kwargs) -> None:
        # Under joblib or SLURM this runs in the job's process, on a copy of this callback: the parent run's
        # id is read from the sweep folder, as the jobs read it. The parent names its failed jobs; it ends
        # FAILED when the sweep does (commands.entry_point: Hydra raises the first failure after the last job).
        if HydraConfig.get().mode.name != "MULTIRUN":
            return
        sweep_dir, failed = Path(config.hydra.sweep.dir), job_return.status.name == "FAILED"
        progress.job_ended(sweep_dir, config.hydra.job.num, failed)
        parent = parent_run_id()
        if parent and failed:
            client = lifecycle.client_and_experiment(config.tracking)[0]
            failed_jobs = [client.get_run(parent).data.tags.get("failed_job"), " ".join(job_return.overrides)]
            lifecycle.set_tags(client, parent, {"failed_job": "; ".join(filter(None, failed_jobs))})
        counts = progress.counts(sweep_dir)
        if counts:
            progress.say(f"[sweep] {counts.line()}")

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        _open_sweeps.remove(self)
        if self.client.get_run(self.run_id).info.status != "RUNNING":  # ended by an interrupted job
            return
        try:
            self.report_safely()
        finally:  # every job has finished: nothing may leave the parent RUNNING
            lifecycle.end_run(self.client, self.run_id, "FINISHED")
        self.print_where()

    def report_safely(self) -> None:
        try:
            self.report(self.config)
        except Exception as error:  # a report bug must not hide the runs, complete in MLflow
            if faults.explain(error):  # the store's fault, which the sweep ends with: no traceback for it
                log.warning("the sweep's report was not made: %s", faults.explain(error))
                return
            log.exception("the sweep's report failed; its runs are complete in MLflow")
            self.client.set_tag(self.run_id, "report_error", repr(error)[:MAX_TAG_VAL_LENGTH])

    def print_where(self) -> None:
        config = self.config
        experiment_id = self.client.get_run(self.run_id).info.experiment_id
        print(f"\n{stores.browse_line(stores.tracking_uri(config.tracking), experiment_id)}\n"
              f"  experiment '{config.tracking.experiment}', sweep parent run {self.run_id}; "
              f"Hydra's job folders: {config.hydra.sweep.dir}", flush=True)

    def report(self, config: DictConfig) -> None:
        """What the sweep ends with, on its parent run and in the terminal: normexp.sweep_report's callbacks
        (conf's hydra.callbacks), so that training never loads the reporting side."""
        raise NotImplementedError(f"{type(self).__name__} makes no report; use normexp.sweep_report.SweepReport")


# This process's multiruns that Hydra has not ended yet. Process state: Hydra holds its callbacks and, after a
# failed job, never calls them again; reports_failed_sweeps finds them here.
_open_sweeps: list[SweepParentRun] = []
