"""normexp.analysis.verdicts: each claim's verdict on hand-made runs, paired by seed."""

from normexp.analysis import verdicts
from normexp.analysis.results import RunData


def run(seed: int, norm: str, reached: float | None, final: float, **params) -> RunData:
    metrics = {"outcome/final_val_acc": final} | ({"outcome/epochs_to_target": reached} if reached else {})
    return RunData(f"{norm}{seed}", "r", {"seed": str(seed), "norm.kind": norm, "trainer.max_epochs": "20",
                                         "model.name": "mlp"} | params,
                   metrics, False, None, True, [], [])


def test_convergence_holds_only_when_the_paired_speedup_is_clearly_at_least_two():
    clear = [run(s, "none", 10 + s, 0.9) for s in range(3)] + [run(s, "bn", 4 + s * 0.4, 0.9) for s in range(3)]
    assert verdicts.convergence(clear).startswith("mlp: holds; speedup (epochs to target, none / bn, per seed) 2.50, 95% CI")
    noisy = [run(s, "none", (6, 10, 4)[s], 0.9) for s in range(3)] + [run(s, "bn", (5, 4, 8)[s], 0.9) for s in range(3)]
    assert verdicts.convergence(noisy).startswith("mlp: not on this setup: no clear speedup")
    # none never reaching the target counts as its 20-epoch budget: a lower bound on the speedup
    unreached = [run(s, "none", None, 0.8) for s in range(3)] + [run(s, "bn", 5 + s, 0.9) for s in range(3)]
    assert verdicts.convergence(unreached).startswith("mlp: holds")


def test_batch_size_holds_when_only_bn_loses_accuracy_at_the_smallest_batch():
    runs = [run(s, k, None, acc + s * 0.01, **{"dataset.batch_size": str(bs)})
            for s in range(3) for k, bs, acc in [("bn", 2, 0.60), ("bn", 128, 0.88), ("ln", 2, 0.87),
                                                 ("ln", 128, 0.88), ("gn", 2, 0.875), ("gn", 128, 0.88)]]
    assert verdicts.batch_size(runs).startswith("holds. Final val accuracy at batch 2 - at batch 128, per seed: bn -0.280")


def test_init_scale_holds_when_only_the_norms_converge_at_every_scale():
    scales = ("0.1", "1.0", "10.0")
    runs = [run(s, k, None, 0.9, **{"model.init_scale": scale}) for s in range(2) for k in ("none", "bn", "ln") for scale in scales]
    for r in runs:
        r.converged = r.params["norm.kind"] != "none" or r.params["model.init_scale"] == "1.0"
    assert verdicts.init_scale(runs) == ("holds. Init scales at which every seed converged: none 1; bn 0.1, 1, 10; "
                                        "ln 0.1, 1, 10 (of 0.1, 1, 10).")
    runs[0].converged = False  # one seed of none at 0.1... already False; one of bn at 0.1 fails instead
    next(r for r in runs if r.params["norm.kind"] == "bn" and r.params["model.init_scale"] == "0.1").converged = False
    assert verdicts.init_scale(runs).startswith("not on this setup. Init scales at which every seed converged: none 1; bn 1, 10;")


def test_depth_names_the_deepest_trainable_net_and_where_the_gradient_vanishes():
    runs = []
    for s in range(2):
        for kind in ("none", "bn", "ln"):
            for d in (2, 8):
                vanishing = 1e-4 if kind == "none" and d == 8 else 1.0
                r = run(s, kind, None, 0.9, **{"model.depth": str(d)})
                r.metrics |= {"grad/hidden1/norm": vanishing, f"grad/hidden{d}/norm": 1.0}
                r.converged = not (kind == "none" and d == 8)
                runs.append(r)
    assert verdicts.depth(runs) == ("holds. Deepest MLP at which every seed converged: none 2; bn 8; ln 8 (of 2, 8 hidden "
                                   "layers). At depth 8, the gradient norm of the first hidden layer / the last one: "
                                   "none 0.0001, bn 1, ln 1.")


def test_bn_momentum_holds_only_when_the_small_momentum_is_clearly_worse_on_both_counts():
    def momentum_run(seed, momentum, acc, gap):
        r = run(seed, "bn", None, acc, **{"norm.momentum": momentum})
        r.metrics |= {"bn/hidden1/train_eval_gap": gap, "bn/hidden2/train_eval_gap": gap}
        return r

    lagging = [momentum_run(s, "0.001", 0.70 + s * 0.01, 0.5) for s in range(3)] + \
              [momentum_run(s, "0.1", 0.88 + s * 0.012, 0.05 + s * 0.01) for s in range(3)]
    assert verdicts.bn_momentum(lagging).startswith("holds. Momentum 0.001 - 0.1, per seed: final val accuracy -0.182")
    alike = [momentum_run(s, m, 0.88 + (s if m == "0.1" else 2 - s) * 0.01, 0.05) for s in range(3) for m in ("0.001", "0.1")]
    assert verdicts.bn_momentum(alike).startswith("not on this setup: no clear difference")


def test_sequence_pairs_variable_with_fixed_length_per_norm():
    # Accuracy lost at variable length per seed: LN none beyond noise, BN and no norm 0.05.
    lost = {"none": (0.05, 0.05, 0.05), "bn": (0.05, 0.05, 0.05), "ln": (0.01, -0.01, 0.0)}
    fixed = {"none": 0.80, "bn": 0.85, "ln": 0.86}

    def runs_with(lost):
        return [run(s, k, None, fixed[k] - (lost[k][s] if variable == "True" else 0), **{"dataset.variable_length": variable})
                for s in range(3) for k in fixed for variable in ("False", "True")]

    verdict = verdicts.sequence(runs_with(lost))
    assert verdict.startswith("partly: LN trains at any length, masked BN falls behind it. Final val accuracy at variable "
                              "- fixed length, per seed: none -0.050")
    assert verdict.endswith("At variable length, bn - ln: -0.060, 95% CI -0.085..-0.035 (n=3).")
    assert verdicts.sequence(runs_with(lost | {"ln": (0.05, 0.04, 0.06)})).startswith(
        "not on this setup: LN loses accuracy at variable length")


def test_norms_cnn_is_judged_on_final_accuracy_paired_with_none():
    gains = {"none": (0, 0, 0), "bn": (0.05, 0.06, 0.04), "ln": (0.02, 0.025, 0.03), "gn": (0.01, -0.01, 0.0)}
    runs = [run(s, k, None, 0.80 + g[s]) for k, g in gains.items() for s in range(3)]  # no run reached the target
    assert verdicts.norms_cnn(runs).startswith("partly: only bn, ln; the largest mean gain is bn's. Final val accuracy, "
                                              "norm - none, per seed: bn +0.050, 95% CI +0.025..+0.075 (n=3); gn +0.000, 95% CI")
    gains["gn"] = (0.02, 0.03, 0.025)
    runs = [run(s, k, None, 0.80 + g[s]) for k, g in gains.items() for s in range(3)]
    assert verdicts.norms_cnn(runs).startswith("holds; the largest mean gain is bn's.")
