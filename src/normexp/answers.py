"""`make answers`: every question's preset on Fashion-MNIST over 5 seeds or more, the claim it tests and the
verdict the data gives, and the stable-learning-rate search for none, bn, ln and gn. Writes docs/answers.md
whole (one section per question, the figures beside it in docs/answers/) and rewrites README's summary table
(between the two markers below), one row per question linking to its section; table and page come from the
same verdicts, so they always agree.

    python -m normexp.answers                                 # all presets and the search (make answers)
    python -m normexp.answers --only convergence --set trainer.max_epochs=2 --set dataset=digits
    python -m normexp.answers --from-runs                     # judge the stored sweeps again, train nothing

Seeds: each preset runs --seeds seeds (5); when its verdict is inconclusive and the observed spread says that
at most --max-seeds (20) would decide, it runs the seeds up to that number once more and is judged once, on
all of them (the second sweep's parent run has tag EXTENDS). Seeds are added after all first rounds, the
cheapest first, while their estimated time fits in --budget minutes (120). The verdicts are
normexp.analysis.verdicts.
"""

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from mlflow.tracking import MlflowClient

from normexp import report, threads
from normexp.analysis import comparisons, verdicts
from normexp.analysis.results import RunData
from normexp.analysis.variants import variant_keys
from normexp.errors import ConfigError
from normexp.stable_lr import study as studies
from normexp.tracking import progress, stores, sweep

START, END = "<!-- summary:start (make answers rewrites this table) -->", "<!-- summary:end -->"
DOCS = stores.PROJECT_ROOT / "docs"  # the page answers.md; its figures in answers/


@dataclass
class Question:
    preset: str
    claim: str
    shrink: list[str]  # overrides that shorten the preset without changing its answer (said in the preset)
    verdict: Callable[[list[RunData]], verdicts.Verdict]


@dataclass
class Answer:
    question: Question
    title: str         # the question as its experiment states it: the page's section heading
    section: str       # the page's Markdown of this answer
    verdict: verdicts.Verdict  # in the section and in the summary row
    seeds: int
    minutes: float     # the sweeps' wall time
    ended: datetime    # when the last sweep ended
    parents: list[str]  # the sweeps' parent run ids: the first round's, and the added seeds' if any


QUESTIONS = [
    Question("convergence", "BN trains 2-10x faster", ["trainer.max_epochs=15"], verdicts.convergence),
    Question("lr_tolerance", "BN tolerates 10-100x higher learning rates", ["trainer.max_epochs=3"], verdicts.lr_tolerance),
    Question("placement", "BN before the activation trains better than after it", ["trainer.max_epochs=5"], verdicts.placement),
    Question("norms", "every normalization makes the MLP reach the target faster", ["trainer.max_epochs=10"], verdicts.norms),
    Question("norms_cnn", "every normalization helps a CNN (higher final val accuracy), BN most", ["trainer.max_epochs=1"],
             verdicts.norms_cnn),
    Question("cnn", "BN helps a small CNN trained on little data", ["trainer.max_epochs=5"], verdicts.cnn),
    Question("regularization", "BN acts as a regularizer (a smaller train-val gap)", ["trainer.max_epochs=20"],
             verdicts.regularization),
    Question("batch_size", "BN degrades below batch size 8, GN and LN do not",
             ["dataset.fraction=0.05", "trainer.max_epochs=2"], verdicts.batch_size),
    Question("init_scale", "BN and LN converge at every init scale from 0.1 to 10, no norm only near 1",
             ["dataset.fraction=0.25", "trainer.max_epochs=3"], verdicts.init_scale),
    Question("depth", "without a norm the gradient vanishes towards the input of a deep MLP; BN keeps it trainable",
             ["dataset.fraction=0.25", "trainer.max_epochs=3"], verdicts.depth),
    Question("bn_momentum", "a too small BN momentum leaves the running statistics behind: a larger train-eval gap, "
             "lower val accuracy", ["trainer.max_epochs=5"], verdicts.bn_momentum),
    Question("sequence", "LN trains sequences of any length; BN, masked to the valid tokens, holds up too",
             ["dataset.fraction=0.25", "trainer.max_epochs=3"], verdicts.sequence),
]
# The stable-learning-rate search (python -m normexp.search), one study per norm; a rate is stable when every
# one of search.seeds seeds trains without diverging to dataset.converge_acc.
SEARCH = Question("stable_lr", "BN tolerates 10-100x higher learning rates (the largest stable rate, searched)",
                  ["search.seeds=3"], None)
