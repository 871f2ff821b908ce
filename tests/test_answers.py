"""normexp.answers: one preset answered end to end into docs/answers.md and a README's summary table, again
from its stored runs; the presets say how it shortens them; the committed summary links to the page."""

import re

import pytest

from normexp import answers


def test_one_preset_is_answered_into_the_page_and_the_readme_summary(tmp_path, tracking_uri):
    readme, docs = tmp_path / "README.md", tmp_path / "docs"
    readme.write_text(f"# before\n{answers.START}\nold table\n{answers.END}\n# after\n")
    answers.main(["--only", "convergence", "--seeds", "0,1", "--jobs", "1", "--set", "dataset=digits", "--set", "trainer.max_epochs=2",
                  "--tracking-uri", tracking_uri, "--readme", str(readme), "--docs", str(docs)])
    page = (docs / "answers.md").read_text()
    assert page.startswith("# Answers\n") and "Written by `make answers`" in page
    title = "How much faster does BatchNorm make the MLP converge?"
    assert f"\n## {title}\n" in page
    assert "**Claim:** BN trains 2-10x faster. **Verdict:** " in page
    assert "| bn |" in page and "(paired by seed)" in page
    assert "`python -m normexp.train -m experiment=convergence seed=0,1 trainer.max_epochs=15 dataset=digits " \
           "trainer.max_epochs=2` (" in page  # the command as typed, from the sweep's record
    assert "![convergence](answers/convergence.png)" in page and (docs / "answers" / "convergence.png").stat().st_size > 0
    assert page.rstrip().endswith("(`outcome/*` metrics).")  # the verdict of every run, last

    # README: only the table between the markers changed; its one row says what the page's section says
    text = readme.read_text()
    assert text.startswith(f"# before\n{answers.START}\n| question |") and text.endswith(f"|\n{answers.END}\n# after\n")
    assert "old table" not in text
    row = next(line for line in text.splitlines() if line.startswith("| [How much"))
    assert row.startswith(f"| [{title}](docs/answers.md#how-much-faster-does-batchnorm-make-the-mlp-converge) | "
                          "BN trains 2-10x faster | ") and row.endswith(" | 2 |")
    claim = next(line for line in page.splitlines() if line.startswith("**Claim:**"))
    assert " | ".join(answers.split_verdict(claim.split("**Verdict:** ")[1])) in row

    # --from-runs: the same answer from the stored sweep, nothing trained again
    answers.main(["--only", "convergence", "--from-runs", "--tracking-uri", tracking_uri, "--readme", str(readme), "--docs", str(docs)])
    again = (docs / "answers.md").read_text()
    assert "written again from those runs (`--from-runs`)" in again and claim in again.splitlines()
    assert row in readme.read_text().splitlines()
    with pytest.raises(SystemExit, match="no finished sweep of experiment 'placement'"):
        answers.main(["--only", "placement", "--from-runs", "--tracking-uri", tracking_uri, "--readme", str(readme), "--docs", str(docs)])


def test_a_readme_without_the_markers_is_refused_before_anything_runs(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# no table\n{answers.END}\n{answers.START}\n")  # the end before the start: no table either
    with pytest.raises(SystemExit, match=f"{readme} has no summary markers"):
        answers.main(["--only", "convergence", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--readme", str(readme),
                      "--docs", str(tmp_path)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md"]  # no store, no page


def test_anchor_is_githubs():
    assert answers.anchor("How much faster does BatchNorm make the MLP converge?") == \
        "how-much-faster-does-batchnorm-make-the-mlp-converge"
    assert answers.anchor("How deep can the MLP go without a norm, with BN, with LN?") == \
        "how-deep-can-the-mlp-go-without-a-norm-with-bn-with-ln"
    assert answers.anchor("What does BatchNorm's momentum change?") == "what-does-batchnorms-momentum-change"
    assert answers.anchor("Overfitting: final train - val accuracy") == "overfitting-final-train---val-accuracy"
    assert answers.anchor("By init_scale: converged?") == "by-init_scale-converged"


def test_split_verdict_cuts_at_the_first_sentence_or_clause():
    assert answers.split_verdict("holds. Max lr: none 0.01, bn 0.1: 10x.") == ("holds", "Max lr: none 0.01, bn 0.1: 10x.")
    assert answers.split_verdict("not on this setup: no clear difference; the largest gain is bn's. Final: +0.004.") == \
        ("not on this setup: no clear difference", "the largest gain is bn's. Final: +0.004.")
    assert answers.split_verdict("no verdict") == ("no verdict", "")


def test_the_committed_summary_links_to_sections_of_the_committed_page():
    readme = (answers.stores.PROJECT_ROOT / "README.md").read_text()
    page = (answers.DOCS / "answers.md").read_text()
    table = readme.split(answers.START)[1].split(answers.END)[0]
    links = re.findall(r"\]\(docs/answers\.md#([^)]+)\)", table)
    headings = {answers.anchor(line[3:]) for line in page.splitlines() if line.startswith("## ")}
    assert len(links) == len(answers.QUESTIONS) and set(links) <= headings


def test_every_preset_says_how_make_answers_shortens_it():
    for question in answers.QUESTIONS:
        text = (answers.stores.PROJECT_ROOT / "conf" / "experiment" / f"{question.preset}.yaml").read_text()
        said = f"over seeds 0,1,2 with {' '.join(question.shrink)}:" if question.shrink else "as it is, over seeds 0,1,2"
        assert f"# make answers runs it {said}" in text, question.preset
