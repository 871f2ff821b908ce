from normexp.tracking import run_names
from tests.conftest import compose


def test_a_run_name_says_every_key_its_sweep_varies():
    cfg = compose("train", "experiment=sequence", "dataset.variable_length=true", "model.dropout=0.3")
    assert run_names.run_name(cfg) == "seq-bn-adam-lr0.001-bs128-s0"
    swept = ["norm", "dataset.variable_length", "model.dropout", "dataset", "optim.lr", "seed"]
    assert run_names.run_name(cfg, swept) == "seq-bn-adam-lr0.001-bs128-s0-variable_length=true-dropout0.3-" + cfg.dataset.name


def test_a_name_given_in_tracking_run_name_is_the_runs_name():
    assert run_names.name_of(compose("train", "norm=ln")) == "ln-adam-lr0.001-bs64-s0"
    assert run_names.name_of(compose("train", "norm=ln", "tracking.run_name=mine")) == "mine"
