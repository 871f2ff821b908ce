"""The verdict on each question's claim, from a preset's finished runs (results.RunData): each function
returns a Verdict whose parts are each one of the four kinds of normexp.analysis.claims (holds, no
difference beyond ±M, does not hold, inconclusive at n seeds). Runs are paired by seed; the margin M is
the preset's answers.margin, logged with every run.

The grid questions (learning rate, init scale, depth) are judged per cell on "every seed converged": a
cell whose seeds split leaves the claim inconclusive, and no seed count is estimated for it.
"""

import math
from dataclasses import dataclass, field

from normexp.analysis.claims import DOES_NOT_HOLD, HOLDS, INCONCLUSIVE, Claim, Judgement, judge
from normexp.analysis.results import RunData, differences, paired, speedups
from normexp.analysis.stats import interval


@dataclass(frozen=True)
class Verdict:
    words: str                 # each part's verdict: "mlp: holds (faster: yes; 2-10x: not shown); mlp_deep: ..."
    evidence: str              # each part's effect with its interval and n
    n: int                     # seeds: the fewest paired in any part
    seeds_needed: int | None   # the most seeds an inconclusive part needs (None: no part gave an estimate)
    parts: dict[str, Judgement] = field(default_factory=dict)  # combine's judged parts, by label

    def brief(self, seeds: int) -> str:
        """The evidence for a table whose header names the 95% CI and the seeds: intervals in brackets, an n
        only where it is not `seeds`. A verdict of no judged parts (the grid questions) has no interval."""
        return _evidence(self.parts, seeds) if self.parts else self.evidence


def _label(name: str, text: str) -> str:
    return f"{name}: {text}" if name else text


def _evidence(parts: dict[str, Judgement], seeds: int | None = None) -> str:
    measures = {j.measure for j in parts.values()}
    if len(parts) > 1 and len(measures) == 1:  # one measure: said once, then each part's value
        return f"{measures.pop()}: " + "; ".join(f"{k} {j.value(seeds)}" for k, j in parts.items())
    return "; ".join(_label(k, j.effect(seeds)) for k, j in parts.items())


def combine(parts: dict[str, Judgement]) -> Verdict:
    """One verdict from labelled parts ('' for a claim of one part)."""
    needed = [j.seeds_needed for j in parts.values() if j.kind == INCONCLUSIVE and j.seeds_needed]
    return Verdict("; ".join(_label(k, j.words) for k, j in parts.items()), _evidence(parts),
                   min((j.n for j in parts.values()), default=0), max(needed, default=None), parts)


def margin(runs: list[RunData]) -> float:
    """The preset's answers.margin, as its runs logged it."""
    values = {r.params.get("answers.margin") for r in runs}
    if len(values) != 1 or None in values or "None" in values:
        raise ValueError(f"the runs' answers.margin is {sorted(map(str, values))}: a judged preset sets one margin")
    return float(values.pop())


def _runs(runs: list[RunData], values: dict) -> list[RunData]:
    """The runs whose params have these values ({"norm.kind": "bn"})."""
    return [r for r in runs if all(r.params.get(k) == str(v) for k, v in values.items())]


def _diffs(a: list[RunData], b: list[RunData], value) -> list[float]:
    """value(a's run) - value(b's run) for each seed both ran."""
    return differences(paired(b, a), value)


def _speedups(plain: list[RunData], normed: list[RunData]) -> list[float]:
    """The per-seed speedups of `normed` over `plain` (results.speedups: one rule for a target never reached)."""
    return speedups(paired(plain, normed)).values


def _final_acc(run: RunData) -> float:
    return run.outcome.final_val_acc


def _kinds(runs: list[RunData]) -> list[str]:
    return sorted({r.params["norm.kind"] for r in runs} - {"none"})


def convergence(runs: list[RunData]) -> Verdict:
    """Per model (the exercises' MLP and a deeper one): the speedup of bn, a geometric mean over seeds."""
    claim = Claim("speedup (epochs to target, none / bn)", "faster", margin(runs), ratio=True, size=(2, 10))
    return combine({model: judge(claim, _speedups(_runs(runs, {"norm.kind": "none", "model.name": model}),
                                                  _runs(runs, {"norm.kind": "bn", "model.name": model})))
                    for model in sorted({r.params["model.name"] for r in runs})})


def norms(runs: list[RunData]) -> Verdict:
    plain = _runs(runs, {"norm.kind": "none"})
    claim = Claim("speedup over none", "faster", margin(runs), ratio=True)
    return combine({k: judge(claim, _speedups(plain, _runs(runs, {"norm.kind": k}))) for k in _kinds(runs)})


