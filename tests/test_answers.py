"""normexp.answers: the verdicts on hand-made runs, and one preset answered end to end into a README."""

from normexp import answers
from normexp.variants import RunData


def run(seed: int, norm: str, reached: float | None, final: float, **params) -> RunData:
    metrics = {"outcome/final_val_acc": final} | ({"outcome/epochs_to_target": reached} if reached else {})
    return RunData(f"{norm}{seed}", "r", {"seed": str(seed), "norm.kind": norm, "trainer.max_epochs": "20",
                                         "model.name": "mlp"} | params,
                   metrics, False, None, True, [], [])


def test_convergence_holds_only_when_the_paired_speedup_is_clearly_at_least_two():
    clear = [run(s, "none", 10 + s, 0.9) for s in range(3)] + [run(s, "bn", 4 + s * 0.4, 0.9) for s in range(3)]
    assert answers.convergence(clear).startswith("mlp: holds; speedup (epochs to target, none / bn, per seed) 2.50, 95% CI")
    noisy = [run(s, "none", (6, 10, 4)[s], 0.9) for s in range(3)] + [run(s, "bn", (5, 4, 8)[s], 0.9) for s in range(3)]
    assert answers.convergence(noisy).startswith("mlp: not on this setup: no clear speedup")
    # none never reaching the target counts as its 20-epoch budget: a lower bound on the speedup
    unreached = [run(s, "none", None, 0.8) for s in range(3)] + [run(s, "bn", 5 + s, 0.9) for s in range(3)]
    assert answers.convergence(unreached).startswith("mlp: holds")


def test_batch_size_holds_when_only_bn_loses_accuracy_at_the_smallest_batch():
    runs = [run(s, k, None, acc + s * 0.01, **{"dataset.batch_size": str(bs)})
            for s in range(3) for k, bs, acc in [("bn", 2, 0.60), ("bn", 128, 0.88), ("ln", 2, 0.87),
                                                 ("ln", 128, 0.88), ("gn", 2, 0.875), ("gn", 128, 0.88)]]
    assert answers.batch_size(runs).startswith("holds. Final val accuracy at batch 2 - at batch 128, per seed: bn -0.280")


def test_one_preset_is_answered_into_the_readme_between_the_markers(tmp_path, tracking_uri):
    readme = tmp_path / "README.md"
    readme.write_text(f"# before\n{answers.START}\nold answers\n{answers.END}\n# after\n")
    answers.main(["--only", "convergence", "--seeds", "0,1", "--set", "dataset=digits", "--set", "trainer.max_epochs=2",
                  "--tracking-uri", tracking_uri, "--readme", str(readme), "--docs", str(tmp_path / "docs")])
    text = readme.read_text()
    assert text.startswith("# before\n") and text.endswith(f"{answers.END}\n# after\n") and "old answers" not in text
    assert "### How much faster does BatchNorm make the MLP converge?" in text
    assert "**Claim:** BN trains 2-10x faster. **Verdict:** " in text
    assert "| bn |" in text and "(paired by seed)" in text
    assert (tmp_path / "docs" / "convergence.png").stat().st_size > 0
