"""The verdict on each question's claim, from a preset's runs: each function takes the sweep's
finished runs (variants.RunData) and returns one sentence, its first words the verdict ("holds",
"partly: ...", "not on this setup: ...") and then the evidence.

Runs are paired by seed (normexp.analysis.stats.interval: Student-t 95% intervals): a claim "holds" only when
the interval is clear of "no difference"; "not on this setup" is a verdict too.
"""

from normexp.analysis.results import RunData, differences, paired, speedups
from normexp.analysis.stats import interval


def _runs(runs: list[RunData], values: dict) -> list[RunData]:
    """The runs whose params have these values ({"norm.kind": "bn"})."""
    return [r for r in runs if all(r.params.get(k) == str(v) for k, v in values.items())]


def _diffs(a: list[RunData], b: list[RunData], value) -> list[float]:
    """value(a's run) - value(b's run) for each seed both ran."""
    return differences(paired(b, a), value)


def _speedups(plain: list[RunData], normed: list[RunData]) -> list[float]:
    """The per-seed speedups of `normed` over `plain` (results.speedups: one rule for a target never reached)."""
    return speedups(paired(plain, normed)).values


def _ci(values: list[float], spec: str = "+.3f") -> str:
    mean, half, n = interval(values)
    return f"{mean:{spec}} (n={n})" if n < 2 else f"{mean:{spec}}, 95% CI {mean - half:{spec}}..{mean + half:{spec}} (n={n})"


def _clear(values: list[float], null: float) -> int:
    """+1 / -1 when the 95% interval lies above / below `null`, 0 when it contains it (or n < 2)."""
    mean, half, n = interval(values)
    return 0 if n < 2 or mean - half <= null <= mean + half else (1 if mean > null else -1)


def _final_acc(run: RunData) -> float:
    return run.outcome.final_val_acc


def convergence(runs: list[RunData]) -> str:
    """Per model (the preset trains the exercises' MLP and a deeper one): the paired speedup of bn."""
    verdicts = []
    for model in sorted({r.params["model.name"] for r in runs}):
        ratios = _speedups(_runs(runs, {"norm.kind": "none", "model.name": model}),
                           _runs(runs, {"norm.kind": "bn", "model.name": model}))
        direction, (mean, _, _) = _clear(ratios, 1), interval(ratios)
        if direction > 0:
            word = "holds" if mean >= 2 else "partly: BN is faster, but by less than 2x"
        else:
            word = "not on this setup: no clear speedup" if direction == 0 else "not on this setup: BN is slower"
        verdicts.append(f"{model}: {word}; speedup (epochs to target, none / bn, per seed) {_ci(ratios, '.2f')}")
    return ". ".join(verdicts) + "."


def lr_tolerance(runs: list[RunData]) -> str:
    def max_converging(kind: str) -> float | None:
        rates = {r.params["optim.lr"] for r in runs if r.params["norm.kind"] == kind}
        ok = [float(lr) for lr in rates if all(r.converged for r in runs
                                               if r.params["norm.kind"] == kind and r.params["optim.lr"] == lr)]
        return max(ok, default=None)

    none, bn = max_converging("none"), max_converging("bn")
    if not none or not bn:
        return f"no verdict: max converging lr none={none}, bn={bn} (every seed must converge)."
    ratio, top = bn / none, bn == max(float(r.params["optim.lr"]) for r in runs)
    word = "holds" if ratio >= 10 else "partly: higher, but less than 10x" if ratio > 1 else "not on this setup"
    bound = " (at least: bn converged at the grid's largest rate)" if top else ""
    return f"{word}. Max learning rate at which every seed converged: none {none:g}, bn {bn:g}: {ratio:g}x{bound}."


def placement(runs: list[RunData]) -> str:
    diffs = _diffs(_runs(runs, {"norm.placement": "pre"}), _runs(runs, {"norm.placement": "post"}), _final_acc)
    word = {1: "holds", 0: "not on this setup: no clear difference", -1: "not on this setup: after is better"}
    return f"{word[_clear(diffs, 0)]}. Final val accuracy, before - after the ReLU, per seed: {_ci(diffs)}."


