"""A Hydra multirun in MLflow: its parent run (a Hydra callback in the launching process), the guard
around each job's work, and the report that ends the sweep. Callbacks hold no state that the jobs
must change: what a job produced is read back from MLflow, so they work under any launcher and in
single runs (where there is no parent) alike."""

import json
import logging
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from mlflow.utils.validation import MAX_TAG_VAL_LENGTH
from omegaconf import DictConfig

from normexp import comparisons, plots, report, tracking
from normexp.errors import ConfigError

PARENT_RUN_FILE = "mlflow_parent_run_id"  # in a Hydra sweep folder: the sweep's parent run
STUDY_SUMMARY_ARTIFACT = "summary.json"   # in a study's run (normexp.search): its bracket
log = logging.getLogger(__name__)


def parent_run_id() -> str | None:
    """The parent run of the Hydra multirun this job belongs to, or None outside a multirun."""
    if not HydraConfig.initialized() or HydraConfig.get().mode.name != "MULTIRUN":
        return None
    marker = Path(HydraConfig.get().sweep.dir) / PARENT_RUN_FILE
    return marker.read_text().strip() if marker.exists() else None


@contextmanager
def hydra_job(tracking_cfg):
    """Around the work of a Hydra job (train or search); yields the sweep's parent run id (None outside
    a multirun). A ConfigError in a single run becomes one line on stderr and exit status 1; in a
    multirun Hydra records the failed job, runs the others, then reports it. An interrupt ends the
    sweep's parent run KILLED: Hydra's end-of-sweep callbacks never run then."""
    parent = parent_run_id()
    try:
        yield parent
    except ConfigError as error:
        if parent is not None:
            raise
        sys.exit(f"error: {error}")
    except (KeyboardInterrupt, SystemExit):  # Lightning turns Ctrl-C into SystemExit
        if parent:
            tracking.end_run(tracking.client_and_experiment(tracking_cfg)[0], parent, "KILLED")
        raise


class SweepParentRun(Callback):
    """One MLflow parent run per multirun (jobs find its id in the sweep folder); at the end, the
    comparison report of its training runs on it and in the terminal."""

    def __init__(self):
        self.run_id: str | None = None  # stays None in a single run, where there is no parent

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        self.client, self.run_id = tracking.start_sweep_run(config.tracking, sweep_dir,
                                                            " ".join(config.hydra.overrides.task))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / PARENT_RUN_FILE).write_text(self.run_id)

    def on_job_end(self, config: DictConfig, job_return, **kwargs) -> None:
        # Hydra raises the first failed job only after the whole sweep; mark the parent now, so an
        # aborted sweep is never left RUNNING.
        if self.run_id and job_return.status.name == "FAILED":
            if self.client.get_run(self.run_id).info.status == "RUNNING":
                self.client.set_tag(self.run_id, "failed_job", " ".join(job_return.overrides))
                tracking.end_run(self.client, self.run_id, "FAILED")

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if self.client.get_run(self.run_id).info.status != "RUNNING":  # already FAILED by a job
            return
        try:
            self.report(config)
        except Exception as error:  # every job has finished: a report bug must not leave the parent RUNNING
            log.exception("the sweep's report failed; its runs are complete in MLflow")
            self.client.set_tag(self.run_id, "report_error", repr(error)[:MAX_TAG_VAL_LENGTH])
        finally:
            tracking.end_run(self.client, self.run_id, "FINISHED")
        print(f"\nBrowse the runs: mlflow ui --backend-store-uri {tracking.tracking_uri(config.tracking)} --host 127.0.0.1\n"
              f"  experiment '{config.tracking.experiment}', sweep parent run {self.run_id}; "
              f"Hydra's job folders: {config.hydra.sweep.dir}")

    def report(self, config: DictConfig) -> None:
        answer = report.build_report(self.client, self.run_id)
        try:
            report.log_to_run(self.client, self.run_id, answer)
            print(answer.markdown)
        finally:
            answer.close()


class CrossVariantReport(SweepParentRun):
    """The sweep callback of `python -m normexp.search -m norm=...` (in place of train.yaml's): the
    same parent run, every study's run its child; at the end the studies side by side
    (stable_lr.md, stable_lr.csv, plots/stable_lr.png) on that parent run and in the sweep folder."""

    def report(self, config: DictConfig) -> None:
        summaries = [_study_summary(self.client, run.info.run_id)
                     for run in report.sweep_runs(self.client, self.run_id) if "study" in run.data.tags]
        result = comparisons.stable_lr_table(summaries)
        result.save(Path(config.hydra.sweep.dir))
        result.log_to_run(self.client, self.run_id, "")
        print(result.markdown)
        plots.log_figure(self.client, self.run_id, plots.max_stable_lr_bars(result.records), "plots/stable_lr.png")
        unique = len({r["variant"] for r in result.records}) == len(result.records)
        tracking.log_metrics(self.client, self.run_id, {
            f"max_stable_lr/{r['variant'] if unique else r['study'].removeprefix('stable-lr/')}": r["max_stable_lr"]
            for r in result.records if r["max_stable_lr"] is not None})


def _study_summary(client, run_id: str) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        return json.loads(Path(client.download_artifacts(run_id, STUDY_SUMMARY_ARTIFACT, folder)).read_text())
