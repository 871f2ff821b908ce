"""The command: each question's sweeps (`python -m normexp.train -m` or `normexp.search -m` as
subprocesses), seeds added where the verdict is inconclusive while the budget lasts, then the page."""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from normexp import answers, threads
from normexp.answers import page
from normexp.answers.questions import (EXTENDS, QUESTIONS, SEARCH, SEARCH_NORMS, Answer, Question, judge,
                                       judge_search, latest_sweeps, launcher)
from normexp.errors import ConfigError
from normexp.tracking import progress, stores, sweep

DOCS = stores.PROJECT_ROOT / "docs"  # the page answers.md; its figures in answers/


def train(question: Question, seeds: range, extra: list[str], jobs: int, tracking_uri: str, folder: Path) -> str:
    """Run the preset as one multirun over `seeds`, `jobs` runs at once; returns its parent run's id."""
    sweep_dir = folder / f"{question.preset}-{seeds.start}"
    subprocess.run([sys.executable, "-m", "normexp.train", "-m", f"experiment={question.preset}",
                    f"seed={','.join(map(str, seeds))}", *question.shrink, *extra, *launcher(jobs),
                    f"tracking.uri={tracking_uri}", "trainer.progress_bar=false", f"hydra.sweep.dir={sweep_dir}"],
                   check=True, stdout=subprocess.DEVNULL)
    return (sweep_dir / sweep.PARENT_RUN_FILE).read_text().strip()


def search(extra: list[str], jobs: int, tracking_uri: str, storage: str | None, folder: Path) -> str:
    """The search for every norm of SEARCH_NORMS, one study each, `jobs` at once; returns its parent run's id."""
    sweep_dir = folder / SEARCH.preset
    subprocess.run([sys.executable, "-m", "normexp.search", "-m", f"norm={SEARCH_NORMS}", "dataset=fashion_mnist",
                    *SEARCH.shrink, *extra, *launcher(jobs), f"tracking.uri={tracking_uri}",
                    f"tracking.experiment={SEARCH.preset}", *([f"search.storage={storage}"] if storage else []),
                    "trainer.progress_bar=false",
                    f"hydra.sweep.dir={sweep_dir}"], check=True, stdout=subprocess.DEVNULL)
    return (sweep_dir / sweep.PARENT_RUN_FILE).read_text().strip()


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m normexp.answers", description=answers.__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", choices=[q.preset for q in [*QUESTIONS, SEARCH]],
                        help="these presets only (stable_lr: the search)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 for every preset (default %(default)s)")
    parser.add_argument("--max-seeds", type=int, default=20,
                        help="the cap on the seeds added once (default %(default)s)")
    parser.add_argument("--budget", type=float, default=120,
                        help="minutes: seeds are added only while their estimated time fits (default %(default)s)")
    parser.add_argument("--jobs", type=int, default=threads.cpus(),
                        help="runs at once (default: one per CPU, %(default)s)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="one more override for every preset")
    parser.add_argument("--from-runs", action="store_true",
                        help="train nothing: judge each preset's newest finished sweeps in the store again")
    parser.add_argument("--tracking-uri", default=stores.default_tracking_uri())
    parser.add_argument("--optuna-storage", default=None, help="the search's Optuna storage (default: its own)")
    parser.add_argument("--readme", type=Path, default=stores.PROJECT_ROOT / "README.md")
    parser.add_argument("--docs", type=Path, default=DOCS,
                        help="the folder of answers.md and answers/ (default: docs/)")
    args = parser.parse_args(argv)
    questions = [q for q in [*QUESTIONS, SEARCH] if not args.only or q.preset in args.only]
    page.split_readme(args.readme)  # a README without the markers is refused now, not after the sweeps
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
                print(f"[seeds {k}/{len(extra)}] {done[i].question.preset}: n={done[i].seeds}, "
                      f"{done[i].verdict.words}", flush=True)
    except ConfigError as error:
        sys.exit(f"error: {error}")
    except subprocess.CalledProcessError as error:  # the sweep printed its own error line above
        sys.exit(f"error: the sweep of preset {current} failed (exit {error.returncode}, its error is above); "
                 f"nothing is written; fix it, then run again (--only {current} checks that preset alone)")
    page.write(done, args, sum(a.minutes for a in done) if args.from_runs else (time.monotonic() - started) / 60)