def norms(runs: list[RunData]) -> str:
    plain = _runs(runs, {"norm.kind": "none"})
    kinds = sorted({r.params["norm.kind"] for r in runs} - {"none"})
    ratios = {k: _speedups(plain, _runs(runs, {"norm.kind": k})) for k in kinds}
    faster = [k for k in kinds if _clear(ratios[k], 1) > 0]
    word = "holds" if len(faster) == len(kinds) else f"partly: only {', '.join(faster)}" if faster else "not on this setup"
    return f"{word}. Speedup over none per seed: " + "; ".join(f"{k} {_ci(v, '.2f')}" for k, v in ratios.items()) + "."


def norms_cnn(runs: list[RunData]) -> str:
    """Judged on final val accuracy: on 10% of the data the CNNs may not reach the target at all."""
    plain = _runs(runs, {"norm.kind": "none"})
    kinds = sorted({r.params["norm.kind"] for r in runs} - {"none"})
    gains = {k: _diffs(_runs(runs, {"norm.kind": k}), plain, _final_acc) for k in kinds}
    better = [k for k in kinds if _clear(gains[k], 0) > 0]
    best = max(kinds, key=lambda k: interval(gains[k])[0])
    word = ("holds" if len(better) == len(kinds) and best == "bn" else f"partly: only {', '.join(better)}" if better
            else "not on this setup: no norm is clearly better than none")
    return (f"{word}; the largest mean gain is {best}'s. Final val accuracy, norm - none, per seed: "
            + "; ".join(f"{k} {_ci(v)}" for k, v in gains.items()) + ".")


def cnn(runs: list[RunData]) -> str:
    diffs = _diffs(_runs(runs, {"norm.kind": "bn"}), _runs(runs, {"norm.kind": "none"}), _final_acc)
    word = {1: "holds", 0: "not on this setup: no clear difference", -1: "not on this setup: BN is worse"}
    return f"{word[_clear(diffs, 0)]}. Final val accuracy, bn - none, per seed: {_ci(diffs)}."


def regularization(runs: list[RunData]) -> str:
    def gap(run: RunData) -> float:
        return run.outcome.train_val_gap

    plain = _runs(runs, {"norm.kind": "none", "model.dropout": 0.0})
    by_bn = _diffs(_runs(runs, {"norm.kind": "bn", "model.dropout": 0.0}), plain, gap)
    by_dropout = _diffs(_runs(runs, {"norm.kind": "none", "model.dropout": 0.3}), plain, gap)
    word = {-1: "holds", 0: "not on this setup: no clear change in the gap", 1: "not on this setup: BN widens the gap"}
    return (f"{word[_clear(by_bn, 0)]}. Change of the train-val gap against none (no dropout), per seed: "
            f"BN {_ci(by_bn)}; dropout 0.3 {_ci(by_dropout)}.")


def batch_size(runs: list[RunData]) -> str:
    sizes = sorted({int(r.params["dataset.batch_size"]) for r in runs})
    small, large = sizes[0], sizes[-1]
    drops = {k: _diffs(_runs(runs, {"norm.kind": k, "dataset.batch_size": small}), _runs(runs, {"norm.kind": k, "dataset.batch_size": large}), _final_acc) for k in ("bn", "ln", "gn")}
    bn_worse = _clear(drops["bn"], 0) < 0
    others_hold = all(_clear(drops[k], 0) >= 0 or interval(drops[k])[0] > interval(drops["bn"])[0] / 2 for k in ("ln", "gn"))
    word = "holds" if bn_worse and others_hold else "partly: BN degrades, but so do the others" if bn_worse else "not on this setup"
    return (f"{word}. Final val accuracy at batch {small} - at batch {large}, per seed: "
            + "; ".join(f"{k} {_ci(v)}" for k, v in drops.items()) + ".")


def _converging_values(runs: list[RunData], kind: str, key: str) -> list[float]:
    """The values of `key` at which every seed of norm `kind` converged, ascending."""
    values = {float(r.params[key]) for r in runs if r.params["norm.kind"] == kind}
    return sorted(v for v in values if all(r.converged for r in runs
                                           if r.params["norm.kind"] == kind and float(r.params[key]) == v))


