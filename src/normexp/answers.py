"""`make answers`: every question's preset on Fashion-MNIST over 3 seeds, the claim it tests and the
verdict the data gives. Writes docs/answers.md whole (one section per question, the figures beside it
in docs/answers/) and rewrites README's summary table (between the two markers below), one row per
question linking to its section; table and page come from the same verdicts, so they always agree.

    python -m normexp.answers                                 # all presets (make answers)
    python -m normexp.answers --only convergence --set trainer.max_epochs=2 --set dataset=digits
    python -m normexp.answers --from-runs                     # judge the stored sweeps again, train nothing

The verdicts themselves are normexp.analysis.verdicts.
"""

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from mlflow.tracking import MlflowClient

from normexp import report, threads
from normexp.analysis import verdicts
from normexp.analysis.results import RunData
from normexp.analysis.variants import variant_keys
from normexp.errors import ConfigError
from normexp.tracking import stores, sweep

START, END = "<!-- summary:start (make answers rewrites this table) -->", "<!-- summary:end -->"
DOCS = stores.PROJECT_ROOT / "docs"  # the page answers.md; its figures in answers/


@dataclass
class Question:
    preset: str
    claim: str
    shrink: list[str]  # overrides that shorten the preset without changing its answer (said in the preset)
    verdict: Callable[[list[RunData]], str]


@dataclass
class Answer:
    question: Question
    title: str         # the question as its experiment states it: the page's section heading
    section: str       # the page's Markdown of this answer
    verdict: str       # the verdict sentence (normexp.analysis.verdicts), in the section and in the summary row
    seeds: int
    minutes: float     # the sweep's wall time
    ended: datetime    # when the sweep ended


QUESTIONS = [
    Question("convergence", "BN trains 2-10x faster", ["trainer.max_epochs=15"], verdicts.convergence),
    Question("lr_tolerance", "BN tolerates 10-100x higher learning rates", ["trainer.max_epochs=5"], verdicts.lr_tolerance),
    Question("placement", "BN before the activation trains better than after it", ["trainer.max_epochs=10"], verdicts.placement),
    Question("norms", "every normalization makes the MLP reach the target faster", ["trainer.max_epochs=10"], verdicts.norms),
    Question("norms_cnn", "every normalization helps a CNN (higher final val accuracy), BN most", ["trainer.max_epochs=5"],
             verdicts.norms_cnn),
    Question("cnn", "BN helps a small CNN trained on little data", ["trainer.max_epochs=5"], verdicts.cnn),
    Question("regularization", "BN acts as a regularizer (a smaller train-val gap)", [], verdicts.regularization),
    Question("batch_size", "BN degrades below batch size 8, GN and LN do not",
             ["dataset.fraction=0.1", "trainer.max_epochs=3"], verdicts.batch_size),
    Question("init_scale", "BN and LN converge at every init scale from 0.1 to 10, no norm only near 1",
             ["dataset.fraction=0.25", "trainer.max_epochs=5"], verdicts.init_scale),
    Question("depth", "without a norm the gradient vanishes towards the input of a deep MLP; BN keeps it trainable",
             ["dataset.fraction=0.25", "trainer.max_epochs=5"], verdicts.depth),
    Question("bn_momentum", "a too small BN momentum leaves the running statistics behind: a larger train-eval gap, "
             "lower val accuracy", ["trainer.max_epochs=5"], verdicts.bn_momentum),
    Question("sequence", "LN trains sequences of any length; BN, masked to the valid tokens, holds up too",
             ["dataset.fraction=0.25", "trainer.max_epochs=3"], verdicts.sequence),
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


def judge(question: Question, client: MlflowClient, parent_id: str, docs: Path) -> Answer:
    """One answer from its sweep's runs in the store: the command that ran, claim, verdict, tables and
    figure (written to docs/answers/)."""
    parent = client.get_run(parent_id)
    runs, left_out = report.load_runs(client, report.sweep_runs(client, parent_id))
    # The command as typed: the store's location and the progress bar aside; the launcher is Hydra's
    # (not among the job overrides), known from how many jobs shared the CPUs.
    overrides = [o for o in parent.data.tags["overrides"].split() if not o.startswith(("tracking.uri=", "trainer.progress_bar="))]
    jobs = max((r.jobs_at_once for r in runs), default=1)
    overrides += ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"] if jobs > 1 else []
    minutes = (parent.info.end_time - parent.info.start_time) / 60_000
    verdict = question.verdict(runs)
    built = report.report_from_loaded(runs, left_out, question.preset)  # titled by the experiment's name
    try:
        figures = docs / "answers"
        figures.mkdir(parents=True, exist_ok=True)
        built.figures["curves"].savefig(figures / f"{question.preset}.png", dpi=70)
        varied = ", ".join(variant_keys(runs))
        question_text = client.get_experiment_by_name(built.title).tags.get("mlflow.note.content", built.title)
        title = question_text.split(" Claim tested:")[0]
        lines = [f"## {title}", "",
                 f"`python -m normexp.train -m {' '.join(overrides)}` ({minutes:.1f} min; varies {varied})", "",
                 f"**Claim:** {question.claim}. **Verdict:** {verdict}", "",
                 *[table.markdown for table in built.tables],
                 f"![{question.preset}](answers/{question.preset}.png)", ""]
    finally:
        built.close()
    return Answer(question, title, "\n".join(lines), verdict, len({r.params["seed"] for r in runs}), minutes,
                  datetime.fromtimestamp(parent.info.end_time / 1000, timezone.utc))


def machine() -> str:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()}-core {platform.machine()} CPU, {gpu}, torch {torch.__version__}"


def anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lowercase, punctuation dropped, each space a hyphen."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def split_verdict(sentence: str) -> tuple[str, str]:
    """A verdict sentence (normexp.analysis.verdicts) as (verdict, evidence): its first words, up to the first
    '. ' or '; ', are the verdict."""
    cuts = [i for i in (sentence.find(". "), sentence.find("; ")) if i >= 0]
    cut = min(cuts, default=len(sentence))
    return sentence[:cut], sentence[cut + 2:]


def summary(answers: list[Answer], link: str) -> str:
    """README's table: one row per answer, linking to its section of the page at `link`."""
    lines = ["| question | claim | verdict | effect, 95% CI | seeds (n) |", "|---|---|---|---|---|"]
    for answer in answers:
        verdict, effect = split_verdict(answer.verdict)
        lines.append(f"| [{answer.title}]({link}#{anchor(answer.title)}) | {answer.question.claim} | {verdict} | "
                     f"{effect} | {answer.seeds} |")
    return "\n".join(lines)


# How each run of the sweeps is judged (normexp.training.callbacks, the outcome/* metrics): the page's last section,
# as a reader of the verdicts needs it.
RUN_VERDICT = """## The verdict of every run

Divergence is a result, not a crash. A divergence guard checks every training step: a non-finite
loss stops training at once, and so do non-finite BN running statistics, looked at every 10th step
and at each epoch's last (once non-finite they stay so); a loss above `divergence.factor`
(10) x the first step's loss (the untrained model's, about ln 10) stops it once it has stayed there
for `divergence.patience` (5) steps in a row, so a spike that recovers is not divergence. The run
ends FINISHED with tags `diverged=true`, `diverged_at_step` (the step the blow-up began) and
`diverged_reason`, and the sweep goes on. Every run records `converged` (not diverged and best val
accuracy >= `dataset.converge_acc`), `epochs_to_target` (the first epoch from which val accuracy stays
>= `dataset.target_acc` for 3 epochs in a row, or until training ends: one lucky epoch does not count;
0.95 on MNIST and digits, 0.88 on Fashion-MNIST), best and final val accuracy, the final train-val gap
and mean seconds per epoch, with and without validation (`outcome/*` metrics).
"""


def page(answers: list[Answer], from_runs: bool) -> str:
    """docs/answers.md, whole."""
    minutes = sum(a.minutes for a in answers)
    ended = max(a.ended for a in answers).strftime("%Y-%m-%d")
    rejudged = " The verdicts and tables were written again from those runs (`--from-runs`)." if from_runs else ""
    header = ["# Answers", "",
              "<!-- Written by `make answers` (python -m normexp.answers): change src/normexp/answers.py, not this page. -->", "",
              f"Written by `make answers`: {minutes:.0f} min of sweeps on a {machine()}, the last ended {ended} (UTC). "
              "Each command below is what ran; the presets are shortened where the answer does not change (fewer "
              f"epochs, some on a fraction of the training set).{rejudged}", "",
              "Comparisons are paired by seed. A claim \"holds\" only when the 95% interval of the per-seed differences "
              "is clear of \"no difference\"; \"not on this setup\" is a verdict too. The questions and how to run "
              "them: [questions.md](questions.md).", ""]
    return "\n".join([*header, *(a.section for a in answers), RUN_VERDICT])


def split_readme(readme: Path) -> tuple[str, str]:
    """README's text before and after its summary table (markers excluded)."""
    text = readme.read_text()
    head, start, rest = text.partition(START)
    _, end, tail = rest.partition(END)
    if not start or not end:
        sys.exit(f"error: {readme} has no summary markers ({START} ... {END}); put them where the table goes")
    return head, tail


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m normexp.answers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", choices=[q.preset for q in QUESTIONS], help="these presets only")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--jobs", type=int, default=threads.cpus(), help="runs at once (default: one per CPU, %(default)s)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="one more override for every preset")
    parser.add_argument("--from-runs", action="store_true",
                        help="train nothing: judge each preset's newest finished sweep in the store again")
    parser.add_argument("--tracking-uri", default=report.default_tracking_uri())
    parser.add_argument("--readme", type=Path, default=stores.PROJECT_ROOT / "README.md")
    parser.add_argument("--docs", type=Path, default=DOCS, help="the folder of answers.md and answers/ (default: docs/)")
    args = parser.parse_args(argv)
    questions = [q for q in QUESTIONS if not args.only or q.preset in args.only]
    split_readme(args.readme)  # a README without the markers is refused now, not after the sweeps
    client = MlflowClient(args.tracking_uri)
    with tempfile.TemporaryDirectory() as folder:
        done = []
        for question in questions:
            try:
                parent_id = (latest_sweep(client, question.preset) if args.from_runs else
                             train(question, args.seeds, args.set, args.jobs, args.tracking_uri, Path(folder)))
            except ConfigError as error:
                sys.exit(f"error: {error}")
            done.append(judge(question, client, parent_id, args.docs))
            print(f"{question.preset}: {done[-1].minutes:.1f} min", flush=True)
    answers_page = args.docs / "answers.md"
    answers_page.write_text(page(done, args.from_runs))
    head, tail = split_readme(args.readme)  # read again: README may have changed during the sweeps
    table = summary(done, os.path.relpath(answers_page, args.readme.parent))
    args.readme.write_text(f"{head}{START}\n{table}\n{END}{tail}")
    print(f"wrote {answers_page} and the summary in {args.readme} ({sum(a.minutes for a in done):.1f} min of sweeps)")


if __name__ == "__main__":
    main(sys.argv[1:])
