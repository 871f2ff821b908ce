"""normexp.answers: one preset answered end to end into docs/answers.md and a README's summary table, again
from its stored runs; the presets say how it shortens them; the committed summary links to the page."""

import argparse
import re
import subprocess
from types import SimpleNamespace

import pytest

from normexp.answers import page as answers_page, questions, run
from normexp.tracking import stores
from tests import forked
from tests.conftest import NO_MODEL


@pytest.fixture(autouse=True)
def forked_commands(monkeypatch):
    """The sweeps and searches that answers/run.py starts with subprocess.run, forked (tests/forked.py)."""
    monkeypatch.setattr(run, "subprocess", SimpleNamespace(**{**vars(subprocess), "run": forked.run}))


def test_one_preset_is_answered_into_the_page_and_the_readme_summary(tmp_path, tracking_uri):
    readme, docs = tmp_path / "README.md", tmp_path / "docs"
    readme.write_text(f"# before\n{answers_page.START}\nold table\n{answers_page.END}\n# after\n")
    run.main(["--only", "convergence", "--seeds", "2", "--max-seeds", "2", "--jobs", "1", "--set", "dataset=digits",
                  "--set", NO_MODEL, "--set", "trainer.max_epochs=2", "--tracking-uri", tracking_uri,
                  "--readme", str(readme), "--docs", str(docs)])
    page = (docs / "answers.md").read_text()
    assert page.startswith("# Answers\n") and "Written by `make answers`: " in page and "(budget: 120 min on 2 cores)" in page
    assert "The intervals are not corrected for that one extra look" in page
    title = "How much faster does BatchNorm make the MLP converge?"
    assert f"\n## {title}\n" in page
    assert "**Claim:** BN trains 2-10x faster. **Verdict:** mlp: " in page
    assert "| bn |" in page and "(paired by seed)" in page
    assert "`python -m normexp.train -m experiment=convergence seed=0,1 trainer.max_epochs=15 dataset=digits " \
           f"{NO_MODEL} trainer.max_epochs=2` (" in page  # the command as typed, from the sweep's record
    assert "; 2 seeds; margin 1.1)" in page
    assert "![convergence](answers/convergence.png)" in page and (docs / "answers" / "convergence.png").stat().st_size > 0
    assert page.rstrip().endswith("(`outcome/*` metrics).")  # the verdict of every run, last

    # README: only the table between the markers changed; its one row says what the page's section says
    text = readme.read_text()
    assert text.startswith(f"# before\n{answers_page.START}\n| question |") and text.endswith(f"|\n{answers_page.END}\n# after\n")
    assert "old table" not in text
    row = next(line for line in text.splitlines() if line.startswith("| [How much"))
    assert row.startswith(f"| [{title}](docs/answers.md#convergence) | BN trains 2-10x faster | mlp: ") and row.endswith(" | 2 |")
    assert f'<a id="convergence"></a>\n\n## {title}\n' in page  # the row's link lands on the section
    claim = next(line for line in page.splitlines() if line.startswith("**Claim:**"))
    words, evidence = claim.split("**Verdict:** ")[1].split(". mlp: ", 1)
    effect = re.sub(r", 95% CI (\S+)", r" [\1]", evidence[:-1]).replace(" (n=2)", "")  # the CI and n as headed
    assert f"| {words} | mlp: {effect} |" in row and "[95% CI]" in text

    # --from-runs: the same answer from the stored sweep, nothing trained again
    run.main(["--only", "convergence", "--from-runs", "--tracking-uri", tracking_uri, "--readme", str(readme), "--docs", str(docs)])
    again = (docs / "answers.md").read_text()
    assert "written again from those runs (`--from-runs`)" in again and claim in again.splitlines()
    assert row in readme.read_text().splitlines()
    with pytest.raises(SystemExit, match="no finished sweep of experiment 'placement'"):
        run.main(["--only", "placement", "--from-runs", "--tracking-uri", tracking_uri, "--readme", str(readme), "--docs", str(docs)])


