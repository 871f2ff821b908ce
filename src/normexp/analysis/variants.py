"""What a variant is: the names of norms and placements, the one name of a variant (bn, bn-post),
and training runs grouped into variants (a config minus its seed). No torch: reports import this."""

from dataclasses import dataclass

from normexp.analysis.results import RunData
from normexp.config.schema import NORMS, PLACEMENTS  # in display order: none first

# Config params that name a variant, with their column names, in display order.
AXES = {"norm.kind": "norm", "norm.placement": "placement", "model.name": "model", "optim.name": "optim",
        "optim.lr": "lr", "dataset.batch_size": "batch_size", "model.dropout": "dropout",
        "model.init": "init", "model.init_scale": "init_scale", "model.depth": "depth", "model.width": "width",
        "norm.momentum": "momentum", "norm.eps": "eps", "dataset.variable_length": "variable_length",
        "dataset.train_size": "train_size", "dataset.fraction": "fraction", "dataset.name": "dataset"}
# Params that never tell variants apart: the seed (variants are compared across seeds), where a run
# is logged, the parameter counts (they follow from the model and norm).
NOT_VARIANT = ("seed", "tracking.", "params_", "trainer.progress_bar")
# Values listed in their natural order (none first, pre before post) rather than alphabetically.
NAMED_ORDER = {"norm.kind": NORMS, "norm.placement": PLACEMENTS}


def variant_name(norm_kind: str, placement: str) -> str:
    """e.g. 'bn', 'bn-post': the norm as run names, study names and tables show it."""
    return norm_kind + ("-post" if placement == "post" else "")


@dataclass
class Variant:
    values: dict[str, str]      # variant key (a config param) -> value
    runs: list[RunData]         # one per seed

    def label(self, keys: list[str]) -> str:
        return ", ".join(f"{column(k)}={self.values[k]}" for k in keys) or "all runs"


def column(key: str) -> str:
    return AXES.get(key, key)


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

    def follows_from(chosen: list[str], key: str) -> bool:  # norm.eps exists only for norm.kind != none: no news
        seen = {}
        return all(seen.setdefault(tuple(r.params.get(a) for a in chosen), r.params.get(key)) == r.params.get(key)
                   for r in runs)

    chosen = []  # the AXES first, in display order, then any other param that varies on its own
    for key in [k for k in AXES if k in varying] + [k for k in varying if k not in AXES]:
        if not follows_from(chosen, key):
            chosen.append(key)
    return chosen


def group(runs: list[RunData], keys: list[str]) -> list[Variant]:
    variants: dict[tuple, Variant] = {}
    for run in runs:
        values = {k: run.params.get(k, "None") for k in keys}
        variants.setdefault(tuple(values.values()), Variant(values, [])).runs.append(run)
    return sorted(variants.values(), key=lambda v: [order(k, v.values[k]) for k in keys])


def common_settings(runs: list[RunData], keys: list[str]) -> str:
    """The settings every run shares, e.g. 'dataset=digits, model=mlp, ...; seeds: 0, 1'."""
    shown = [*AXES, "trainer.max_epochs", "dataset.target_acc", "dataset.converge_acc"]
    common = [f"{column(k)}={runs[0].params[k]}" for k in shown
              if k not in keys and k in runs[0].params and len({r.params.get(k) for r in runs}) == 1]
    seeds = sorted({r.params.get("seed", "?") for r in runs}, key=lambda s: order("seed", s))
    return "Same in every run: " + ", ".join(common) + f"; seeds: {', '.join(seeds)}"
