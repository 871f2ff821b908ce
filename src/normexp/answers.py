"""`make answers`: every question's preset on Fashion-MNIST over 3 seeds, the claim it tests and the
verdict the data gives, written into README's "Answers on Fashion-MNIST" section (between the two
markers below) with the figures under docs/answers/.

    python -m normexp.answers                                 # all presets (make answers)
    python -m normexp.answers --only convergence --set trainer.max_epochs=2 --set dataset=digits
    python -m normexp.answers --from-runs                     # judge the stored sweeps again, train nothing

A verdict comes from runs paired by seed (normexp.stats.interval: Student-t 95% intervals): a claim
"holds" only when the interval is clear of "no difference"; "not on this setup" is a verdict too.
"""

import argparse
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from mlflow.tracking import MlflowClient

from normexp import report, sweep, threads, tracking
from normexp.errors import ConfigError
from normexp.stats import interval
from normexp.variants import RunData, variant_keys

START, END = "<!-- answers:start (make answers rewrites this section) -->", "<!-- answers:end -->"
DOCS = tracking.PROJECT_ROOT / "docs" / "answers"


def _runs(runs: list[RunData], values: dict) -> dict[str, RunData]:
    """The runs whose params have these values ({"norm.kind": "bn"}), by seed."""
    return {r.params["seed"]: r for r in runs if all(r.params.get(k) == str(v) for k, v in values.items())}


def _paired(a: dict[str, RunData], b: dict[str, RunData], value) -> list[float]:
    """value(a's run, b's run) for each seed both have, skipping None (e.g. a target never reached)."""
    values = [value(a[seed], b[seed]) for seed in a if seed in b]
    return [v for v in values if v is not None]


def _ci(values: list[float], spec: str = "+.3f") -> str:
    mean, half, n = interval(values)
    return f"{mean:{spec}} (n={n})" if n < 2 else f"{mean:{spec}}, 95% CI {mean - half:{spec}}..{mean + half:{spec}} (n={n})"


def _clear(values: list[float], null: float) -> int:
    """+1 / -1 when the 95% interval lies above / below `null`, 0 when it contains it (or n < 2)."""
    mean, half, n = interval(values)
    return 0 if n < 2 or mean - half <= null <= mean + half else (1 if mean > null else -1)


def _speedup(plain: RunData, normed: RunData) -> float | None:
    """Epochs to target without / with the norm; a run that never reached it counts as its epoch budget
    (so the speedup is then a lower bound)."""
    budget = float(plain.params["trainer.max_epochs"])
    none_epochs = plain.metrics.get("outcome/epochs_to_target", budget)
    norm_epochs = normed.metrics.get("outcome/epochs_to_target")
    return None if norm_epochs is None else none_epochs / norm_epochs


def _final_acc(run: RunData) -> float:
    return run.metric("outcome/final_val_acc")


def convergence(runs: list[RunData]) -> str:
    """Per model (the preset trains the exercises' MLP and a deeper one): the paired speedup of bn."""
    verdicts = []
    for model in sorted({r.params["model.name"] for r in runs}):
        speedups = _paired(_runs(runs, {"norm.kind": "none", "model.name": model}),
                           _runs(runs, {"norm.kind": "bn", "model.name": model}), _speedup)
        direction, (mean, _, _) = _clear(speedups, 1), interval(speedups)
        if direction > 0:
            word = "holds" if mean >= 2 else "partly: BN is faster, but by less than 2x"
        else:
            word = "not on this setup: no clear speedup" if direction == 0 else "not on this setup: BN is slower"
        verdicts.append(f"{model}: {word}; speedup (epochs to target, none / bn, per seed) {_ci(speedups, '.2f')}")
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
    diffs = _paired(_runs(runs, {"norm.placement": "pre"}), _runs(runs, {"norm.placement": "post"}),
                    lambda pre, post: _final_acc(pre) - _final_acc(post))
    word = {1: "holds", 0: "not on this setup: no clear difference", -1: "not on this setup: after is better"}
    return f"{word[_clear(diffs, 0)]}. Final val accuracy, before - after the ReLU, per seed: {_ci(diffs)}."


