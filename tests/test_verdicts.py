"""normexp.analysis.verdicts: each claim's verdict on hand-made runs, paired by seed; every part is one of
the four kinds of normexp.analysis.claims."""

import pytest

from normexp.analysis import verdicts
from normexp.analysis.claims import Claim, judge
from normexp.analysis.results import RunData


def run(seed: int, norm: str, reached: float | None, final: float, margin: str = "0.005", **params) -> RunData:
    metrics = {"outcome/final_val_acc": final} | ({"outcome/epochs_to_target": reached} if reached else {})
    return RunData(f"{norm}{seed}", "r", {"seed": str(seed), "norm.kind": norm, "trainer.max_epochs": "20",
                                         "model.name": "mlp", "answers.margin": margin} | params,
                   metrics, False, None, True, [], [])


def test_convergence_is_a_geometric_mean_speedup_judged_with_the_part_of_its_range_shown():
    clear = [run(s, "none", 10 + s, 0.9, "1.1") for s in range(5)] + [run(s, "bn", 4 + s * 0.4, 0.9, "1.1") for s in range(5)]
    verdict = verdicts.convergence(clear)
    assert verdict.words == "mlp: holds (faster: yes; 2-10x: yes)" and verdict.n == 5
    assert verdict.evidence.startswith("mlp: speedup (epochs to target, none / bn) 2.50x, 95% CI 2.50..2.50 (n=5)")  # (10 + s) / (4 + 0.4 s) is 2.5 for every seed
    noisy = [run(s, "none", (6, 10, 4, 5, 9)[s], 0.9, "1.1") for s in range(5)] + \
            [run(s, "bn", (5, 4, 8, 4, 6)[s], 0.9, "1.1") for s in range(5)]
    assert verdicts.convergence(noisy).words.startswith("mlp: inconclusive at 5 seeds (about ")
    # none never reaching the target counts as its 20-epoch budget: a lower bound on the speedup
    unreached = [run(s, "none", None, 0.8, "1.1") for s in range(3)] + [run(s, "bn", 5 + s, 0.9, "1.1") for s in range(3)]
    assert verdicts.convergence(unreached).words.startswith("mlp: holds (faster: yes")


def test_the_margin_is_the_presets_and_a_judged_preset_must_set_one():
    runs = [run(s, k, None, 0.9, "None") for s in range(3) for k in ("none", "bn")]
    with pytest.raises(ValueError, match="answers.margin is \\['None'\\]"):
        verdicts.cnn(runs)


def test_batch_size_judges_each_model_and_norm_from_batch_128_down_to_the_smallest():
    runs = [run(s, k, None, acc + s * 0.001, "0.01", **{"dataset.batch_size": str(bs), "model.name": model})
            for model in ("mlp", "cnn") for s in range(5)
            for k, bs, acc in [("bn", 2, 0.60), ("bn", 128, 0.88), ("ln", 2, 0.879), ("ln", 128, 0.88),
                               ("gn", 2, 0.8805), ("gn", 128, 0.88)]]
    verdict = verdicts.batch_size(runs)
    assert verdict.words == ("cnn bn degrades: holds; cnn ln degrades: no difference beyond ±0.01; cnn gn degrades: "
                             "no difference beyond ±0.01; mlp bn degrades: holds; mlp ln degrades: no difference beyond "
                             "±0.01; mlp gn degrades: no difference beyond ±0.01")
    # The one measure said once, then each part's value.
    assert verdict.evidence.startswith("final val error at batch 2 - at batch 128: cnn bn degrades +0.280, 95% CI")
    assert "; mlp bn degrades +0.280, 95% CI" in verdict.evidence and verdict.evidence.count("batch 128") == 1


def test_init_scale_holds_when_only_the_norms_converge_at_every_scale_and_a_split_cell_is_inconclusive():
    scales = ("0.1", "1.0", "10.0")
    runs = [run(s, k, None, 0.9, **{"model.init_scale": scale}) for s in range(2) for k in ("none", "bn", "ln") for scale in scales]
    for r in runs:
        r.converged = r.params["norm.kind"] != "none" or r.params["model.init_scale"] == "1.0"
    verdict = verdicts.init_scale(runs)
    assert verdict.words == "holds"
    assert verdict.evidence == ("Converged seeds per init scale: none 0.1 0/2, 1 2/2, 10 0/2; bn 0.1 2/2, 1 2/2, 10 2/2; "
                                "ln 0.1 2/2, 1 2/2, 10 2/2")
    next(r for r in runs if r.params["norm.kind"] == "bn" and r.params["model.init_scale"] == "0.1").converged = False
    assert verdicts.init_scale(runs).words.startswith("inconclusive at 2 seeds (seeds split at bn 0.1;")
    for r in runs:
        if r.params["norm.kind"] == "bn" and r.params["model.init_scale"] == "0.1":
            r.converged = False
    assert verdicts.init_scale(runs).words == "does not hold on this setup"


