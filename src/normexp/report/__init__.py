"""Comparison reports: the runs of a sweep -> the tables (Markdown, CSV) and overlay plots that answer its
question; `python -m normexp.report` is its command (report/command.py).

Runs that differ only by seed form one variant (normexp.analysis.variants); the config params that vary across
the runs name the variants and decide which tables (normexp.analysis.comparisons) and figures appear.
"""

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE
from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

from normexp.analysis import comparisons, histograms, plots, variants
from normexp.analysis.results import RunData
from normexp.analysis.stats import describe
from normexp.analysis.tables import Table
from normexp.analysis.variants import Variant
from normexp.errors import ConfigError
from normexp.tracking import lifecycle, stores

ARTIFACT_DIR = "report"  # in the parent run: report/report.md, report/<table>.csv, report/<figure>.png


@dataclass
class Report:
    title: str
    summary: list[str]          # lines above the tables: command, common settings, runs left out
    tables: list[Table]
    figures: dict[str, Figure]  # file stem -> figure

    @property
    def markdown(self) -> str:
        parts = [f"## {self.title}", "", *[f"{line}  " for line in self.summary], ""]
        parts += [table.markdown for table in self.tables]
        if self.figures:
            parts.append("Figures: " + ", ".join(f"{ARTIFACT_DIR}/{name}.png" for name in self.figures) + "\n")
        return "\n".join(parts)

    def close(self) -> None:
        for fig in self.figures.values():
            plots.plt.close(fig)


# ---- Reading runs from MLflow ------------------------------------------------------------------

def _search(client: MlflowClient, experiment_id: str, filter_string: str) -> list:
    return lifecycle.pages(client.search_runs, [experiment_id], filter_string, order_by=["attributes.start_time ASC"])


def sweep_runs(client: MlflowClient, parent_run_id: str) -> list:
    try:
        parent = client.get_run(parent_run_id)
    except MlflowException:
        raise ConfigError(f"no run '{parent_run_id}' in {client.tracking_uri}; pass the parent run id a "
                          "multirun printed (its children's tag `sweep`), and --tracking-uri if not the default") from None
    return _search(client, parent.info.experiment_id, f"tags.`mlflow.parentRunId` = '{parent_run_id}'")


def experiment_runs(client: MlflowClient, experiment: str, filter_string: str = "") -> list:
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = ", ".join(e.name for e in client.search_experiments())
        raise ConfigError(f"no experiment '{experiment}' in {client.tracking_uri}; it has: {names}")
    try:
        return _search(client, found.experiment_id, filter_string)
    except MlflowException as error:
        raise ConfigError(f"--filter \"{filter_string}\" is not an MLflow filter ({error.message}); "
                          "e.g. --filter \"tags.norm = 'bn' and params.`optim.lr` = '0.01'\"") from None


def _history(client: MlflowClient, run_id: str, key: str) -> list[float]:
    """One value per epoch (MLflow step = 1-based epoch); NaN for an epoch that logged none."""
    points = {m.step: m.value for m in client.get_metric_history(run_id, key)}
    return [points.get(step, math.nan) for step in range(1, max(points, default=0) + 1)]


def load_runs(client: MlflowClient, runs: list) -> tuple[list[RunData], list[str]]:
    """The finished training runs among `runs`, and a note for each one left out."""
    loaded, left_out = [], []
    for run in runs:
        if "norm.kind" not in run.data.params:  # a sweep's parent or a search study, not a training run
            continue
        if run.info.status != "FINISHED":
            left_out.append(f"left out: {run.info.run_name} ({run.info.run_id}) is {run.info.status}")
            continue
        tags = run.data.tags
        loaded.append(RunData(
            run_id=run.info.run_id, name=run.info.run_name, params=run.data.params, metrics=run.data.metrics,
            diverged=tags.get("diverged") == "true",
            diverged_at_step=int(tags["diverged_at_step"]) if "diverged_at_step" in tags else None,
            converged=tags.get("converged") == "true",
            train_loss=_history(client, run.info.run_id, "train/loss"),
            val_acc=_history(client, run.info.run_id, "val/acc"),
            jobs_at_once=int(tags.get("jobs_at_once", 1)),
        ))
    return loaded, left_out


# ---- Figures -----------------------------------------------------------------------------------

def mean_curve(curves: list[list[float]]) -> np.ndarray:
    """Mean over seeds per epoch, (E,); a run that stopped early (diverged) counts where it has values."""
    padded = np.full((len(curves), max(map(len, curves), default=0)), np.nan)  # (seeds, E)
    for i, curve in enumerate(curves):
        padded[i, : len(curve)] = curve
    return np.array([np.nanmean(col) if np.isfinite(col).any() else np.nan for col in padded.T])


def _accuracy_series(grouped: list[Variant], keys: list[str], x_key: str) -> dict:
    """{label of the other keys: (x, mean, std, diverged) arrays}: final val accuracy against x_key."""
    others = [k for k in keys if k != x_key]
    series = {}
    for v in grouped:
        mean, std, _ = describe(r.outcome.final_val_acc for r in v.runs)
        point = (float(v.values[x_key]), mean, std, any(r.diverged for r in v.runs))
        series.setdefault(v.label(others), []).append(point)
    return {label: tuple(np.array(values) for values in zip(*points)) for label, points in series.items()}


def _gradient_series(grouped: list[Variant], keys: list[str]) -> dict[str, np.ndarray]:
    """{variant label: its last-epoch grad/<layer>/norm per hidden block (mean over seeds), input side first};
    empty when the runs logged no gradient flow (probes off)."""
    series = {}
    for v in grouped:
        layers = comparisons.metric_layers(v.runs, "grad", "norm")
        if layers:
            series[v.label(keys)] = np.array([describe(r.metric(f"grad/{layer}/norm") for r in v.runs)[0]
                                              for layer in layers])
    return series