def test_an_inconclusive_claim_adds_the_seeds_its_spread_suggests_once_and_is_judged_on_all(tmp_path, tracking_uri,
                                                                                            mlflow_client):
    readme, docs = tmp_path / "README.md", tmp_path / "docs"
    readme.write_text(f"{answers_page.START}\n{answers_page.END}\n")
    # The small CNN on 126 digits, one epoch: 2 seeds leave bn - none undecided, and their spread says 8 would do.
    run.main(["--only", "cnn", "--seeds", "2", "--max-seeds", "8", "--jobs", "1", "--set", "dataset=digits",
                  "--set", NO_MODEL, "--set", "trainer.max_epochs=1", "--set", "probes.enabled=false",
                  "--tracking-uri", tracking_uri,
                  "--readme", str(readme), "--docs", str(docs)])
    page = (docs / "answers.md").read_text()
    first, second = questions.latest_sweeps(mlflow_client, "cnn")
    assert mlflow_client.get_run(second).data.tags[questions.EXTENDS] == first
    runs = questions.report.load_runs(mlflow_client, questions.report.sweep_runs(mlflow_client, first))[0]
    needed = questions.verdicts.cnn(runs).seeds_needed
    assert 2 < needed <= 8 and f"; {needed} seeds, the second command adding seeds; margin 0.005)" in page
    assert f"seed={','.join(map(str, range(2, needed)))} " in page and "` then `python -m normexp.train" in page
    assert f"(n={needed})" in page and readme.read_text().rstrip().endswith(f"| {needed} |\n{answers_page.END}")

    # Past the budget, the first round stands as it was judged, and its section says why no seeds were added.
    args = argparse.Namespace(docs=docs, set=[], jobs=1, tracking_uri=tracking_uri, from_runs=False, max_seeds=8)
    alone = questions.judge(next(q for q in questions.QUESTIONS if q.preset == "cnn"), mlflow_client, [first], docs)
    assert run.seeds_to_add(alone, args) == needed - 2
    held = run.extend(alone, needed - 2, mlflow_client, args, tmp_path, minutes_left=0)
    assert held.seeds == 2 and held.parents == [first] and questions.latest_sweeps(mlflow_client, "cnn") == [first, second]
    assert f"Seeds not added: {needed} seeds would decide at this spread, but adding them would take about " in held.section
    assert "min and 0 min of the budget were left." in held.section


def test_the_stable_lr_search_answers_with_each_norms_bracket_and_ratio_to_none(tmp_path, tracking_uri):
    readme, docs = tmp_path / "README.md", tmp_path / "docs"
    readme.write_text(f"{answers_page.START}\n{answers_page.END}\n")
    run.main(["--only", "stable_lr", "--jobs", "2", "--set", "dataset=digits", "--set", NO_MODEL,
                  "--set", "search.seeds=1", "--set", "search.epochs=1", "--set", "search.lr_min=0.01",
                  "--set", "search.lr_max=1", "--set", "search.resolution=10",
                  "--tracking-uri", tracking_uri, "--optuna-storage", f"sqlite:///{tmp_path}/optuna.db",
                  "--readme", str(readme), "--docs", str(docs)])
    page = (docs / "answers.md").read_text()
    assert "## How much higher a learning rate does each norm tolerate, searched?" in page
    section = page.split("searched?")[1]
    assert "`python -m normexp.search -m norm=none,bn,ln,gn dataset=fashion_mnist search.seeds=3 dataset=digits" in section
    assert "Largest stable learning rate: " in section and "Ratio to none: bn " in section
    assert "| variant | group | max_stable_lr | min_unstable_lr | ratio_to_none |" in section


def test_a_readme_without_the_markers_is_refused_before_anything_runs(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# no table\n{answers_page.END}\n{answers_page.START}\n")  # the end before the start: no table either
    with pytest.raises(SystemExit, match=f"{readme} has no summary markers"):
        run.main(["--only", "convergence", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--readme", str(readme),
                      "--docs", str(tmp_path)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md"]  # no store, no page


def test_the_committed_summary_links_to_sections_of_the_committed_page():
    readme = (stores.PROJECT_ROOT / "README.md").read_text()
    page = (run.DOCS / "answers.md").read_text()
    table = readme.split(answers_page.START)[1].split(answers_page.END)[0]
    links = re.findall(r"\]\(docs/answers\.md#([^)]+)\)", table)
    ids = re.findall(r'<a id="([^"]+)"></a>\n\n## ', page)  # each section's short anchor, before its heading
    headings = [line for line in page.splitlines() if line.startswith("## ")]
    assert links == ids and len(ids) == len(headings) - 1  # every section but the runs' verdict, in order


def test_every_preset_says_how_make_answers_shortens_it():
    for question in questions.QUESTIONS:
        text = (stores.PROJECT_ROOT / "conf" / "experiment" / f"{question.preset}.yaml").read_text()
        assert f"# make answers runs it over 5 seeds or more with {' '.join(question.shrink)}:" in text, question.preset


def test_the_committed_readme_fits_on_a_few_pages():
    # make answers rewrites its summary table: a longer table must make room elsewhere (issue: at most 15 KB).
    assert len((stores.PROJECT_ROOT / "README.md").read_bytes()) <= 15_000