SEARCH_NORMS = "none,bn,ln,gn"
EXTENDS = "answers.extends"  # tag of a second sweep with more seeds: the first sweep's run id


def train(question: Question, seeds: range, extra: list[str], jobs: int, tracking_uri: str, folder: Path) -> str:
    """Run the preset as one multirun over `seeds`, `jobs` runs at once; returns its parent run's id."""
    # joblib's workers get CPUs / jobs torch threads each (normexp.threads): on 2 cores, two one-thread
    # jobs train ~1.7x as many epochs per second as one job with two threads.
    launcher = ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"] if jobs > 1 else []
    sweep_dir = folder / f"{question.preset}-{seeds.start}"
    subprocess.run([sys.executable, "-m", "normexp.train", "-m", f"experiment={question.preset}",
                    f"seed={','.join(map(str, seeds))}", *question.shrink, *extra, *launcher,
                    f"tracking.uri={tracking_uri}", "trainer.progress_bar=false", f"hydra.sweep.dir={sweep_dir}"],
                   check=True, stdout=subprocess.DEVNULL)
    return (sweep_dir / sweep.PARENT_RUN_FILE).read_text().strip()


def search(extra: list[str], jobs: int, tracking_uri: str, storage: str | None, folder: Path) -> str:
    """The search for every norm of SEARCH_NORMS, one study each, `jobs` at once; returns its parent run's id."""
    launcher = ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"] if jobs > 1 else []
    sweep_dir = folder / SEARCH.preset
    subprocess.run([sys.executable, "-m", "normexp.search", "-m", f"norm={SEARCH_NORMS}", "dataset=fashion_mnist",
                    *SEARCH.shrink, *extra, *launcher, f"tracking.uri={tracking_uri}", f"tracking.experiment={SEARCH.preset}",
                    *([f"search.storage={storage}"] if storage else []), "trainer.progress_bar=false",
                    f"hydra.sweep.dir={sweep_dir}"], check=True, stdout=subprocess.DEVNULL)
    return (sweep_dir / sweep.PARENT_RUN_FILE).read_text().strip()


def latest_sweeps(client: MlflowClient, preset: str) -> list[str]:
    """The ids of the newest finished sweep of `preset` in the store and of the sweep it extends (for --from-runs)."""
    experiment = client.get_experiment_by_name(preset)
    found = client.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED'",
                               order_by=["attributes.start_time DESC"]) if experiment else []
    sweeps = [run for run in found if "sweep_dir" in run.data.tags]
    if not sweeps:
        raise ConfigError(f"no finished sweep of experiment '{preset}' in {client.tracking_uri}; run "
                          f"`python -m normexp.answers --only {preset}` first, or drop --from-runs")
    extended = sweeps[0].data.tags.get(EXTENDS)
    return [extended, sweeps[0].info.run_id] if extended else [sweeps[0].info.run_id]


def _command(client: MlflowClient, parent, jobs: int, module: str) -> str:
    """The command as typed: the store's location and the progress bar aside; the launcher is Hydra's (not
    among the job overrides), known from how many jobs shared the CPUs."""
    overrides = [o for o in parent.data.tags["overrides"].split() if not o.startswith(("tracking.uri=", "trainer.progress_bar="))]
    overrides += ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"] if jobs > 1 else []
    return f"`python -m normexp.{module} -m {' '.join(overrides)}`"


def _margin(runs: list[RunData]) -> str:
    margin = runs[0].params.get("answers.margin", "None") if runs else "None"
    return "" if margin == "None" else f"; margin {margin}"