def placement(runs: list[RunData]) -> Verdict:
    claim = Claim("final val accuracy, before - after the ReLU", "better before", margin(runs))
    before, after = _runs(runs, {"norm.placement": "pre"}), _runs(runs, {"norm.placement": "post"})
    return combine({"": judge(claim, _diffs(before, after, _final_acc))})


def norms_cnn(runs: list[RunData]) -> Verdict:
    """Each norm against none on final val accuracy, then BN against the best of the others."""
    plain, kinds = _runs(runs, {"norm.kind": "none"}), _kinds(runs)
    claim = Claim("final val accuracy, norm - none", "higher accuracy", margin(runs))
    parts = {k: judge(claim, _diffs(_runs(runs, {"norm.kind": k}), plain, _final_acc)) for k in kinds}
    others = [k for k in kinds if k != "bn"]
    if "bn" in kinds and others:
        best = max(others, key=lambda k: interval([r.outcome.final_val_acc for r in _runs(runs, {"norm.kind": k})])[0])
        bn_most = Claim(f"final val accuracy, bn - {best}", "higher for bn", claim.margin)
        parts[f"bn most (against {best})"] = judge(bn_most, _diffs(_runs(runs, {"norm.kind": "bn"}),
                                                                   _runs(runs, {"norm.kind": best}), _final_acc))
    return combine(parts)


def cnn(runs: list[RunData]) -> Verdict:
    claim = Claim("final val accuracy, bn - none", "higher accuracy", margin(runs))
    bn, plain = _runs(runs, {"norm.kind": "bn"}), _runs(runs, {"norm.kind": "none"})
    return combine({"": judge(claim, _diffs(bn, plain, _final_acc))})


def regularization(runs: list[RunData]) -> Verdict:
    """BN's change of the train-val gap against none, both without dropout; dropout 0.3's beside it."""
    def gap(run: RunData) -> float:
        return run.outcome.train_val_gap

    plain = _runs(runs, {"norm.kind": "none", "model.dropout": 0.0})
    claim = Claim("change of the train-val gap against none", "smaller gap", margin(runs), sign=-1)
    bn = _runs(runs, {"norm.kind": "bn", "model.dropout": 0.0})
    dropout = _runs(runs, {"norm.kind": "none", "model.dropout": 0.3})
    return combine({"bn": judge(claim, _diffs(bn, plain, gap)),
                    "dropout 0.3": judge(claim, _diffs(dropout, plain, gap))})


def batch_size(runs: list[RunData]) -> Verdict:
    """Per model and norm: the change of final val error from batch 128 down to the smallest batch. The claim
    is that bn's error rises there (holds) and ln's and gn's do not (no difference beyond ±M)."""
    small = min(int(r.params["dataset.batch_size"]) for r in runs)
    claim = Claim(f"final val error at batch {small} - at batch 128", f"worse at batch {small}", margin(runs))
    parts = {}
    for model in sorted({r.params["model.name"] for r in runs}):
        for kind in ("bn", "ln", "gn"):
            at = {b: _runs(runs, {"model.name": model, "norm.kind": kind, "dataset.batch_size": b})
                  for b in (small, 128)}
            if at[small] and at[128]:
                parts[f"{model} {kind} degrades"] = judge(claim, _diffs(at[128], at[small], _final_acc))  # error: 1 - acc
    return combine(parts)


def bn_momentum(runs: list[RunData]) -> Verdict:
    momenta = sorted({float(r.params["norm.momentum"]) for r in runs})
    small, default = _runs(runs, {"norm.momentum": momenta[0]}), _runs(runs, {"norm.momentum": 0.1})

    def mean_gap(run: RunData) -> float:
        """The last epoch's bn/<layer>/train_eval_gap, mean over BN layers."""
        gaps = [v for k, v in run.metrics.items() if k.startswith("bn/") and k.endswith("/train_eval_gap")]
        return sum(gaps) / len(gaps) if gaps else math.nan

    m = margin(runs)
    return combine({
        "lower accuracy": judge(Claim(f"final val accuracy, momentum {momenta[0]:g} - 0.1", "lower", m, sign=-1),
                                _diffs(small, default, _final_acc)),
        "larger train-eval gap": judge(Claim(f"train-eval gap (mean over BN layers), momentum {momenta[0]:g} - 0.1",
                                             "larger", m), _diffs(small, default, mean_gap))})