def _each_norm_faster(runs: list[RunData]) -> tuple[dict[str, list[float]], str]:
    plain = _runs(runs, {"norm.kind": "none"})
    kinds = sorted({r.params["norm.kind"] for r in runs} - {"none"})
    speedups = {k: _paired(plain, _runs(runs, {"norm.kind": k}), _speedup) for k in kinds}
    faster = [k for k in kinds if _clear(speedups[k], 1) > 0]
    word = "holds" if len(faster) == len(kinds) else f"partly: only {', '.join(faster)}" if faster else "not on this setup"
    return speedups, word


def norms(runs: list[RunData]) -> str:
    speedups, word = _each_norm_faster(runs)
    return f"{word}. Speedup over none per seed: " + "; ".join(f"{k} {_ci(v, '.2f')}" for k, v in speedups.items()) + "."


def norms_cnn(runs: list[RunData]) -> str:
    """Judged on final val accuracy: on 10% of the data the CNNs may not reach the target at all."""
    plain = _runs(runs, {"norm.kind": "none"})
    kinds = sorted({r.params["norm.kind"] for r in runs} - {"none"})
    gains = {k: _paired(_runs(runs, {"norm.kind": k}), plain, lambda n, p: _final_acc(n) - _final_acc(p)) for k in kinds}
    better = [k for k in kinds if _clear(gains[k], 0) > 0]
    best = max(kinds, key=lambda k: interval(gains[k])[0])
    word = ("holds" if len(better) == len(kinds) and best == "bn" else f"partly: only {', '.join(better)}" if better
            else "not on this setup: no norm is clearly better than none")
    return (f"{word}; the largest mean gain is {best}'s. Final val accuracy, norm - none, per seed: "
            + "; ".join(f"{k} {_ci(v)}" for k, v in gains.items()) + ".")


def cnn(runs: list[RunData]) -> str:
    diffs = _paired(_runs(runs, {"norm.kind": "bn"}), _runs(runs, {"norm.kind": "none"}), lambda bn, none: _final_acc(bn) - _final_acc(none))
    word = {1: "holds", 0: "not on this setup: no clear difference", -1: "not on this setup: BN is worse"}
    return f"{word[_clear(diffs, 0)]}. Final val accuracy, bn - none, per seed: {_ci(diffs)}."


def regularization(runs: list[RunData]) -> str:
    def gap(run: RunData) -> float:
        return run.metric("outcome/train_val_gap")

    plain = _runs(runs, {"norm.kind": "none", "model.dropout": 0.0})
    by_bn = _paired(_runs(runs, {"norm.kind": "bn", "model.dropout": 0.0}), plain, lambda bn, none: gap(bn) - gap(none))
    by_dropout = _paired(_runs(runs, {"norm.kind": "none", "model.dropout": 0.3}), plain, lambda d, none: gap(d) - gap(none))
    word = {-1: "holds", 0: "not on this setup: no clear change in the gap", 1: "not on this setup: BN widens the gap"}
    return (f"{word[_clear(by_bn, 0)]}. Change of the train-val gap against none (no dropout), per seed: "
            f"BN {_ci(by_bn)}; dropout 0.3 {_ci(by_dropout)}.")


def batch_size(runs: list[RunData]) -> str:
    sizes = sorted({int(r.params["dataset.batch_size"]) for r in runs})
    small, large = sizes[0], sizes[-1]
    drops = {k: _paired(_runs(runs, {"norm.kind": k, "dataset.batch_size": small}), _runs(runs, {"norm.kind": k, "dataset.batch_size": large}),
                        lambda s, l: _final_acc(s) - _final_acc(l)) for k in ("bn", "ln", "gn")}
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
    acc = _paired(small, default, lambda s, d: _final_acc(s) - _final_acc(d))
    gap = _paired(small, default, lambda s, d: _mean_gap(s) - _mean_gap(d))
    lower, wider = _clear(acc, 0) < 0, _clear(gap, 0) > 0
    word = "holds" if lower and wider else "partly" if lower or wider else "not on this setup: no clear difference"
    return (f"{word}. Momentum {momenta[0]:g} - 0.1, per seed: final val accuracy {_ci(acc)}; "
            f"train-eval gap (mean over BN layers) {_ci(gap, '+.3g')}.")


