"""normexp.analysis.comparisons: the verdicts and comparisons of the tables, on hand-made runs."""

import math

from normexp.analysis import comparisons
from normexp.analysis.results import RunData
from normexp.analysis.variants import group


def run(norm: str, lr: str = "0.01", seed: int = 0, final: float = 0.9, converged: bool = True,
        diverged_at: int | None = None, reached: float | None = None) -> RunData:
    metrics = {"outcome/final_val_acc": final} | ({"outcome/epochs_to_target": reached} if reached else {})
    return RunData(f"{norm}{lr}{seed}", f"{norm}-s{seed}",
                   {"norm.kind": norm, "optim.lr": lr, "seed": str(seed), "dataset.target_acc": "0.95",
                    "trainer.max_epochs": "20"},
                   metrics, diverged_at is not None, diverged_at, converged and diverged_at is None, [], [])


def test_the_convergence_table_says_when_runs_were_timed_in_parallel():
    keys = ["norm.kind"]
    alone = comparisons.convergence_table(group([run("none"), run("bn")], keys), keys, "0.95")
    assert alone.header[-2:] == ["s/epoch", "train s/epoch"] and not alone.notes
    shared = [run("none"), run("bn")]
    shared[1].jobs_at_once = 4
    table = comparisons.convergence_table(group(shared, keys), keys, "0.95")
    assert table.notes == ["s/epoch: timed with up to 4 jobs sharing the CPUs (a parallel sweep): not comparable "
                           "with runs timed alone"]
    assert [r["jobs_at_once"] for r in table.records] == [1, 4]


def test_verdict_of_one_seed_and_of_several():
    assert comparisons.verdict([run("bn", final=0.973)], with_acc=True) == "yes (0.973)"
    assert comparisons.verdict([run("none", final=math.nan, diverged_at=37)], with_acc=True) == "no (diverged @ step 37)"
    runs = [run("none", seed=0, final=0.85), run("none", seed=1, final=math.nan, diverged_at=2),
            run("none", seed=2, final=math.nan, diverged_at=3)]
    assert comparisons.verdict(runs, with_acc=True) == "no 1/3 (0.850; 2 diverged @ step 2, 3)"
    assert comparisons.verdict([run("bn", seed=0), run("bn", seed=1)], with_acc=False) == "yes 2/2"


def test_lr_table_names_the_largest_rate_that_converged_for_every_seed():
    runs = [run("none", "0.01"), run("none", "0.1", final=math.nan, diverged_at=2), run("bn", "0.01"), run("bn", "0.1"),
            run("bn", "1.0", seed=0), run("bn", "1.0", seed=1, final=math.nan, diverged_at=5)]
    keys = ["norm.kind", "optim.lr"]
    table = comparisons.lr_table(group(runs, keys), keys)
    assert table.header == ["lr", "norm=none", "norm=bn"]
    assert table.rows[-1] == ["**max converging lr**", "**0.01**", "**0.1**"]
    assert table.rows[2][1:] == ["", "no 1/2 (0.900; 1 diverged @ step 5)"]


def test_versus_none_gives_the_speedup_or_says_why_there_is_none():
    keys = ["norm.kind"]
    runs = [run("none", reached=12), run("bn", reached=3), run("ln", final=0.5, converged=False)]
    table = comparisons.versus_none_table(group(runs, keys), keys, "20")
    speedups = {row[0]: row[3] for row in table.rows}
    assert speedups == {"bn": "4.00x (one seed: no interval)", "ln": "— (ln did not reach the target)"}
    assert {row[0]: row[6] for row in table.rows} == {"bn": "+0.000 (one seed: no interval)",
                                                      "ln": "-0.400 (one seed: no interval)"}
    slow_none = comparisons.versus_none_table(group([run("none"), run("bn", reached=4)], keys), keys, "20")
    assert slow_none.rows[0][3] == ("5.00x (one seed: no interval); a lower bound for 1 seed(s) where none did not "
                                    "reach it in 20 epochs (counted as 20)")


