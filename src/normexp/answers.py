"""`make answers`: every question's preset on Fashion-MNIST over 3 seeds, the claim it tests and the
verdict the data gives, written into README's "Answers on Fashion-MNIST" section (between the two
markers below) with the figures under docs/answers/.

    python -m normexp.answers                                 # all presets (make answers)
    python -m normexp.answers --only convergence --set trainer.max_epochs=2 --set dataset=digits
    python -m normexp.answers --from-runs                     # judge the stored sweeps again, train nothing

The verdicts themselves are normexp.verdicts.
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

from normexp import report, stores, sweep, threads, verdicts
from normexp.errors import ConfigError
from normexp.variants import RunData, variant_keys

START, END = "<!-- answers:start (make answers rewrites this section) -->", "<!-- answers:end -->"
DOCS = stores.PROJECT_ROOT / "docs" / "answers"


@dataclass
class Question:
    preset: str
    claim: str
    shrink: list[str]  # overrides that shorten the preset without changing its answer (said in README)
    verdict: Callable[[list[RunData]], str]


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
    parser.add_argument("--readme", type=Path, default=stores.PROJECT_ROOT / "README.md")
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