def sequence(runs: list[RunData]) -> str:
    def by(kind: str, variable: bool) -> dict[str, RunData]:
        return _runs(runs, {"norm.kind": kind, "dataset.variable_length": str(variable)})

    cost = {k: _paired(by(k, True), by(k, False), lambda v, f: _final_acc(v) - _final_acc(f)) for k in ("none", "bn", "ln")}
    bn_vs_ln = _paired(by("bn", True), by("ln", True), lambda bn, ln: _final_acc(bn) - _final_acc(ln))
    ln_holds = _clear(cost["ln"], 0) >= 0  # no clear loss of accuracy at variable length
    word = ("holds" if ln_holds and _clear(bn_vs_ln, 0) >= 0 else "partly: LN trains at any length, masked BN falls behind it"
            if ln_holds else "not on this setup: LN loses accuracy at variable length")
    return (f"{word}. Final val accuracy at variable - fixed length, per seed: "
            + "; ".join(f"{k} {_ci(v)}" for k, v in cost.items()) + f". At variable length, bn - ln: {_ci(bn_vs_ln)}.")


@dataclass
class Question:
    preset: str
    claim: str
    shrink: list[str]  # overrides that shorten the preset without changing its answer (said in README)
    verdict: Callable[[list[RunData]], str]


QUESTIONS = [
    Question("convergence", "BN trains 2-10x faster", ["trainer.max_epochs=15"], convergence),
    Question("lr_tolerance", "BN tolerates 10-100x higher learning rates", ["trainer.max_epochs=5"], lr_tolerance),
    Question("placement", "BN before the activation trains better than after it", ["trainer.max_epochs=10"], placement),
    Question("norms", "every normalization makes the MLP reach the target faster", ["trainer.max_epochs=10"], norms),
    Question("norms_cnn", "every normalization helps a CNN (higher final val accuracy), BN most", ["trainer.max_epochs=5"],
             norms_cnn),
    Question("cnn", "BN helps a small CNN trained on little data", ["trainer.max_epochs=5"], cnn),
    Question("regularization", "BN acts as a regularizer (a smaller train-val gap)", [], regularization),
    Question("batch_size", "BN degrades below batch size 8, GN and LN do not",
             ["dataset.fraction=0.1", "trainer.max_epochs=3"], batch_size),
    Question("init_scale", "BN and LN converge at every init scale from 0.1 to 10, no norm only near 1",
             ["dataset.fraction=0.25", "trainer.max_epochs=5"], init_scale),
    Question("depth", "without a norm the gradient vanishes towards the input of a deep MLP; BN keeps it trainable",
             ["dataset.fraction=0.25", "trainer.max_epochs=5"], depth),
    Question("bn_momentum", "a too small BN momentum leaves the running statistics behind: a larger train-eval gap, "
             "lower val accuracy", ["trainer.max_epochs=5"], bn_momentum),
    Question("sequence", "LN trains sequences of any length; BN, masked to the valid tokens, holds up too",
             ["dataset.fraction=0.25", "trainer.max_epochs=3"], sequence),
]


def train(question: Question, seeds: str, extra: list[str], jobs: int, tracking_uri: str, folder: Path) -> str:
    """Run the preset as one multirun, `jobs` runs at once; returns its parent run's id."""
    # joblib's workers get CPUs / jobs torch threads each (normexp.threads): on 2 cores, two one-thread
    # jobs train ~1.7x as many epochs per second as one job with two threads.
    launcher = ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"] if jobs > 1 else []
    sweep_dir = folder / question.preset
    subprocess.run([sys.executable, "-m", "normexp.train", "-m", f"experiment={question.preset}", f"seed={seeds}",
                    *question.shrink, *extra, *launcher, f"tracking.uri={tracking_uri}", "trainer.progress_bar=false",
                    f"hydra.sweep.dir={sweep_dir}"], check=True, stdout=subprocess.DEVNULL)
    return (sweep_dir / sweep.PARENT_RUN_FILE).read_text().strip()


def latest_sweep(client: MlflowClient, preset: str) -> str:
    """The id of the newest finished sweep of `preset` in the store (for --from-runs)."""
    experiment = client.get_experiment_by_name(preset)
    found = client.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED'",
                               order_by=["attributes.start_time DESC"]) if experiment else []
    sweeps = [run.info.run_id for run in found if "sweep_dir" in run.data.tags]
    if not sweeps:
        raise ConfigError(f"no finished sweep of experiment '{preset}' in {client.tracking_uri}; run "
                          f"`python -m normexp.answers --only {preset}` first, or drop --from-runs")
    return sweeps[0]


