"""Comparison tables of a sweep: its variants side by side, each table answering what the sweep
varies (convergence, each norm against none, learning rate, batch size, train-val gap), and the
stable-learning-rate table of a search. With one seed a cell is the value; with several it is
mean ± std over seeds, and the number of seeds is in the table ("seeds" column, "3/3", "n=3")."""

import re

from normexp.analysis.results import RunData, differences, paired, speedups
from normexp.analysis.stats import describe, interval, numbers, paired_cell, ratio_cell, ratio_interval, shown
from normexp.analysis.tables import Table, from_records
from normexp.analysis.variants import Variant, column, order

# A sweep over any of these asks what regularizes: show the train-val gap table (the convergence
# table has the gap of every variant too, for norm comparisons).
GAP_AXES = ("model.dropout", "dataset.train_size", "dataset.fraction")
# A sweep over one of these asks how the answer changes along it: a pivot with its values as rows.
PIVOT_AXES = ("model.init_scale", "model.init", "model.depth", "norm.momentum", "norm.eps", "dataset.variable_length")
# ... and over one of these, how far BatchNorm's running statistics are from its batch statistics.
RUNNING_STAT_AXES = ("norm.momentum", "norm.eps", "dataset.batch_size")


def verdict(runs: list[RunData], with_acc: bool) -> str:
    """'yes' when every seed converged, else 'no'; e.g. 'yes (0.973)', 'no (diverged @ step 37)',
    'no 1/3 (0.650 ± 0.400; 2 diverged @ step 2, 3)'."""
    n, converged = len(runs), sum(r.converged for r in runs)
    diverged = [r for r in runs if r.diverged]
    head = ("yes" if converged == n else "no") + ("" if n == 1 else f" {converged}/{n}")
    details = [shown([r.outcome.final_val_acc for r in runs])] if with_acc and len(diverged) < n else []
    if diverged:
        steps = ", ".join(str(r.diverged_at_step) for r in diverged)
        details.append(f"diverged @ step {steps}" if len(diverged) == n else f"{len(diverged)} diverged @ step {steps}")
    return head + (f" ({'; '.join(details)})" if details else "")


def _epochs_to_target(runs: list[RunData]) -> str:
    reached = [r.outcome.epochs_to_target for r in runs if r.outcome.epochs_to_target is not None]
    if not reached:
        return "not reached"
    text = shown(reached, ".1f")
    return text if len(reached) == len(runs) else f"{text} ({len(reached)}/{len(runs)} reached)"


def _summary(variant: Variant, keys: list[str]) -> dict:
    """Everything the tables show about one variant, as numbers (a CSV row)."""
    runs = variant.runs
    reached = [r.outcome.epochs_to_target for r in runs]
    return ({column(k): variant.values[k] for k in keys} | {
        "seeds": len(runs), "converged": sum(r.converged for r in runs), "diverged": sum(r.diverged for r in runs),
        "diverged_at_steps": " ".join(str(r.diverged_at_step) for r in runs if r.diverged),
        "reached_target": sum(e is not None for e in reached),
        **numbers("epochs_to_target", reached),
        **numbers("final_val_acc", [r.outcome.final_val_acc for r in runs]),
        **numbers("best_val_acc", [r.outcome.best_val_acc for r in runs]),
        **numbers("final_train_acc", [r.metric("train/acc") for r in runs]),
        **numbers("train_val_gap", [r.outcome.train_val_gap for r in runs]),
        **numbers("epoch_s", [r.outcome.epoch_s for r in runs]),
        **numbers("train_s", [r.outcome.train_s for r in runs]),
        "jobs_at_once": max(r.jobs_at_once for r in runs),
    })


def convergence_table(variants: list[Variant], keys: list[str], target: str) -> Table:
    header = [column(k) for k in keys] + ["seeds", "converged", f"epochs to val acc ≥ {target}",
                                          "final val acc", "best val acc", "train-val gap", "s/epoch", "train s/epoch"]
    rows = [[v.values[k] for k in keys] + [
        str(len(v.runs)), verdict(v.runs, with_acc=False), _epochs_to_target(v.runs),
        shown([r.outcome.final_val_acc for r in v.runs]),
        shown([r.outcome.best_val_acc for r in v.runs]),
        shown([r.outcome.train_val_gap for r in v.runs]),
        shown([r.outcome.epoch_s for r in v.runs]),
        shown([r.outcome.train_s for r in v.runs])] for v in variants]
    shared = max((r.jobs_at_once for v in variants for r in v.runs), default=1)
    notes = [f"s/epoch: timed with up to {shared} jobs sharing the CPUs (a parallel sweep): not comparable with "
             "runs timed alone"] if shared > 1 else []
    return Table("convergence", "Convergence per variant", header, rows, [_summary(v, keys) for v in variants], notes)


