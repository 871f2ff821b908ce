"""normexp.config.schema: the schemas type every value, so Hydra refuses a wrong type or an unknown key while
composing, before any data is loaded or run exists."""

import pytest
from hydra import compose as hydra_compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from normexp import train
from normexp.config import schema
from normexp.errors import ConfigError
from tests.conftest import CONF_DIR, compose, refusal

OPTIONS = {"dataset": ["digits", "mnist", "fashion_mnist", "cifar10"], "model": ["mlp", "mlp_deep", "cnn", "cnn_modern", "seq"],
           "norm": ["none", "bn", "ln", "gn", "in", "bn_scratch", "ln_scratch"], "optim": ["adam", "adamw", "sgd"]}


@pytest.mark.parametrize("group, option", [(g, o) for g, options in OPTIONS.items() for o in options])
def test_every_option_is_typed_by_its_schema(compose_cfg, group, option):
    cfg = compose_cfg(f"{group}={option}")
    assert issubclass(OmegaConf.get_type(cfg[group]), {"dataset": schema.DatasetConfig, "model": schema.ModelConfig,
                                                       "norm": schema.NormConfig, "optim": schema.OptimConfig}[group])


@pytest.mark.parametrize("override, message", [
    ("norm.eps=abc", "Value 'abc' of type 'str' could not be converted to Float"),
    ("optim.lrr=0.1", "Key 'lrr' not in 'AdamConfig'"),
    ("seed=x", "Value 'x' of type 'str' could not be converted to Integer"),
    ("trainer.max_epochs=1.5", "Value '1.5' of type 'float' could not be converted to Integer"),
    ("norm=none norm.eps=0.1", "Key 'eps' not in 'NormConfig'"),
])
def test_a_wrong_type_or_an_unknown_key_is_refused_while_composing(compose_cfg, override, message):
    with pytest.raises(ConfigCompositionException) as refused:
        compose_cfg(*override.split())
    assert message in str(refused.value.__cause__)


def test_a_key_added_with_plus_is_refused_before_any_run(compose_cfg, experiment_runs):
    with pytest.raises(ConfigError, match="unknown key optim.lrr; optim=adam has: name, lr, weight_decay, betas"):
        train.run(compose_cfg("+optim.lrr=0.1"))
    assert experiment_runs() == []


@pytest.mark.parametrize("override, key", [("optim.lrr=0.1", "optim.lrr"), ("norm.eps=abc", "norm.eps")])
def test_the_command_line_refuses_before_any_store_exists(monkeypatch, tmp_path, override, key):
    assert key in refusal(train.main, monkeypatch, tmp_path, override)  # which checks that no store was created


@pytest.mark.parametrize("overrides", [
    ("norm=gn", "norm.num_groups=4", "optim.lr=0.1", "seed=3"),
    ("experiment=depth", "model.depth=2", "dataset=digits", "trainer.max_epochs=1"),
    ("+optim.lrr=0.1", "optim.betas=[0.8,0.9]"),
    ("norm.eps=abc",),                    # the errors: a wrong type,
    ("norm=none", "norm.eps=0.1"),        # a key the option lacks,
    ("~trainer.deterministic",),          # a key of a schema deleted
])
def test_the_tests_compose_as_hydra_compose_does(overrides):
    """conftest's compose composes each config name and group options once and applies the values to a copy:
    the same config as hydra.compose, schema types included, or the same error."""
    def composed(compose_fn):
        try:
            cfg = compose_fn()
        except ConfigCompositionException as error:
            return str(error), str(error.__cause__)
        return OmegaConf.to_yaml(cfg), {node: OmegaConf.get_type(cfg[node]) for node in cfg}

    with initialize_config_dir(str(CONF_DIR), version_base=None):
        expected = composed(lambda: hydra_compose("train", overrides=list(overrides)))
    assert composed(lambda: compose("train", *overrides)) == expected
    assert composed(lambda: compose("train", *overrides)) == expected  # from the cache, unchanged by the first