def judge(question: Question, client: MlflowClient, parent_ids: list[str], docs: Path, held_back: str = "") -> Answer:
    """One answer from its sweeps' runs in the store (one, or two when seeds were added): the commands that
    ran, claim, verdict, tables and figure (written to docs/answers/); `held_back`: why seeds were not added."""
    parents = [client.get_run(i) for i in parent_ids]
    runs, left_out = report.load_runs(client, [r for i in parent_ids for r in report.sweep_runs(client, i)])
    jobs = max((r.jobs_at_once for r in runs), default=1)
    minutes = sum((p.info.end_time - p.info.start_time) / 60_000 for p in parents)
    verdict = question.verdict(runs)
    seeds = len({r.params["seed"] for r in runs})
    built = report.report_from_loaded(runs, left_out, question.preset)  # titled by the experiment's name
    try:
        figures = docs / "answers"
        figures.mkdir(parents=True, exist_ok=True)
        built.figures["curves"].savefig(figures / f"{question.preset}.png", dpi=70)
        question_text = client.get_experiment_by_name(built.title).tags.get("mlflow.note.content", built.title)
        title = question_text.split(" Claim tested:")[0]
        commands = " then ".join(_command(client, p, jobs, "train") for p in parents)
        lines = [f"## {title}", "",
                 f"{commands} ({minutes:.1f} min; varies {', '.join(variant_keys(runs))}; {seeds} seeds"
                 f"{', the second command adding seeds' if len(parents) > 1 else ''}{_margin(runs)})", "",
                 f"**Claim:** {question.claim}. **Verdict:** {verdict.words}. {verdict.evidence}.", "",
                 *([f"Seeds not added: {held_back}.", ""] if held_back else []),
                 *[table.markdown for table in built.tables],
                 f"![{question.preset}](answers/{question.preset}.png)", ""]
    finally:
        built.close()
    return Answer(question, title, "\n".join(lines), verdict, seeds, minutes,
                  datetime.fromtimestamp(max(p.info.end_time for p in parents) / 1000, timezone.utc), parent_ids)


def judge_search(client: MlflowClient, parent_id: str) -> Answer:
    """The search's answer: each norm's largest stable rate, its bracket and its ratio to none's."""
    parent = client.get_run(parent_id)
    summaries = [studies.load_summary(client, run.info.run_id)
                 for run in report.sweep_runs(client, parent_id) if "study" in run.data.tags]
    seeds = int(client.get_run(next(r.info.run_id for r in report.sweep_runs(client, parent_id)
                                    if "study" in r.data.tags)).data.tags["search.seeds"])
    verdict = verdicts.stable_lr(summaries, seeds)
    table = comparisons.stable_lr_table(summaries)
    minutes = (parent.info.end_time - parent.info.start_time) / 60_000
    title = "How much higher a learning rate does each norm tolerate, searched?"
    lines = [f"## {title}", "", f"{_command(client, parent, 1, 'search')} ({minutes:.1f} min; {seeds} seeds a rate)", "",
             f"**Claim:** {SEARCH.claim}. **Verdict:** {verdict.words}. {verdict.evidence}.", "", table.markdown,
             "The search brackets each norm's largest stable rate by walking a log grid down and bisecting "
             "([search.md](search.md)); bn / none's bracket runs from bn's largest stable rate / none's smallest "
             "unstable one to bn's smallest unstable rate / none's largest stable one.", ""]
    return Answer(SEARCH, title, "\n".join(lines), verdict, seeds, minutes,
                  datetime.fromtimestamp(parent.info.end_time / 1000, timezone.utc), [parent_id])


def first_round(question: Question, client: MlflowClient, args, folder: Path) -> Answer:
    """Train the preset over --seeds seeds (or with --from-runs, find its newest sweeps) and judge it."""
    if question is SEARCH:
        parent_id = (latest_sweeps(client, SEARCH.preset)[-1] if args.from_runs else
                     search(args.set, args.jobs, args.tracking_uri, args.optuna_storage, folder))
        return judge_search(client, parent_id)
    if args.from_runs:
        return judge(question, client, latest_sweeps(client, question.preset), args.docs)
    return judge(question, client, [train(question, range(args.seeds), args.set, args.jobs, args.tracking_uri, folder)],
                 args.docs)