def judge(question: Question, client: MlflowClient, parent_id: str, docs: Path) -> tuple[str, float]:
    """(README Markdown of one answer: the command that ran, claim, verdict, tables and figure; the
    sweep's minutes), from its runs in the store."""
    parent = client.get_run(parent_id)
    minutes = (parent.info.end_time - parent.info.start_time) / 60_000
    runs, left_out = report.load_runs(client, report.sweep_runs(client, parent_id))
    # The command as typed: the store's location and the progress bar aside; the launcher is Hydra's
    # (not among the job overrides), known from how many jobs shared the CPUs.
    overrides = [o for o in parent.data.tags["overrides"].split() if not o.startswith(("tracking.uri=", "trainer.progress_bar="))]
    jobs = max((r.jobs_at_once for r in runs), default=1)
    overrides += ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"] if jobs > 1 else []
    built = report.report_from_loaded(runs, left_out, question.preset)  # titled by the experiment's name
    try:
        docs.mkdir(parents=True, exist_ok=True)
        figure = docs / f"{question.preset}.png"
        built.figures["curves"].savefig(figure, dpi=70)
        varied = ", ".join(variant_keys(runs))
        question_text = client.get_experiment_by_name(built.title).tags.get("mlflow.note.content", built.title)
        lines = [f"### {question_text.split(' Claim tested:')[0]}", "",
                 f"`python -m normexp.train -m {' '.join(overrides)}` ({minutes:.1f} min; varies {varied})", "",
                 f"**Claim:** {question.claim}. **Verdict:** {question.verdict(runs)}", "",
                 *[table.markdown for table in built.tables],
                 f"![{question.preset}](docs/answers/{figure.name})", ""]
    finally:
        built.close()
    return "\n".join(lines), minutes


def machine() -> str:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()}-core {platform.machine()} CPU, {gpu}, torch {torch.__version__}"


def rewrite(readme: Path, section: str) -> None:
    text = readme.read_text()
    if START not in text or END not in text:
        sys.exit(f"error: {readme} has no answers markers ({START} ... {END}); put them where the section goes")
    head, rest = text.split(START, 1)
    readme.write_text(head + START + "\n" + section + "\n" + END + rest.split(END, 1)[1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m normexp.answers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", choices=[q.preset for q in QUESTIONS], help="these presets only")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--jobs", type=int, default=threads.cpus(), help="runs at once (default: one per CPU, %(default)s)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="one more override for every preset")
    parser.add_argument("--from-runs", action="store_true",
                        help="train nothing: judge each preset's newest finished sweep in the store again")
    parser.add_argument("--tracking-uri", default=report.default_tracking_uri())
    parser.add_argument("--readme", type=Path, default=tracking.PROJECT_ROOT / "README.md")
    parser.add_argument("--docs", type=Path, default=DOCS)
    args = parser.parse_args(argv)
    questions = [q for q in QUESTIONS if not args.only or q.preset in args.only]
    client = MlflowClient(args.tracking_uri)
    with tempfile.TemporaryDirectory() as folder:
        parts = []
        for question in questions:
            try:
                parent_id = (latest_sweep(client, question.preset) if args.from_runs else
                             train(question, args.seeds, args.set, args.jobs, args.tracking_uri, Path(folder)))
            except ConfigError as error:
                sys.exit(f"error: {error}")
            parts.append(judge(question, client, parent_id, args.docs))
            print(f"{question.preset}: {parts[-1][1]:.1f} min", flush=True)
    minutes = sum(m for _, m in parts)
    rejudged = " The verdicts and tables were written again from those runs (`--from-runs`)." if args.from_runs else ""
    header = (f"Written by `make answers`: {minutes:.0f} min of sweeps on a {machine()}. Each command below is "
              "what ran; the presets are shortened where the answer does not change (fewer epochs, some on a "
              f"fraction of the training set).{rejudged}\n")
    rewrite(args.readme, "\n".join([header, *(text for text, _ in parts)]))
    print(f"rewrote the answers in {args.readme} ({minutes:.1f} min of sweeps)")


if __name__ == "__main__":
    main(sys.argv[1:])