def _direction(low: float, high: float, n: int, null: float, more: str, less: str, what: str) -> str:
    """In words: `more` / `less` when the 95% interval [low, high] of n per-seed values excludes `null`."""
    if n < 2:
        return f"{what}: one seed, no verdict" if n else f"{what}: not measurable"
    if low > null:
        return more
    return less if high < null else f"no clear difference in {what}"


def versus_none_table(variants: list[Variant], keys: list[str], max_epochs: str) -> Table | None:
    """Each norm against no normalization in the same setting, paired by seed: the speedup in epochs to
    the target (epochs without / with the norm) and the final accuracy difference (with - without),
    per seed, then their mean ± std and 95% interval; the verdict says when it includes no difference."""
    others = [k for k in keys if k != "norm.kind"]
    by_setting = {}
    for v in variants:
        by_setting.setdefault(tuple(v.values[k] for k in others), {})[v.values["norm.kind"]] = v
    header = [column(k) for k in others] + ["norm", "epochs to target: none", "epochs to target: norm",
                                            "speedup (none / norm), paired by seed", "final val acc: none",
                                            "final val acc: norm", "difference (norm - none), paired by seed", "verdict"]
    rows, records = [], []
    for setting, norms in by_setting.items():
        if "none" not in norms:
            continue
        plain = norms["none"].runs
        for kind, variant in norms.items():
            if kind == "none":
                continue
            pairs = paired(plain, variant.runs)
            ratios = speedups(pairs)
            differences_acc = differences(pairs, lambda r: r.outcome.final_val_acc)
            ett_none = describe(r.outcome.epochs_to_target for r in plain)[0]
            ett_norm = describe(r.outcome.epochs_to_target for r in variant.runs)[0]
            if ratios.values:
                speedup_text = ratio_cell(ratios.values)
                if ratios.lower_bounds:
                    speedup_text += (f"; a lower bound for {ratios.lower_bounds} seed(s) where none did not reach it "
                                     f"in {max_epochs} epochs (counted as {max_epochs})")
                if ratios.not_reached:
                    speedup_text += f"; {ratios.not_reached} seed(s) left out, where {kind} did not reach it"
            else:
                speedup_text = f"— ({kind} did not reach the target)"
            speedup_mean, speedup_low, speedup_high, _ = ratio_interval(ratios.values)
            difference_mean, difference_half, n_pairs = interval(differences_acc)
            verdict_words = "; ".join([
                _direction(speedup_low, speedup_high, len(ratios.values), 1, f"{kind} reaches the target faster",
                           f"{kind} is slower", "speed"),
                _direction(difference_mean - difference_half, difference_mean + difference_half, n_pairs, 0,
                           "higher final accuracy", "lower final accuracy", "accuracy")])
            rows.append(list(setting) + [kind, _epochs_to_target(plain), _epochs_to_target(variant.runs), speedup_text,
                                         shown([r.outcome.final_val_acc for r in plain]),
                                         shown([r.outcome.final_val_acc for r in variant.runs]),
                                         paired_cell(differences_acc, 0), verdict_words])
            records.append(dict(zip([column(k) for k in others], setting)) | {
                "norm": kind, "epochs_to_target_none": ett_none, "epochs_to_target_norm": ett_norm,
                "speedup_geomean": speedup_mean, "speedup_ci_low": speedup_low, "speedup_ci_high": speedup_high,
                "difference_mean": difference_mean, "difference_ci_half": difference_half, "pairs": n_pairs,
                "verdict": verdict_words})
    if not rows:
        return None
    return Table("versus_none", "Each norm against no normalization (paired by seed)", header, rows, records,
                 ["95% CI: Student-t interval of the per-seed values (of their logs for the speedup, shown as a "
                  "geometric mean); 'no clear difference' when it contains "
                  "1x (speed) or 0 (accuracy): the seeds do not show a difference beyond their noise. "
                  "Epochs to target: the epochs trained at the first validation from which val accuracy stays at or "
                  "above it for 3 validations (several an epoch where trainer.val_checks_per_epoch says so); "
                  "a run without the norm that never reached it counts as its epoch budget (a lower bound), a pair "
                  "whose run with the norm never reached it is left out (normexp.analysis.results)."])


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
    """Final val error by batch size, and its change from batch 128 (the claim's reference) paired by seed."""
    others = [k for k in keys if k != "dataset.batch_size"]
    reference = {v.label(others): v.runs for v in variants if v.values["dataset.batch_size"] == "128"}

    def error(run: RunData) -> float:
        return 1 - run.outcome.final_val_acc

    def cell(runs):
        text = shown([error(r) for r in runs])
        diverged = sum(r.diverged for r in runs)
        base = reference.get(next(v.label(others) for v in variants if v.runs is runs))
        change = differences(paired(base, runs), error) if base is not None and base is not runs else []
        extras = (([f"{paired_cell(change, 0)} vs 128"] if change else [])
                  + ([f"{diverged} diverged"] if diverged else []))
        return text + (f" ({', '.join(extras)})" if extras else "")

    header, rows, _ = _pivot(variants, keys, "dataset.batch_size", cell)
    return Table("batch_size", "Final val error by batch size (change from batch 128, paired by seed)", header, rows,
                 [_summary(v, keys) for v in variants], ["error = 1 - final val accuracy"])


