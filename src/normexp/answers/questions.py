"""The questions `make answers` asks (one preset each, and the stable-LR search), and each one's answer
judged from its sweeps in the MLflow store: the commands that ran, the verdict, tables and figure."""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from mlflow.tracking import MlflowClient

from normexp import report
from normexp.analysis import comparisons, verdicts
from normexp.analysis.results import RunData
from normexp.analysis.variants import variant_keys
from normexp.errors import ConfigError
from normexp.stable_lr import study as studies


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
    Question("lr_tolerance", "BN tolerates 10-100x higher learning rates", ["trainer.max_epochs=3"],
             verdicts.lr_tolerance),
    Question("placement", "BN before the activation trains better than after it", ["trainer.max_epochs=5"],
             verdicts.placement),
    Question("norms", "every normalization makes the MLP reach the target faster", ["trainer.max_epochs=10"],
             verdicts.norms),
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



def launcher(jobs: int) -> list[str]:
    """The overrides that run a multirun's jobs `jobs` at once (joblib), or none for one at a time."""
    # joblib's workers get CPUs / jobs torch threads each (normexp.threads): on 2 cores, two one-thread
    # jobs train ~1.7x as many epochs per second as one job with two threads.
    return ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"] if jobs > 1 else []


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
    overrides = [o for o in parent.data.tags["overrides"].split()
                 if not o.startswith(("tracking.uri=", "trainer.progress_bar="))]
    overrides += launcher(jobs)
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
