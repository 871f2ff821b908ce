"""Sweep tables: training runs grouped into variants (a config minus its seed), statistics over
seeds, and the comparison tables, each as Markdown (cells as shown) and CSV (the numbers).

With one seed a cell is the value; with several it is mean ± std over seeds, and the number of
seeds is in the table (a "seeds" column, or "3/3" / "n=3" in the cell).
"""

import csv
import io
import math
import statistics
from dataclasses import dataclass, field

from normexp.norms import NORMS, PLACEMENTS

# Config params that name a variant, with their column names, in display order.
AXES = {"norm.kind": "norm", "norm.placement": "placement", "model.name": "model", "optim.name": "optim",
        "optim.lr": "lr", "dataset.batch_size": "batch_size", "model.dropout": "dropout",
        "dataset.train_size": "train_size", "dataset.fraction": "fraction", "dataset.name": "dataset"}
# Params that never tell variants apart: the seed (variants are compared across seeds), where a run
# is logged, the parameter counts (they follow from the model and norm).
NOT_VARIANT = ("seed", "tracking.", "params_", "trainer.progress_bar")
# A sweep over any of these asks what regularizes: show the train-val gap table (the convergence
# table has the gap of every variant too, for norm comparisons).
GAP_AXES = ("model.dropout", "dataset.train_size", "dataset.fraction")


@dataclass
class RunData:
    run_id: str
    name: str
    params: dict[str, str]      # the flat config, as tracking.flat_params logged it
    metrics: dict[str, float]   # latest values: outcome/*, train/acc, ...
    diverged: bool
    diverged_at_step: int | None
    converged: bool
    train_loss: list[float]     # per epoch; [0] is epoch 1
    val_acc: list[float]

    def metric(self, key: str) -> float:
        return self.metrics.get(key, math.nan)


@dataclass
class Variant:
    values: dict[str, str]      # variant key (a config param) -> value
    runs: list[RunData]         # one per seed

    def label(self, keys: list[str]) -> str:
        return ", ".join(f"{column(k)}={self.values[k]}" for k in keys) or "all runs"


@dataclass
class Table:
    name: str                   # file stem: convergence.md, convergence.csv
    title: str
    header: list[str]
    rows: list[list[str]]       # cells as shown
    records: list[dict]         # the same content as numbers, for the CSV
    notes: list[str] = field(default_factory=list)

    @property
    def markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.header) + " |",
                 "|" + "|".join("---" for _ in self.header) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines + [""] + [f"{note}  " for note in self.notes]).rstrip() + "\n"

    @property
    def csv(self) -> str:
        out = io.StringIO()
        keys = list(dict.fromkeys(k for record in self.records for k in record))
        writer = csv.DictWriter(out, keys, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.records)
        return out.getvalue()


def column(key: str) -> str:
    return AXES.get(key, key)


# ---- Variants ----------------------------------------------------------------------------------

# Values listed in their natural order (none first, pre before post) rather than alphabetically.
NAMED_ORDER = {"norm.kind": NORMS, "norm.placement": PLACEMENTS}


def order(key: str, value: str):
    """Sort key of one param value: named values in NAMED_ORDER, numbers numerically, then text."""
    if value in NAMED_ORDER.get(key, ()):
        return (0, NAMED_ORDER[key].index(value), "")
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def variant_keys(runs: list[RunData]) -> list[str]:
    """The config params that vary across `runs` (seed aside): the columns that name a variant."""
    keys = sorted({k for r in runs for k in r.params if not k.startswith(NOT_VARIANT)})
    varying = [k for k in keys if len({r.params.get(k) for r in runs}) > 1]
    axes = [k for k in AXES if k in varying]

    def follows_from_axes(key: str) -> bool:  # norm.eps exists only for norm.kind != none: no news
        seen = {}
        return all(seen.setdefault(tuple(r.params.get(a) for a in axes), r.params.get(key)) == r.params.get(key)
                   for r in runs)

    return axes + [k for k in varying if k not in axes and not follows_from_axes(k)]


def group(runs: list[RunData], keys: list[str]) -> list[Variant]:
    variants: dict[tuple, Variant] = {}
    for run in runs:
        values = {k: run.params.get(k, "None") for k in keys}
        variants.setdefault(tuple(values.values()), Variant(values, [])).runs.append(run)
    return sorted(variants.values(), key=lambda v: [order(k, v.values[k]) for k in keys])


# ---- Statistics and cells ----------------------------------------------------------------------

