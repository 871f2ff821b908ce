"""A run's name: its variant, optimizer, learning rate, batch size and seed, and in a multirun every
other key its jobs differ in (normexp.tracking.sweep.swept_keys), so that the runs table tells them apart."""

from omegaconf import DictConfig, OmegaConf

from normexp.analysis.variants import variant_name
from normexp.config.schema import TrainConfig

# The keys run_name always says; a multirun's other swept keys are added to the name.
NAMED_KEYS = {"model", "model.name", "norm", "norm.kind", "norm.placement", "optim", "optim.name", "optim.lr",
              "dataset.batch_size", "seed"}


def run_name(cfg: TrainConfig, swept: list[str] = ()) -> str:
    """e.g. bn-adam-lr0.01-bs64-s0; the model is named when it is not the default MLP. The keys of
    `swept` (what a multirun's jobs differ in) that the name does not say follow by their last part:
    bn-adam-lr0.001-bs128-s0-depth8, ...-variable_length=true, ...-digits (a config group's option)."""
    parts = [] if cfg.model.name == "mlp" else [cfg.model.name]
    parts.append(variant_name(cfg.norm.kind, cfg.norm.placement))
    parts += [cfg.optim.name, f"lr{cfg.optim.lr:g}", f"bs{cfg.dataset.batch_size}", f"s{cfg.seed}"]
    for key in swept:
        value = OmegaConf.select(cfg, key.lstrip("+~"))
        if key in NAMED_KEYS or value is None:
            continue
        last = key.rsplit(".", 1)[-1]
        if isinstance(value, DictConfig):  # a config group, e.g. dataset=digits,mnist
            parts.append(str(value.name))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            parts.append(f"{last}{value:g}")
        else:  # a flag or a word: variable_length=true
            parts.append(f"{last}={str(value).lower() if isinstance(value, bool) else value}")
    return "-".join(parts)


def name_of(cfg: TrainConfig) -> str:
    """The name of cfg's run: tracking.run_name where set (a multirun's jobs get theirs from train.main), else
    run_name(cfg)."""
    return cfg.tracking.run_name or run_name(cfg)