def seeds_to_add(done: Answer, args) -> int:
    """How many seeds the one extra look adds: up to the number the spread suggests, when the seeds do not
    decide and that number is within --max-seeds; else 0."""
    needed = done.verdict.seeds_needed
    if args.from_runs or done.question is SEARCH or len(done.parents) > 1 or not needed:
        return 0
    return needed - done.seeds if done.seeds < needed <= args.max_seeds else 0


def extend(done: Answer, added: int, client: MlflowClient, args, folder: Path, minutes_left: float) -> Answer:
    """The one extra look: train `added` more seeds when their estimated time (the first round's per seed)
    fits in what is left of the budget, and judge once, on all of them; otherwise say so in the section."""
    minutes = done.minutes * added / done.seeds
    if minutes > minutes_left:
        return judge(done.question, client, done.parents, args.docs,
                     held_back=f"{done.seeds + added} seeds would decide at this spread, but adding them would take "
                               f"about {minutes:.0f} min and {max(minutes_left, 0):.0f} min of the budget were left")
    second = train(done.question, range(done.seeds, done.seeds + added), args.set, args.jobs, args.tracking_uri, folder)
    client.set_tag(second, EXTENDS, done.parents[0])
    return judge(done.question, client, [*done.parents, second], args.docs)


def machine() -> str:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()}-core {platform.machine()} CPU, {gpu}, torch {torch.__version__}"


def anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lowercase, punctuation dropped, each space a hyphen."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def summary(answers: list[Answer], link: str) -> str:
    """README's table: one row per answer, linking to its section of the page at `link`."""
    lines = ["| question | claim | verdict | effect, 95% CI | seeds (n) |", "|---|---|---|---|---|"]
    for a in answers:
        lines.append(f"| [{a.title}]({link}#{anchor(a.title)}) | {a.question.claim} | {a.verdict.words} | "
                     f"{a.verdict.evidence} | {a.seeds} |")
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
accuracy >= `dataset.converge_acc`), `epochs_to_target` (the epochs trained at the first validation
from which val accuracy stays >= `dataset.target_acc` for 3 validations in a row, or until training ends:
one lucky validation does not count; 0.95 on MNIST and digits, 0.88 on Fashion-MNIST; presets about the
time to target validate 10 times an epoch, `trainer.val_checks_per_epoch`, and stop once it has held,
`trainer.stop_at_target`), best and final val accuracy, the final train-val gap and mean seconds per
epoch, with and without validation (`outcome/*` metrics).
"""


def page(answers: list[Answer], args, minutes: float) -> str:
    """docs/answers.md, whole; `minutes`: this command's wall time (with --from-runs, the stored sweeps')."""
    ended = max(a.ended for a in answers).strftime("%Y-%m-%d")
    rejudged = " The verdicts and tables were written again from those runs (`--from-runs`)." if args.from_runs else ""
    header = ["# Answers", "",
              "<!-- Written by `make answers` (python -m normexp.answers): change src/normexp/answers.py, not this page. -->", "",
              f"Written by `make answers`: {minutes:.0f} min on a {machine()} (budget: {args.budget:.0f} min on 2 cores), the last "
              f"sweep ended {ended} (UTC). Each command below is what ran; the presets are shortened where the answer "
              f"does not change (fewer epochs, some on a fraction of the training set).{rejudged}", "",
              "Comparisons are paired by seed, each judged on its 95% Student-t interval (a speedup's on the per-seed "
              "log ratios, shown as a geometric mean) against the margin M its preset states (`answers.margin`). "
              "Each verdict is one of four: **holds** (the interval is clear of no effect; for a range claim, which "
              "part of the range is shown), **no difference beyond ±M** (the whole interval within the margin), "
              "**does not hold on this setup** (the interval excludes the claimed effect), **inconclusive at n "
              "seeds** (with about how many seeds would decide, from the observed spread). A speedup's seed where "
              "none never reached the target counts as its epoch budget (a lower bound); one where the norm never "
              "reached it is left out (normexp.analysis.results).", "",
              f"Seeds: every preset runs {args.seeds}. When a claim is inconclusive and the spread says that at most "
              f"{args.max_seeds} seeds would decide, the preset runs once more with the seeds up to that number and "
              f"is judged once, on all of them; n is given for each answer. Seeds are added after every first round, "
              f"the cheapest first, only while their time (estimated from the first round) fits in the budget; a "
              f"section says where it did not. The intervals are not corrected for that one extra look, so they are "
              "a little too narrow where seeds were added.", "",
              "The questions and how to run them: [questions.md](questions.md).", ""]
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
    parser.add_argument("--only", action="append", choices=[q.preset for q in [*QUESTIONS, SEARCH]],
                        help="these presets only (stable_lr: the search)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 for every preset (default %(default)s)")
    parser.add_argument("--max-seeds", type=int, default=20, help="the cap on the seeds added once (default %(default)s)")
    parser.add_argument("--budget", type=float, default=120,
                        help="minutes: seeds are added only while their estimated time fits (default %(default)s)")
    parser.add_argument("--jobs", type=int, default=threads.cpus(), help="runs at once (default: one per CPU, %(default)s)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="one more override for every preset")
    parser.add_argument("--from-runs", action="store_true",
                        help="train nothing: judge each preset's newest finished sweeps in the store again")
    parser.add_argument("--tracking-uri", default=report.default_tracking_uri())
    parser.add_argument("--optuna-storage", default=None, help="the search's Optuna storage (default: its own)")
    parser.add_argument("--readme", type=Path, default=stores.PROJECT_ROOT / "README.md")
    parser.add_argument("--docs", type=Path, default=DOCS, help="the folder of answers.md and answers/ (default: docs/)")
    args = parser.parse_args(argv)
    questions = [q for q in [*QUESTIONS, SEARCH] if not args.only or q.preset in args.only]
    split_readme(args.readme)  # a README without the markers is refused now, not after the sweeps
    client, started = MlflowClient(args.tracking_uri), time.monotonic()
    done, current = [], None
    try:
        with tempfile.TemporaryDirectory() as folder:
            counts = progress.Counts(total=len(questions), at_once=1)  # presets one after another
            for k, question in enumerate(questions, start=1):
                print(f"[preset {k}/{len(questions)}] {question.preset}", flush=True)
                counts.running, current = 1, question.preset
                done.append(first_round(question, client, args, Path(folder)))
                counts.running, counts.done = 0, counts.done + 1
                counts.durations_s.append(done[-1].minutes * 60)
                print(f"[preset {k}/{len(questions)}] {question.preset}: {done[-1].minutes:.1f} min, n={done[-1].seeds}; "
                      f"[answers] {counts.line()}", flush=True)
            # Seeds are added once all first rounds are in, the cheapest first, while the budget lasts.
            extra = sorted((a.minutes * n / a.seeds, i, n) for i, a in enumerate(done) if (n := seeds_to_add(a, args)))
            for k, (_, i, added) in enumerate(extra, start=1):
                minutes_left = args.budget - (time.monotonic() - started) / 60
                print(f"[seeds {k}/{len(extra)}] {done[i].question.preset}: +{added} seeds, {minutes_left:.0f} min of the "
                      "budget left", flush=True)
                current = done[i].question.preset
                done[i] = extend(done[i], added, client, args, Path(folder), minutes_left)
                print(f"[seeds {k}/{len(extra)}] {done[i].question.preset}: n={done[i].seeds}, {done[i].verdict.words}", flush=True)
    except ConfigError as error:
        sys.exit(f"error: {error}")
    except subprocess.CalledProcessError as error:  # the sweep printed its own error line above
        sys.exit(f"error: the sweep of preset {current} failed (exit {error.returncode}, its error is above); "
                 f"nothing is written; fix it, then run again (--only {current} checks that preset alone)")
    minutes = sum(a.minutes for a in done) if args.from_runs else (time.monotonic() - started) / 60
    answers_page = args.docs / "answers.md"
    args.docs.mkdir(parents=True, exist_ok=True)
    answers_page.write_text(page(done, args, minutes))
    head, tail = split_readme(args.readme)  # read again: README may have changed during the sweeps
    table = summary(done, os.path.relpath(answers_page, args.readme.parent))
    args.readme.write_text(f"{head}{START}\n{table}\n{END}{tail}")
    print(f"wrote {answers_page} and the summary in {args.readme} ({minutes:.1f} min)")


if __name__ == "__main__":
    main(sys.argv[1:])
