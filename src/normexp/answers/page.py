"""docs/answers.md, written whole from the answers, and README's summary table (between START and END),
one row per answer linking to its section: table and page come from the same verdicts."""

import os
import platform
import sys
from pathlib import Path

import torch

from normexp.answers.questions import Answer

START, END = "<!-- summary:start (make answers rewrites this table) -->", "<!-- summary:end -->"


def machine() -> str:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()}-core {platform.machine()} CPU, {gpu}, torch {torch.__version__}"


def summary(answers: list[Answer], link: str) -> str:
    """README's table: one row per answer, linking to its section of the page at `link` (by the preset's
    name, the section's short anchor: README stays within its size). The header says "95% CI" once, and
    an effect's n is left out where it is the row's."""
    lines = ["| question | claim | verdict | effect [95% CI] | seeds (n) |", "|---|---|---|---|---|"]
    for a in answers:
        lines.append(f"| [{a.title}]({link}#{a.question.preset}) | {a.question.claim} | {a.verdict.words} | "
                     f"{a.verdict.brief(a.seeds)} | {a.seeds} |")
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


def markdown(answers: list[Answer], args, minutes: float) -> str:
    """docs/answers.md, whole; `minutes`: this command's wall time (with --from-runs, the stored sweeps')."""
    ended = max(a.ended for a in answers).strftime("%Y-%m-%d")
    rejudged = " The verdicts and tables were written again from those runs (`--from-runs`)." if args.from_runs else ""
    header = ["# Answers", "",
              "<!-- Written by `make answers` (python -m normexp.answers): change src/normexp/answers/, "
              "not this page. -->", "",
              f"Written by `make answers`: {minutes:.0f} min on a {machine()} (budget: {args.budget:.0f} min on 2 "
              f"cores), the last sweep ended {ended} (UTC). Each command below is what ran; the presets are "
              f"shortened where the answer does not change (fewer epochs, some on a fraction of the training "
              f"set).{rejudged}", "",
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
    sections = [f'<a id="{a.question.preset}"></a>\n\n{a.section}' for a in answers]  # README's links
    return "\n".join([*header, *sections, RUN_VERDICT])


def split_readme(readme: Path) -> tuple[str, str]:
    """README's text before and after its summary table (markers excluded)."""
    text = readme.read_text()
    head, start, rest = text.partition(START)
    _, end, tail = rest.partition(END)
    if not start or not end:
        sys.exit(f"error: {readme} has no summary markers ({START} ... {END}); put them where the table goes")
    return head, tail


def write(answers: list[Answer], args, minutes: float) -> None:
    """docs/answers.md (args.docs) whole, and the summary table between README's markers (args.readme)."""
    answers_page = args.docs / "answers.md"
    args.docs.mkdir(parents=True, exist_ok=True)
    answers_page.write_text(markdown(answers, args, minutes))
    head, tail = split_readme(args.readme)  # read again: README may have changed during the sweeps
    table = summary(answers, os.path.relpath(answers_page, args.readme.parent))
    args.readme.write_text(f"{head}{START}\n{table}\n{END}{tail}")
    print(f"wrote {answers_page} and the summary in {args.readme} ({minutes:.1f} min)")
