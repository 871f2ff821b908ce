"""The reports that end a sweep: Hydra callbacks (conf's hydra.callbacks) on the sweep's parent run
(tracking.sweep.SweepParentRun), in a module that training never imports."""

from pathlib import Path

from omegaconf import DictConfig

from normexp import report
from normexp.analysis import comparisons, plots
from normexp.stable_lr import study as studies
from normexp.tracking import lifecycle
from normexp.tracking.sweep import SweepParentRun


class SweepReport(SweepParentRun):
    """The sweep callback of `python -m normexp.train -m`: the comparison report of its training runs."""

    def report(self, config: DictConfig) -> None:
        answer = report.build_report(self.client, self.run_id)
        try:
            report.log_to_run(self.client, self.run_id, answer)
            print(answer.markdown)
        finally:
            answer.close()


class CrossVariantReport(SweepParentRun):
    """The sweep callback of `python -m normexp.search -m norm=...`: the same parent run, every study's run
    its child; at the end the studies side by side (stable_lr.md, stable_lr.csv, plots/stable_lr.png) on
    that parent run and in the sweep folder."""

    def report(self, config: DictConfig) -> None:
        summaries = [studies.load_summary(self.client, run.info.run_id)
                     for run in report.sweep_runs(self.client, self.run_id) if "study" in run.data.tags]
        result = comparisons.stable_lr_table(summaries)
        result.save(Path(config.hydra.sweep.dir))
        result.log_to_run(self.client, self.run_id, "")
        print(result.markdown)
        plots.log_figure(self.client, self.run_id, plots.max_stable_lr_bars(result.records), "plots/stable_lr.png")
        unique = len({r["variant"] for r in result.records}) == len(result.records)
        lifecycle.log_metrics(self.client, self.run_id, {
            f"max_stable_lr/{r['variant'] if unique else r['study'].removeprefix('stable-lr/')}": r["max_stable_lr"]
            for r in result.records if r["max_stable_lr"] is not None})
