"""normexp.analysis.results: a run's outcome logged and read back through one record, pairs by seed, and one
speedup rule for a target never reached, which the comparison table and the verdict share."""

from normexp.analysis import comparisons, verdicts
from normexp.analysis.results import OutcomeMetrics, RunData, Speedups, paired, speedups
from normexp.analysis.variants import group


def run(norm: str, seed: int, reached: float | None, final: float = 0.9) -> RunData:
    metrics = OutcomeMetrics(final_val_acc=final, epochs_to_target=reached).as_metrics()
    return RunData(f"{norm}{seed}", f"{norm}-s{seed}", {"norm.kind": norm, "seed": str(seed), "model.name": "mlp",
                                                       "trainer.max_epochs": "20", "answers.margin": "1.1"},
                   metrics, False, None, True, [], [])


def test_an_outcome_reads_back_as_it_was_logged():
    logged = OutcomeMetrics(best_val_acc=0.9, final_val_acc=0.8, epochs=5, epochs_to_target=3)
    assert logged.as_metrics()["outcome/epochs_to_target"] == 3 and "outcome/diverged_at_step" not in logged.as_metrics()
    assert OutcomeMetrics.from_metrics(logged.as_metrics() | {"train/acc": 0.95}) == logged


def test_pairs_are_by_seed_and_a_seed_only_one_side_ran_is_left_out():
    plain = [run("none", 0, 10), run("none", 1, 12)]
    normed = [run("bn", 1, 4), run("bn", 2, 5)]
    assert [(p.run_id, n.run_id) for p, n in paired(plain, normed)] == [("none1", "bn1")]


def test_a_target_never_reached_without_the_norm_counts_as_the_budget_and_with_it_leaves_the_pair_out():
    pairs = paired([run("none", 0, 10), run("none", 1, None), run("none", 2, 8)],
                   [run("bn", 0, 5), run("bn", 1, 4), run("bn", 2, None)])
    assert speedups(pairs) == Speedups(values=[2.0, 5.0], lower_bounds=1, not_reached=1)


def test_the_table_and_the_verdict_give_the_same_speedup_when_none_never_reached_the_target_for_one_seed():
    runs = [run("none", 0, 10), run("none", 1, None), run("none", 2, 12)]
    runs += [run("bn", 0, 4), run("bn", 1, 5), run("bn", 2, 6)]
    keys = ["norm.kind"]
    table = comparisons.versus_none_table(group(runs, keys), keys, "20")
    [record] = table.records
    verdict = verdicts.norms(runs)
    # speedups 2.5, 4 (20 epochs counted for the seed none never reached) and 2: geometric mean 2.71
    assert f"{record['speedup_geomean']:.2f}" == "2.71"
    assert "bn: speedup over none 2.71x, 95% CI" in verdict.evidence
    assert "a lower bound for 1 seed(s)" in table.rows[0][3]