def test_stable_lr_table_divides_by_none_in_the_same_group():
    def summary(variant, lr):
        return {"variant": variant, "group": "digits/mlp/adam-bs64", "max_stable_lr": lr, "min_unstable_lr": None,
                "trials": 5, "epochs_spent": 9, "non_monotone": False, "study": f"s/{variant}", "definition": "d"}

    table = comparisons.stable_lr_table([summary("none", 0.04), summary("bn", 0.4), summary("gn", None)])
    assert [r["ratio_to_none"] for r in table.records] == [1.0, 10.0, None]
    assert table.rows[2][2] == "-" and table.notes == ["d"]


def test_versus_none_pairs_seeds_and_says_when_the_interval_includes_no_difference():
    keys = ["norm.kind"]
    # bn is 0.02 better on every seed although the seeds differ by 0.1 from each other: pairing shows it.
    runs = [run("none", seed=s, final=0.80 + 0.1 * s, reached=10 + s) for s in range(3)]
    runs += [run("bn", seed=s, final=0.82 + 0.1 * s, reached=5 + s / 2) for s in range(3)]
    runs += [run("ln", seed=s, final=0.80 + 0.1 * s + (0.01, -0.02, 0.01)[s], reached=10 + s) for s in range(3)]
    table = comparisons.versus_none_table(group(runs, keys), keys, "20")
    rows = {row[0]: row for row in table.rows}
    assert rows["bn"][3] == "2.00x (geometric mean, n=3, 95% CI 2.00..2.00)"
    assert rows["bn"][6] == "+0.020 ± 0.000 (n=3, 95% CI +0.020..+0.020)"
    assert rows["bn"][7] == "bn reaches the target faster; higher final accuracy"
    assert rows["ln"][7] == "no clear difference in speed; no clear difference in accuracy"
    assert rows["ln"][6].endswith(", no clear difference")
    record = {r["norm"]: r for r in table.records}["bn"]
    assert record["pairs"] == 3 and abs(record["difference_mean"] - 0.02) < 1e-9


def deep_run(norm: str, depth: str, final: float, reached: float | None, gaps: dict[str, float] | None = None) -> RunData:
    metrics = {"outcome/final_val_acc": final} | ({"outcome/epochs_to_target": reached} if reached else {})
    metrics |= {f"bn/{layer}/train_eval_gap": gap for layer, gap in (gaps or {}).items()}
    params = {"norm.kind": norm, "model.depth": depth, "seed": "0", "trainer.max_epochs": "20"}
    return RunData(f"{norm}{depth}", norm, params, metrics, False, None, final > 0.8, [], [])


def test_a_pivot_along_depth_gives_verdict_accuracy_and_epochs_to_target():
    runs = [deep_run("none", "2", 0.95, 4), deep_run("none", "16", 0.3, None), deep_run("bn", "2", 0.97, 2),
            deep_run("bn", "16", 0.96, 3)]
    keys = ["norm.kind", "model.depth"]
    tables = {t.name: t for t in comparisons.for_sweep(group(runs, keys), keys)}
    pivot = tables["by_depth"]
    assert pivot.header == ["depth", "norm=none", "norm=bn"]
    assert pivot.rows == [["2", "yes (0.950), epoch 4.0", "yes (0.970), epoch 2.0"],
                          ["16", "no (0.300), target not reached", "yes (0.960), epoch 3.0"]]  # 16 after 2: numeric


def test_train_eval_gap_table_lists_each_layer_input_side_first():
    runs = [deep_run("bn", str(m), 0.9, 3, {"hidden10": 0.5 * m, "hidden2": m}) for m in (0.1, 0.9)]
    keys = ["model.depth"]  # stands in for norm.momentum: any swept value
    table = comparisons.train_eval_gap_table(group(runs, keys), keys)
    assert table.header == ["depth", "final val acc", "gap hidden2", "gap hidden10"]
    assert table.rows[1] == ["0.9", "0.900", "0.9000", "0.4500"]
    assert table.records[0]["gap_hidden10_mean"] == 0.05
    no_bn = [deep_run("none", "2", 0.9, 3)]
    assert comparisons.train_eval_gap_table(group(no_bn, keys), keys) is None