def init_scale(runs: list[RunData]) -> str:
    scales = sorted({float(r.params["model.init_scale"]) for r in runs})
    ok = {k: _converging_values(runs, k, "model.init_scale") for k in ("none", "bn", "ln")}
    norms_everywhere = all(ok[k] == scales for k in ("bn", "ln"))
    word = ("holds" if norms_everywhere and ok["none"] != scales else
            "partly: no norm converges at every scale too" if norms_everywhere else "not on this setup")
    return f"{word}. Init scales at which every seed converged: " + "; ".join(
        f"{k} {', '.join(f'{v:g}' for v in ok[k]) or 'none'}" for k in ok) + f" (of {', '.join(f'{v:g}' for v in scales)})."


def depth(runs: list[RunData]) -> str:
    depths = sorted({int(r.params["model.depth"]) for r in runs})
    deepest = {k: max(_converging_values(runs, k, "model.depth"), default=None) for k in ("none", "bn", "ln")}

    def first_to_last(kind: str) -> float:
        """Mean over seeds of the last epoch's gradient norm of the first hidden layer / of the last one,
        at the largest depth: below 1, the gradient shrinks towards the input."""
        deep = [r for r in runs if r.params["norm.kind"] == kind and int(r.params["model.depth"]) == depths[-1]]
        return interval([r.metric("grad/hidden1/norm") / r.metric(f"grad/hidden{depths[-1]}/norm") for r in deep])[0]

    trainable = deepest["bn"] == depths[-1] and (deepest["none"] or 0) < depths[-1]
    vanishes = first_to_last("none") < first_to_last("bn")
    word = "holds" if trainable and vanishes else "partly" if trainable or vanishes else "not on this setup"
    return (f"{word}. Deepest MLP at which every seed converged: " + "; ".join(f"{k} {d:g}" if d else f"{k} -" for k, d in deepest.items())
            + f" (of {', '.join(map(str, depths))} hidden layers). At depth {depths[-1]}, the gradient norm of the first "
            f"hidden layer / the last one: none {first_to_last('none'):.3g}, bn {first_to_last('bn'):.3g}, ln {first_to_last('ln'):.3g}.")


def _mean_gap(run: RunData) -> float:
    """The last epoch's bn/<layer>/train_eval_gap, mean over BN layers."""
    gaps = [v for k, v in run.metrics.items() if k.startswith("bn/") and k.endswith("/train_eval_gap")]
    return sum(gaps) / len(gaps)


def bn_momentum(runs: list[RunData]) -> str:
    momenta = sorted({float(r.params["norm.momentum"]) for r in runs})
    small, default = _runs(runs, {"norm.momentum": momenta[0]}), _runs(runs, {"norm.momentum": 0.1})
    acc = _diffs(small, default, _final_acc)
    gap = _diffs(small, default, _mean_gap)
    lower, wider = _clear(acc, 0) < 0, _clear(gap, 0) > 0
    word = "holds" if lower and wider else "partly" if lower or wider else "not on this setup: no clear difference"
    return (f"{word}. Momentum {momenta[0]:g} - 0.1, per seed: final val accuracy {_ci(acc)}; "
            f"train-eval gap (mean over BN layers) {_ci(gap, '+.3g')}.")


def sequence(runs: list[RunData]) -> str:
    def by(kind: str, variable: bool) -> dict[str, RunData]:
        return _runs(runs, {"norm.kind": kind, "dataset.variable_length": str(variable)})

    cost = {k: _diffs(by(k, True), by(k, False), _final_acc) for k in ("none", "bn", "ln")}
    bn_vs_ln = _diffs(by("bn", True), by("ln", True), _final_acc)
    ln_holds = _clear(cost["ln"], 0) >= 0  # no clear loss of accuracy at variable length
    word = ("holds" if ln_holds and _clear(bn_vs_ln, 0) >= 0 else "partly: LN trains at any length, masked BN falls behind it"
            if ln_holds else "not on this setup: LN loses accuracy at variable length")
    return (f"{word}. Final val accuracy at variable - fixed length, per seed: "
            + "; ".join(f"{k} {_ci(v)}" for k, v in cost.items()) + f". At variable length, bn - ln: {_ci(bn_vs_ln)}.")