def test_depth_is_judged_where_bn_trains_deepest_not_at_a_depth_no_variant_trains():
    # Every seed trains to depth 2 without a norm, 8 with LN, 16 with BN; at 32 none of them does (few epochs).
    trains_to = {"none": 2, "ln": 8, "bn": 16}
    runs = [run(s, k, None, 0.9, **{"model.depth": str(d)}) for s in range(2) for k in trains_to for d in (2, 8, 16, 32)]
    for r in runs:
        depth, kind = int(r.params["model.depth"]), r.params["norm.kind"]
        r.converged = depth <= trains_to[kind]
        # The first hidden layer's gradient against the last one's: it vanishes towards the input without a norm.
        r.metrics |= {"grad/hidden1/norm": 1e-9 if kind == "none" else 0.5, f"grad/hidden{depth}/norm": 1.0}
    verdict = verdicts.depth(runs)
    assert verdict.words == "holds"
    assert verdict.evidence.startswith("Every seed trains up to depth: none 2, bn 16, ln 8. Converged seeds per depth: "
                                       "none 2 2/2, 8 0/2, 16 0/2, 32 0/2; bn 2 2/2, 8 2/2, 16 2/2, 32 0/2;")
    assert verdict.evidence.endswith("At depth 16, the deepest where bn trains every seed, the gradient norm of the first "
                                     "hidden layer / the last one: none 1e-09, bn 0.5, ln 0.5")
    # Without a norm every seed trains that deep too: BN keeps nothing trainable that was not.
    for r in runs:
        r.converged = int(r.params["model.depth"]) <= (16 if r.params["norm.kind"] != "ln" else 8)
    assert verdicts.depth(runs).words == "does not hold on this setup"
    # One seed of no norm trains there: undecided.
    next(r for r in runs if r.params["norm.kind"] == "none" and r.params["model.depth"] == "16").converged = False
    assert verdicts.depth(runs).words.startswith("inconclusive at 2 seeds (seeds split at none 16;")


def test_lr_tolerance_brackets_the_ratio_of_the_largest_converging_rates_on_the_grid():
    rates = ("0.01", "0.1", "1", "3")
    runs = [run(s, k, None, 0.9, **{"optim.lr": lr}) for s in range(2) for k in ("none", "bn") for lr in rates]
    for r in runs:
        r.converged = float(r.params["optim.lr"]) <= (0.01 if r.params["norm.kind"] == "none" else 1)
    verdict = verdicts.lr_tolerance(runs)
    assert verdict.words == "holds (higher: yes; 10-100x: not shown)"  # bracketed 1/0.1 = 10x .. 3/0.01 = 300x
    assert verdict.evidence.endswith("bn / none: 10x..300x (the grid's bracket)")


def test_the_search_brackets_bn_over_none_from_the_studies_summaries():
    summaries = [{"variant": "none", "max_stable_lr": 0.04, "min_unstable_lr": 0.05},
                 {"variant": "bn", "max_stable_lr": 0.8, "min_unstable_lr": 1.0},
                 {"variant": "ln", "max_stable_lr": 0.03, "min_unstable_lr": 0.0375}]
    verdict = verdicts.stable_lr(summaries, 3)
    assert verdict.words == "holds (higher: yes; 10-100x: yes)" and verdict.n == 3
    assert verdict.evidence.endswith("Ratio to none: bn 20x, ln 0.75x; bn / none bracketed 16x..25x")


def test_sequence_and_norms_cnn_name_each_part():
    lost = {"none": (0.05,) * 5, "bn": (0.002, 0.0, 0.001, -0.001, 0.0), "ln": (0.001, -0.001, 0.0, 0.001, 0.0)}
    fixed = {"none": 0.80, "bn": 0.86, "ln": 0.86}
    runs = [run(s, k, None, fixed[k] - (lost[k][s] if variable == "True" else 0), "0.01", **{"dataset.variable_length": variable})
            for s in range(5) for k in fixed for variable in ("False", "True")]
    assert verdicts.sequence(runs).words == ("ln loses accuracy at variable length: no difference beyond ±0.01; "
                                            "masked bn falls behind ln: no difference beyond ±0.01")
    gains = {"none": (0,) * 3, "bn": (0.08, 0.09, 0.085), "ln": (0.02, 0.025, 0.03), "gn": (0.01, -0.01, 0.0)}
    runs = [run(s, k, None, 0.80 + g[s]) for k, g in gains.items() for s in range(3)]
    words = verdicts.norms_cnn(runs).words
    assert words.startswith("bn: holds; gn: inconclusive at 3 seeds (about ") and "; ln: holds; bn most (against ln): holds" in words


def test_the_brief_evidence_brackets_each_interval_and_gives_an_n_only_where_it_is_not_the_rows():
    speedup = Claim("speedup", "faster", 1.1, ratio=True)
    verdict = verdicts.combine({"mlp": judge(speedup, [1.5, 1.6, 1.4, 1.55, 1.5]), "cnn": judge(speedup, [2, 2.5, 1.5])})
    assert verdict.evidence == "speedup: mlp 1.51x, 95% CI 1.42..1.60 (n=5); cnn 1.96x, 95% CI 1.04..3.70 (n=3)"
    assert verdict.brief(5) == "speedup: mlp 1.51x [1.42..1.60]; cnn 1.96x [1.04..3.70] (n=3)"
    grid = verdicts.Verdict("holds", "Converged seeds per depth: none 2 2/2", 2, None)  # no judged parts
    assert grid.brief(2) == grid.evidence