def gap_table(variants: list[Variant], keys: list[str]) -> Table:
    header = [column(k) for k in keys] + ["seeds", "final train acc", "final val acc", "train-val gap", "best val acc"]
    rows = [[v.values[k] for k in keys] + [
        str(len(v.runs)), shown([r.metric("train/acc") for r in v.runs]),
        shown([r.outcome.final_val_acc for r in v.runs]),
        shown([r.outcome.train_val_gap for r in v.runs]),
        shown([r.outcome.best_val_acc for r in v.runs])] for v in variants]
    return Table("train_val_gap", "Overfitting: final train - val accuracy", header, rows,
                 [_summary(v, keys) for v in variants],
                 ["train acc is the last epoch's mean over its training batches, in train mode (dropout on, "
                  "BN on batch statistics): with dropout the gap can be negative"])


def pivot_table(variants: list[Variant], keys: list[str], row_key: str) -> Table:
    """Rows = the values of `row_key`, columns = the variants over the other keys; cell = converged?
    (final val acc) and the epoch val accuracy reaches the target."""
    def cell(runs):
        reached = _epochs_to_target(runs)
        reached_at = ", target not reached" if reached == "not reached" else f", epoch {reached}"
        return verdict(runs, with_acc=True) + reached_at

    header, rows, _ = _pivot(variants, keys, row_key, cell)
    return Table(f"by_{column(row_key)}", f"By {column(row_key)}: converged? (final val acc), epochs to target",
                 header, rows, [_summary(v, keys) for v in variants])


def metric_layers(runs: list[RunData], family: str, name: str) -> list[str]:
    """The layers with a `<family>/<layer>/<name>` metric in any run, input side first (hidden2 before hidden10)."""
    layers = {key.split("/")[1] for r in runs for key in r.metrics
              if key.startswith(f"{family}/") and key.endswith(f"/{name}")}
    return sorted(layers, key=lambda layer: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", layer)])


def train_eval_gap_table(variants: list[Variant], keys: list[str]) -> Table | None:
    """BatchNorm's last-epoch bn/<layer>/train_eval_gap per variant and layer (logged by the probes)."""
    layers = metric_layers([r for v in variants for r in v.runs], "bn", "train_eval_gap")
    if not layers:
        return None
    header = [column(k) for k in keys] + ["final val acc"] + [f"gap {layer}" for layer in layers]
    rows, records = [], []
    for v in variants:
        gaps = {layer: [r.metric(f"bn/{layer}/train_eval_gap") for r in v.runs] for layer in layers}
        rows.append([v.values[k] for k in keys] + [shown([r.outcome.final_val_acc for r in v.runs])]
                    + [shown(gaps[layer], ".4f") for layer in layers])
        records.append({column(k): v.values[k] for k in keys}
                       | numbers("final_val_acc", [r.outcome.final_val_acc for r in v.runs])
                       | {key: value for layer in layers for key, value in numbers(f"gap_{layer}", gaps[layer]).items()})
    return Table("bn_train_eval_gap", "BatchNorm: train-mode vs eval-mode output at the last epoch", header, rows,
                 records, ["gap = mean |BN(x) with batch statistics - BN(x) with running statistics| on the probe "
                           "batch (bn/<layer>/train_eval_gap): how far the running statistics lag the batch's"])


def for_sweep(variants: list[Variant], keys: list[str]) -> list[Table]:
    """The tables that answer what the sweep varies: always the per-variant convergence table; each
    norm against none when the norm varies; the learning-rate and batch-size pivots when those vary;
    the train-val gap when the training set or dropout varies; a pivot along init scale, depth, BN momentum
    or eps, variable length; BatchNorm's train-eval gap when its momentum, eps or the batch size varies."""
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
    tables += [pivot_table(variants, keys, k) for k in PIVOT_AXES if k in keys]
    if any(k in keys for k in RUNNING_STAT_AXES):
        tables.append(train_eval_gap_table(variants, keys))
    return [t for t in tables if t is not None]


def stable_lr_table(summaries: list[dict]) -> Table:
    """One row per study; ratio_to_none = its max stable rate / that of norm=none in the same group."""
    none = {s["group"]: s["max_stable_lr"] for s in summaries if s["variant"] == "none"}
    records = [{"variant": s["variant"], "group": s["group"], "max_stable_lr": s["max_stable_lr"],
                "min_unstable_lr": s["min_unstable_lr"],
                "ratio_to_none": s["max_stable_lr"] / none[s["group"]]
                if s["max_stable_lr"] and none.get(s["group"]) else None,
                "trials": s["trials"], "epochs_spent": s["epochs_spent"], "non_monotone": s["non_monotone"],
                "study": s["study"]} for s in summaries]
    return from_records("stable_lr", "Maximum stable learning rate per variant", records,
                        sorted({s["definition"] for s in summaries}))