def figures(grouped: list[Variant], keys: list[str], target_acc: float | None) -> dict[str, Figure]:
    loss = {v.label(keys): mean_curve([r.train_loss for r in v.runs]) for v in grouped}
    acc = {v.label(keys): mean_curve([r.val_acc for r in v.runs]) for v in grouped}
    reached = {v.label(keys): describe(r.outcome.epochs_to_target for r in v.runs)[0] for v in grouped}
    result = {"curves": plots.overlay_curves(loss, acc, reached, target_acc)}
    for x_key, name in (("optim.lr", "learning rate"), ("dataset.batch_size", "batch size"),
                        ("model.init_scale", "init scale"), ("model.depth", "depth"), ("norm.momentum", "BN momentum")):
        if x_key in keys:
            result[f"accuracy_vs_{variants.column(x_key)}"] = plots.accuracy_vs(
                name, _accuracy_series(grouped, keys, x_key))
    gradients = _gradient_series(grouped, keys)
    if gradients:  # e.g. none vs bn at each depth: where the gradient vanishes
        result["gradient_norm_per_layer"] = plots.gradient_norm_per_layer(gradients)
    return result


# ---- The report --------------------------------------------------------------------------------

def report_from_runs(client: MlflowClient, runs: list, title: str, command: str | None = None) -> Report:
    browse = stores.browse_line(client.tracking_uri, runs[0].info.experiment_id) if runs else None
    return report_from_loaded(*load_runs(client, runs), title, command, browse)


def report_from_loaded(loaded: list[RunData], left_out: list[str], title: str, command: str | None = None,
                       browse: str | None = None) -> Report:
    """The report of training runs already read from MLflow (load_runs); `browse`: where to see them."""
    if not loaded:
        raise ConfigError(f"{title}: no finished training runs to report on"
                          + (f" ({'; '.join(left_out)})" if left_out else ""))
    keys = variants.variant_keys(loaded)
    grouped = variants.group(loaded, keys)
    summary = ([f"Command: `python -m normexp.train -m {command}`"] if command else []) + [
        f"{len(loaded)} runs, {len(grouped)} variant" + ("s" if len(grouped) > 1 else ""),
        variants.common_settings(loaded, keys), *left_out, *([browse] if browse else [])]
    targets = {r.params.get("dataset.target_acc") for r in loaded}
    target_acc = float(targets.pop()) if len(targets) == 1 else None
    return Report(title, summary, comparisons.for_sweep(grouped, keys), figures(grouped, keys, target_acc))


def build_report(client: MlflowClient, parent_run_id: str) -> Report:
    """The report of the multirun whose MLflow parent run is `parent_run_id`."""
    runs = sweep_runs(client, parent_run_id)
    parent = client.get_run(parent_run_id)
    return report_from_runs(client, runs, f"Report: {parent.info.run_name} (parent run {parent_run_id})",
                            parent.data.tags.get("overrides"))


def log_to_run(client: MlflowClient, run_id: str, report: Report) -> None:
    """Markdown, CSVs and PNGs under report/ in the run; the Markdown is also the run's description,
    shown at the top of the run in the MLflow UI."""
    client.log_text(run_id, report.markdown, f"{ARTIFACT_DIR}/report.md")
    for table in report.tables:
        table.log_to_run(client, run_id, ARTIFACT_DIR)
    for name, fig in report.figures.items():
        client.log_figure(run_id, fig, f"{ARTIFACT_DIR}/{name}.png")
    note = report.markdown
    if len(note) > MAX_TAG_VAL_LENGTH:
        note = note[: MAX_TAG_VAL_LENGTH - 100] + f"\n\n… (truncated; the whole report is {ARTIFACT_DIR}/report.md)\n"
    client.set_tag(run_id, MLFLOW_RUN_NOTE, note)


def save(report: Report, out_dir: Path) -> list[Path]:
    """report.md, <table>.md and <table>.csv for each table, <figure>.png; the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.md").write_text(report.markdown)
    written = [out_dir / "report.md"]
    for table in report.tables:
        written += table.save(out_dir)
    for name, fig in report.figures.items():
        fig.savefig(out_dir / f"{name}.png", dpi=100)
        written.append(out_dir / f"{name}.png")
    return written


def compare_activations(client: MlflowClient, run_a: str, run_b: str, layer: str) -> Figure:
    """The same layer's pre-activation distribution over epochs in two runs, side by side."""
    series, labels = [], []
    for run_id in (run_a, run_b):
        try:
            client.get_run(run_id)
        except MlflowException:
            raise ConfigError(f"--compare-activations: no run '{run_id}' in {client.tracking_uri}; pass two run ids "
                              "of training runs (the MLflow UI shows them)") from None
        try:
            by_layer = histograms.load(client, run_id)
        except (MlflowException, OSError):
            raise ConfigError(f"run '{run_id}' has no {histograms.ARTIFACT} artifact in {client.tracking_uri}; "
                              "was it trained with probes.enabled=true?") from None
        if layer not in by_layer:
            raise ConfigError(f"--layer {layer}: run '{run_id}' has no such layer; it has {', '.join(by_layer)}")
        series.append(by_layer[layer]["pre"])
        labels.append(client.get_run(run_id).info.run_name)
    return plots.activation_evolution_pair(series[0], series[1], tuple(labels), layer)
