"""normexp.analysis.variants: variant names, the params that name a variant, grouping by seed."""

from normexp.analysis.results import RunData
from normexp.analysis.variants import common_settings, group, variant_keys, variant_name


def run(seed: int, **params) -> RunData:
    return RunData(f"r{seed}{params}", "r", {"seed": str(seed), "tracking.experiment": f"e{seed}"} | params,
                   {}, False, None, True, [], [])


def test_variant_name_marks_post_placement_only():
    assert variant_name("bn", "pre") == "bn" and variant_name("bn", "post") == "bn-post"


def test_variant_keys_skip_the_seed_and_params_that_follow_from_the_axes():
    runs = [run(s, **{"norm.kind": kind, "norm.eps": "1e-05" if kind != "none" else "None", "optim.lr": lr})
            for s in (0, 1) for kind in ("bn", "none") for lr in ("0.1", "0.01")]
    keys = variant_keys(runs)
    assert keys == ["norm.kind", "optim.lr"]  # not seed, tracking.*, nor norm.eps (it follows the norm)
    grouped = group(runs, keys)
    assert [v.values for v in grouped][:2] == [{"norm.kind": "none", "optim.lr": "0.01"},
                                               {"norm.kind": "none", "optim.lr": "0.1"}]  # none first, lr numeric
    assert all(len(v.runs) == 2 for v in grouped)


def test_an_axis_that_follows_from_an_earlier_one_names_no_variant():
    # norm.momentum exists for bn only: in a none/bn/ln sweep it follows from the norm; swept alone it names the variant.
    runs = [run(0, **{"norm.kind": kind, "norm.momentum": "0.1" if kind == "bn" else "None", "dataset.name": "digits"})
            for kind in ("none", "bn", "ln")]
    assert variant_keys(runs) == ["norm.kind"]
    assert "momentum" not in common_settings(runs, ["norm.kind"])  # not the same in every run
    assert "dataset=digits" in common_settings(runs, ["norm.kind"])
    swept = [run(0, **{"norm.kind": "bn", "norm.momentum": m}) for m in ("0.01", "0.9")]
    assert variant_keys(swept) == ["norm.momentum"]