def sequence(runs: list[RunData]) -> Verdict:
    """LN at variable length against fixed (the claim: no loss beyond ±M), and masked BN against LN at
    variable length (the claim: no worse beyond ±M)."""
    def by(kind: str, variable: bool) -> list[RunData]:
        return _runs(runs, {"norm.kind": kind, "dataset.variable_length": str(variable)})

    m = margin(runs)
    loses = Claim("final val accuracy, variable - fixed length", "lower at variable length", m, sign=-1)
    behind = Claim("final val accuracy at variable length, bn - ln", "behind", m, sign=-1)
    return combine({
        "ln loses accuracy at variable length": judge(loses, _diffs(by("ln", True), by("ln", False), _final_acc)),
        "masked bn falls behind ln": judge(behind, _diffs(by("bn", True), by("ln", True), _final_acc))})


# ---- the grid questions: every seed converged, per cell ------------------------------------------


def _cells(runs: list[RunData], kind: str, key: str) -> dict[float, tuple[int, int]]:
    """{value of `key`: (seeds converged, seeds)} of norm `kind`."""
    cells = {}
    for r in runs:
        if r.params["norm.kind"] == kind:
            done, total = cells.get(float(r.params[key]), (0, 0))
            cells[float(r.params[key])] = (done + r.converged, total + 1)
    return dict(sorted(cells.items()))


def _grid_verdict(kind: str, split: list[str], evidence: str, n: int) -> Verdict:
    """HOLDS or DOES_NOT_HOLD as decided on the cells where every seed agreed; inconclusive when a cell the
    claim depends on split its seeds."""
    if split:
        words = f"inconclusive at {n} seeds (seeds split at {', '.join(split)}; no seed estimate for a split cell)"
    else:
        words = HOLDS if kind == HOLDS else f"{DOES_NOT_HOLD} on this setup"
    return Verdict(words, evidence, n, None)


def _shown(cells: dict[float, tuple[int, int]]) -> str:
    return ", ".join(f"{v:g} {done}/{total}" for v, (done, total) in cells.items())


def lr_tolerance(runs: list[RunData]) -> Verdict:
    """The ratio of the largest rates at which every seed converged, bn / none, bracketed by the grid: from
    bn's largest converging / none's smallest failing to bn's smallest failing / none's largest converging."""
    cells = {k: _cells(runs, k, "optim.lr") for k in ("none", "bn")}
    n = min(t for c in cells.values() for _, t in c.values())
    ok = {k: [v for v, (d, t) in c.items() if d == t] for k, c in cells.items()}
    fail = {k: [v for v, (d, t) in c.items() if d < t] for k, c in cells.items()}
    evidence = "Converged seeds per learning rate: " + "; ".join(f"{k} {_shown(c)}" for k, c in cells.items())
    none_fails = [v for v in fail["none"] if ok["none"] and v > max(ok["none"])]
    if not ok["none"] or not ok["bn"] or not none_fails:
        return Verdict(f"inconclusive at {n} seeds (the grid does not bracket both norms' largest rate)",
                       evidence, n, None)
    low = max(ok["bn"]) / min(none_fails)
    high = min((v for v in fail["bn"] if v > max(ok["bn"])), default=math.inf) / max(ok["none"])
    evidence += f". Ratio of the largest converging rates, bn / none: {low:.3g}x..{high:.3g}x (the grid's bracket)"
    if low > 1:
        size = "yes" if 10 <= low and high <= 100 else "no" if high < 10 or low > 100 else "not shown"
        return Verdict(f"holds (higher: yes; 10-100x: {size})", evidence, n, None)
    words = (f"{DOES_NOT_HOLD} on this setup" if high <= 1 else
             f"inconclusive at {n} seeds (the grid's bracket contains 1x; the search brackets finer)")
    return Verdict(words, evidence, n, None)


def init_scale(runs: list[RunData]) -> Verdict:
    """BN and LN converge at every scale; without a norm the MLP fails at some scale."""
    cells = {k: _cells(runs, k, "model.init_scale") for k in ("none", "bn", "ln")}
    n = min(t for c in cells.values() for _, t in c.values())
    split = [f"{k} {v:g}" for k, c in cells.items() for v, (d, t) in c.items() if 0 < d < t]
    norms_everywhere = all(d == t for k in ("bn", "ln") for d, t in cells[k].values())
    none_fails = any(d == 0 for d, _ in cells["none"].values())
    evidence = "Converged seeds per init scale: " + "; ".join(f"{k} {_shown(c)}" for k, c in cells.items())
    return _grid_verdict(HOLDS if norms_everywhere and none_fails else DOES_NOT_HOLD,
                         [] if norms_everywhere and none_fails else split, evidence, n)


