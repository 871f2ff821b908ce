"""normexp.answers: one preset answered end to end into a README, again from its stored runs; the presets
say how it shortens them."""

import pytest

from normexp import answers


def test_one_preset_is_answered_into_the_readme_between_the_markers(tmp_path, tracking_uri):
    readme = tmp_path / "README.md"
    readme.write_text(f"# before\n{answers.START}\nold answers\n{answers.END}\n# after\n")
    answers.main(["--only", "convergence", "--seeds", "0,1", "--jobs", "1", "--set", "dataset=digits", "--set", "trainer.max_epochs=2",
                  "--tracking-uri", tracking_uri, "--readme", str(readme), "--docs", str(tmp_path / "docs")])
    text = readme.read_text()
    assert text.startswith("# before\n") and text.endswith(f"{answers.END}\n# after\n") and "old answers" not in text
    assert "### How much faster does BatchNorm make the MLP converge?" in text
    assert "**Claim:** BN trains 2-10x faster. **Verdict:** " in text
    assert "| bn |" in text and "(paired by seed)" in text
    assert (tmp_path / "docs" / "convergence.png").stat().st_size > 0
    assert "`python -m normexp.train -m experiment=convergence seed=0,1 trainer.max_epochs=15 dataset=digits " \
           "trainer.max_epochs=2` (" in text  # the command as typed, from the sweep's record
    verdict = next(line for line in text.splitlines() if line.startswith("**Claim:**"))

    # --from-runs: the same answer from the stored sweep, nothing trained again
    answers.main(["--only", "convergence", "--from-runs", "--tracking-uri", tracking_uri, "--readme", str(readme),
                  "--docs", str(tmp_path / "docs")])
    again = readme.read_text()
    assert "written again from those runs (`--from-runs`)" in again and verdict in again.splitlines()
    with pytest.raises(SystemExit, match="no finished sweep of experiment 'placement'"):
        answers.main(["--only", "placement", "--from-runs", "--tracking-uri", tracking_uri, "--readme", str(readme)])


def test_every_preset_says_how_make_answers_shortens_it():
    for question in answers.QUESTIONS:
        text = (answers.stores.PROJECT_ROOT / "conf" / "experiment" / f"{question.preset}.yaml").read_text()
        said = f"over seeds 0,1,2 with {' '.join(question.shrink)}:" if question.shrink else "as it is, over seeds 0,1,2"
        assert f"# make answers runs it {said}" in text, question.preset