def stats(values) -> tuple[float, float, int]:
    """(mean, std over seeds, n) of the finite values; std is 0 for one value."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return math.nan, math.nan, 0
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0, len(finite)


def _fmt(values, spec: str = ".3f") -> str:
    mean, std, n = stats(values)
    if n == 0:
        return "—"
    return f"{mean:{spec}}" if n == 1 else f"{mean:{spec}} ± {std:{spec}}"


def _numbers(prefix: str, values) -> dict:
    mean, std, _ = stats(values)
    return {f"{prefix}_mean": mean, f"{prefix}_std": std}


def verdict(runs: list[RunData], with_acc: bool) -> str:
    """'yes' when every seed converged, else 'no'; e.g. 'yes (0.973)', 'no (diverged @ step 37)',
    'no 1/3 (0.650 ± 0.400; 2 diverged @ step 2, 3)'."""
    n, converged = len(runs), sum(r.converged for r in runs)
    diverged = [r for r in runs if r.diverged]
    head = ("yes" if converged == n else "no") + ("" if n == 1 else f" {converged}/{n}")
    details = [_fmt([r.metric("outcome/final_val_acc") for r in runs])] if with_acc and len(diverged) < n else []
    if diverged:
        steps = ", ".join(str(r.diverged_at_step) for r in diverged)
        details.append(f"diverged @ step {steps}" if len(diverged) == n else f"{len(diverged)} diverged @ step {steps}")
    return head + (f" ({'; '.join(details)})" if details else "")


def _epochs_to_target(runs: list[RunData]) -> str:
    reached = [r.metrics["outcome/epochs_to_target"] for r in runs if "outcome/epochs_to_target" in r.metrics]
    if not reached:
        return "not reached"
    cell = _fmt(reached, ".1f")
    return cell if len(reached) == len(runs) else f"{cell} ({len(reached)}/{len(runs)} reached)"


def _summary(variant: Variant, keys: list[str]) -> dict:
    """Everything the tables show about one variant, as numbers (a CSV row)."""
    runs = variant.runs
    reached = [r.metrics.get("outcome/epochs_to_target") for r in runs]
    return ({column(k): variant.values[k] for k in keys} | {
        "seeds": len(runs), "converged": sum(r.converged for r in runs), "diverged": sum(r.diverged for r in runs),
        "diverged_at_steps": " ".join(str(r.diverged_at_step) for r in runs if r.diverged),
        "reached_target": sum(e is not None for e in reached),
        **_numbers("epochs_to_target", reached),
        **_numbers("final_val_acc", [r.metric("outcome/final_val_acc") for r in runs]),
        **_numbers("best_val_acc", [r.metric("outcome/best_val_acc") for r in runs]),
        **_numbers("final_train_acc", [r.metric("train/acc") for r in runs]),
        **_numbers("train_val_gap", [r.metric("outcome/train_val_gap") for r in runs]),
        **_numbers("epoch_s", [r.metric("outcome/epoch_s") for r in runs]),
    })


# ---- Tables ------------------------------------------------------------------------------------

def convergence_table(variants: list[Variant], keys: list[str], target: str) -> Table:
    header = [column(k) for k in keys] + ["seeds", "converged", f"epochs to val acc ≥ {target}",
                                          "final val acc", "best val acc", "train-val gap", "s/epoch"]
    rows = [[v.values[k] for k in keys] + [
        str(len(v.runs)), verdict(v.runs, with_acc=False), _epochs_to_target(v.runs),
        _fmt([r.metric("outcome/final_val_acc") for r in v.runs]),
        _fmt([r.metric("outcome/best_val_acc") for r in v.runs]),
        _fmt([r.metric("outcome/train_val_gap") for r in v.runs]),
        _fmt([r.metric("outcome/epoch_s") for r in v.runs])] for v in variants]
    return Table("convergence", "Convergence per variant", header, rows, [_summary(v, keys) for v in variants])


def versus_none_table(variants: list[Variant], keys: list[str], max_epochs: str) -> Table | None:
    """Each norm against no normalization in the same setting: the speedup in epochs to the target
    (epochs without / with the norm) and the final accuracy difference (with - without)."""
    others = [k for k in keys if k != "norm.kind"]
    by_setting = {}
    for v in variants:
        by_setting.setdefault(tuple(v.values[k] for k in others), {})[v.values["norm.kind"]] = v
    header = [column(k) for k in others] + ["norm", "epochs to target: none", "epochs to target: norm",
                                            "speedup (none / norm)", "final val acc: none", "final val acc: norm",
                                            "difference (norm - none)"]
    rows, records = [], []
    for setting, norms in by_setting.items():
        if "none" not in norms:
            continue
        plain = norms["none"].runs
        for kind, variant in norms.items():
            if kind == "none":
                continue
            ett_none = stats(r.metrics.get("outcome/epochs_to_target") for r in plain)[0]
            ett_norm = stats(r.metrics.get("outcome/epochs_to_target") for r in variant.runs)[0]
            acc_none = stats(r.metric("outcome/final_val_acc") for r in plain)[0]
            acc_norm = stats(r.metric("outcome/final_val_acc") for r in variant.runs)[0]
            speedup = ett_none / ett_norm
            if math.isnan(ett_norm):
                shown = f"— ({kind} did not reach the target)"
            elif math.isnan(ett_none):
                shown = (f"> {float(max_epochs) / ett_norm:.2f}x (none did not reach it in {max_epochs} epochs)"
                         if not all(r.diverged for r in plain) else "— (none diverged)")
            else:
                shown = f"{speedup:.2f}x"
            rows.append(list(setting) + [kind, _epochs_to_target(plain), _epochs_to_target(variant.runs), shown,
                                         _fmt([r.metric("outcome/final_val_acc") for r in plain]),
                                         _fmt([r.metric("outcome/final_val_acc") for r in variant.runs]),
                                         f"{acc_norm - acc_none:+.3f}"])
            records.append(dict(zip([column(k) for k in others], setting)) | {
                "norm": kind, "epochs_to_target_none": ett_none, "epochs_to_target_norm": ett_norm,
                "speedup": speedup, "final_val_acc_none": acc_none, "final_val_acc_norm": acc_norm,
                "difference": acc_norm - acc_none})
    if not rows:
        return None
    return Table("versus_none", "Each norm against no normalization", header, rows, records)


def _pivot(variants: list[Variant], keys: list[str], row_key: str, cell) -> tuple[list[str], list[list[str]], list]:
    """Rows = the values of `row_key`, columns = the variants over the other keys, cells = cell(runs)."""
    others = [k for k in keys if k != row_key]
    columns = list(dict.fromkeys(v.label(others) for v in variants))
    row_values = sorted({v.values[row_key] for v in variants}, key=lambda value: order(row_key, value))
    cells = {(v.values[row_key], v.label(others)): v for v in variants}
    rows = [[value] + [cell(cells[value, c].runs) if (value, c) in cells else "" for c in columns]
            for value in row_values]
    return [column(row_key)] + columns, rows, columns


def lr_table(variants: list[Variant], keys: list[str]) -> Table:
    header, rows, columns = _pivot(variants, keys, "optim.lr", lambda runs: verdict(runs, with_acc=True))
    others = [k for k in keys if k != "optim.lr"]
    best = []
    for label in columns:
        converging = [float(v.values["optim.lr"]) for v in variants
                      if v.label(others) == label and all(r.converged for r in v.runs)]
        best.append(f"**{max(converging):g}**" if converging else "**none**")
    rows.append(["**max converging lr**"] + best)
    return Table("lr_tolerance", "Learning-rate tolerance: converged? (final val acc)", header, rows,
                 [_summary(v, keys) for v in variants],
                 ["converged = not diverged and best val acc ≥ dataset.converge_acc, for every seed"])


def batch_size_table(variants: list[Variant], keys: list[str]) -> Table:
    def cell(runs):
        text = _fmt([r.metric("outcome/final_val_acc") for r in runs])
        diverged = sum(r.diverged for r in runs)
        extras = ([f"n={len(runs)}"] if len(runs) > 1 else []) + ([f"{diverged} diverged"] if diverged else [])
        return text + (f" ({', '.join(extras)})" if extras else "")

    header, rows, _ = _pivot(variants, keys, "dataset.batch_size", cell)
    return Table("batch_size", "Final val accuracy by batch size", header, rows, [_summary(v, keys) for v in variants])


def gap_table(variants: list[Variant], keys: list[str]) -> Table:
    header = [column(k) for k in keys] + ["seeds", "final train acc", "final val acc", "train-val gap", "best val acc"]
    rows = [[v.values[k] for k in keys] + [
        str(len(v.runs)), _fmt([r.metric("train/acc") for r in v.runs]),
        _fmt([r.metric("outcome/final_val_acc") for r in v.runs]),
        _fmt([r.metric("outcome/train_val_gap") for r in v.runs]),
        _fmt([r.metric("outcome/best_val_acc") for r in v.runs])] for v in variants]
    return Table("train_val_gap", "Overfitting: final train - val accuracy", header, rows,
                 [_summary(v, keys) for v in variants],
                 ["train acc is the last epoch's mean over its training batches, in train mode (dropout on, "
                  "BN on batch statistics): with dropout the gap can be negative"])


def for_sweep(variants: list[Variant], keys: list[str]) -> list[Table]:
    """The tables that answer what the sweep varies: always the per-variant convergence table; each
    norm against none when the norm varies; the learning-rate and batch-size pivots when those vary;
    the train-val gap when the training set or dropout varies."""
    params = variants[0].runs[0].params
    tables = [convergence_table(variants, keys, params.get("dataset.target_acc", "target"))]
    if "norm.kind" in keys:
        tables.append(versus_none_table(variants, keys, params.get("trainer.max_epochs", "?")))
    if "optim.lr" in keys:
        tables.append(lr_table(variants, keys))
    if "dataset.batch_size" in keys:
        tables.append(batch_size_table(variants, keys))
    if any(k in keys for k in GAP_AXES):
        tables.append(gap_table(variants, keys))
    return [t for t in tables if t is not None]


def common_settings(runs: list[RunData], keys: list[str]) -> str:
    """The settings every run shares, e.g. 'dataset=digits, model=mlp, ...; seeds: 0, 1'."""
    shown = [*AXES, "trainer.max_epochs", "dataset.target_acc", "dataset.converge_acc"]
    common = [f"{column(k)}={runs[0].params[k]}" for k in shown if k not in keys and k in runs[0].params]
    seeds = sorted({r.params.get("seed", "?") for r in runs}, key=lambda s: order("seed", s))
    return "Same in every run: " + ", ".join(common) + f"; seeds: {', '.join(seeds)}"