def depth(runs: list[RunData]) -> Verdict:
    """Judged at the deepest depth where BN trains every seed: there, without a norm, no seed trains (BN
    keeps it trainable), and the gradient shrinks towards the input more without a norm than with BN.
    Deeper than that BN fails too (with these few epochs), which says how deep it goes, not that the claim
    fails."""
    cells = {k: _cells(runs, k, "model.depth") for k in ("none", "bn", "ln")}
    n = min(t for c in cells.values() for _, t in c.values())

    def deepest_trained(kind: str) -> float | None:
        return max((v for v, (done, total) in cells[kind].items() if done == total), default=None)

    def first_to_last(kind: str, at: float) -> float:
        """Mean over seeds of the last epoch's gradient norm of the first hidden layer / of the last one,
        at depth `at`: below 1, the gradient shrinks towards the input."""
        deep = _runs(runs, {"norm.kind": kind, "model.depth": int(at)})
        return interval([r.metric("grad/hidden1/norm") / r.metric(f"grad/hidden{int(at)}/norm") for r in deep])[0]

    trained = {k: deepest_trained(k) for k in cells}
    evidence = ("Every seed trains up to depth: " + ", ".join(f"{k} {'no depth' if d is None else f'{d:g}'}"
                                                              for k, d in trained.items())
                + ". Converged seeds per depth: " + "; ".join(f"{k} {_shown(c)}" for k, c in cells.items()))
    at = trained["bn"]
    if at is None:  # BN trains no depth on every seed: a split cell leaves it open, else it fails
        split = [f"bn {v:g}" for v, (d, t) in cells["bn"].items() if 0 < d < t]
        return _grid_verdict(DOES_NOT_HOLD, split, evidence, n)
    ratios = {k: first_to_last(k, at) for k in cells}
    evidence += (f". At depth {at:g}, the deepest where bn trains every seed, the gradient norm of the first "
                 "hidden layer / the last one: " + ", ".join(f"{k} {r:.3g}" for k, r in ratios.items()))
    none_done, none_total = cells["none"].get(at, (0, 0))
    if 0 < none_done < none_total:
        return _grid_verdict(DOES_NOT_HOLD, [f"none {at:g}"], evidence, n)
    trainable = none_total > 0 and none_done == 0
    vanishes = ratios["none"] < ratios["bn"]
    return _grid_verdict(HOLDS if trainable and vanishes else DOES_NOT_HOLD, [], evidence, n)


def stable_lr(summaries: list[dict], seeds: int) -> Verdict:
    """The search's answer (stable_lr.study.summarize's dicts, one per norm): bn's largest stable rate over
    none's, bracketed from bn's largest stable / none's smallest unstable to bn's smallest unstable / none's
    largest stable rate; the claim "10-100x" holds when the bracket is above 1x."""
    by = {s["variant"]: s for s in summaries}

    def bracket(kind: str) -> str:
        s = by[kind]
        return f"{kind} {s['max_stable_lr']:.3g} (unstable at {s['min_unstable_lr']:.3g})" if s["max_stable_lr"] and \
            s["min_unstable_lr"] else f"{kind} {s['max_stable_lr']} (no bracket)"

    evidence = "Largest stable learning rate: " + "; ".join(bracket(k) for k in by)
    none, bn = by.get("none"), by.get("bn")
    if not none or not bn or not all((none["max_stable_lr"], none["min_unstable_lr"], bn["max_stable_lr"])):
        return Verdict(f"inconclusive at {seeds} seeds (the search bracketed no rate for none or bn)",
                       evidence, seeds, None)
    low = bn["max_stable_lr"] / none["min_unstable_lr"]
    high = (bn["min_unstable_lr"] or math.inf) / none["max_stable_lr"]
    evidence += (". Ratio to none: " + ", ".join(f"{k} {s['max_stable_lr'] / none['max_stable_lr']:.3g}x"
                                                   for k, s in by.items() if k != "none" and s["max_stable_lr"])
                 + f"; bn / none bracketed {low:.3g}x..{high:.3g}x")
    if low > 1:
        size = "yes" if 10 <= low and high <= 100 else "no" if high < 10 or low > 100 else "not shown"
        return Verdict(f"holds (higher: yes; 10-100x: {size})", evidence, seeds, None)
    if high <= 1:
        return Verdict(f"{DOES_NOT_HOLD} on this setup", evidence, seeds, None)
    return Verdict(f"inconclusive at {seeds} seeds (the brackets overlap: a finer search.resolution decides)", evidence,
                   seeds, None)
