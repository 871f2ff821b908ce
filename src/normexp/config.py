"""Config schemas: the type of every config value, so a wrong type or an unknown key is refused when
Hydra composes the config, before data is loaded or a run exists.

Each dataclass is registered in Hydra's ConfigStore as schema/<group>/<name>; every YAML option of a
group extends its schema first (`defaults: [/schema/norm/bn@_here_, _self_]`), and conf/train.yaml
and conf/search.yaml extend schema/train and schema/search. The schemas hold types only: the values
live in the YAML files (MISSING here means "the YAML gives it"). Checks that need run-time facts
(layer widths, the batch size against BatchNorm, known names) stay with the code that uses them.
"""

from dataclasses import dataclass, field, fields
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from normexp.errors import ConfigError

# ---- dataset ------------------------------------------------------------------------------------


@dataclass
class DatasetConfig:
    name: str = MISSING
    val_fraction: float = MISSING   # of the training pool (digits: of what the test split leaves)
    fraction: float = MISSING
    train_size: Optional[int] = MISSING
    batch_size: int = MISSING
    mean: list[float] = MISSING
    std: list[float] = MISSING
    max_value: float = MISSING
    converge_acc: float = MISSING
    target_acc: float = MISSING
    variable_length: bool = MISSING  # cut each image to a random number of rows (model=seq only)
    min_length: int = MISSING        # the fewest rows an image keeps when variable_length


@dataclass
class DigitsConfig(DatasetConfig):
    test_fraction: float = MISSING


@dataclass
class DownloadedConfig(DatasetConfig):
    download_dir: str = MISSING


@dataclass
class IdxConfig(DownloadedConfig):
    root: Optional[str] = MISSING   # a folder of raw IDX files


# ---- model --------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    name: str = MISSING
    arch: str = MISSING
    dropout: float = MISSING
    init: str = MISSING             # default, kaiming, xavier, normal (normexp.models.INITS)
    init_scale: float = MISSING     # multiplies every weight matrix / kernel after init; 1.0 = unchanged


@dataclass
class MLPConfig(ModelConfig):
    widths: Optional[list[int]] = MISSING
    depth: Optional[int] = MISSING  # with width: widths = [width] * depth
    width: Optional[int] = MISSING


@dataclass
class SequenceConfig(ModelConfig):
    width: int = MISSING            # token width D
    depth: int = MISSING            # transformer blocks
    heads: int = MISSING
    mlp_width: int = MISSING        # hidden width of each block's MLP


@dataclass
class CNNConfig(ModelConfig):
    channels: list[int] = MISSING


@dataclass
class ModernCNNConfig(CNNConfig):
    head_channels: int = MISSING


# ---- norm ---------------------------------------------------------------------------------------


@dataclass
class NormConfig:
    kind: str = MISSING
    placement: str = MISSING


@dataclass
class ScratchLayerNormConfig(NormConfig):
    eps: float = MISSING


@dataclass
class AffineNormConfig(ScratchLayerNormConfig):  # ln, in
    affine: bool = MISSING


@dataclass
class ScratchBatchNormConfig(ScratchLayerNormConfig):
    momentum: float = MISSING


@dataclass
class BatchNormConfig(ScratchBatchNormConfig):
    affine: bool = MISSING


@dataclass
class GroupNormConfig(AffineNormConfig):
    num_groups: int = MISSING


# ---- optim --------------------------------------------------------------------------------------


@dataclass
class OptimConfig:
    name: str = MISSING
    lr: float = MISSING
    weight_decay: float = MISSING


@dataclass
class AdamConfig(OptimConfig):
    betas: list[float] = MISSING


@dataclass
class SGDConfig(OptimConfig):
    momentum: float = MISSING
    nesterov: bool = MISSING


# ---- trainer, tracking, search (typed by the whole config's schema) --------------------------------------------------------------------


@dataclass
class TrainerConfig:
    max_epochs: int = MISSING
    accelerator: str = MISSING
    deterministic: Any = MISSING    # true, false or "warn" (Lightning's values)
    progress_bar: Optional[bool] = MISSING
    resume: bool = MISSING          # continue the newest KILLED run of this config from its checkpoint


@dataclass
class TrackingConfig:
    uri: Optional[str] = MISSING
    artifact_root: Optional[str] = MISSING
    experiment: str = MISSING
    description: Optional[str] = MISSING
    run_name: Optional[str] = MISSING
    heartbeat_s: float = MISSING    # a RUNNING run's process renews its lease this often
    lease_s: float = MISSING        # a lease not renewed for this long: the run's process is gone (KILLED)


@dataclass
class SearchConfig:
    epochs: int = MISSING
    seeds: int = MISSING
    lr_min: float = MISSING
    lr_max: float = MISSING
    grid_factor: float = MISSING
    resolution: float = MISSING
    refine_trials: int = MISSING
    pruner: Any = MISSING           # an optuna.pruners class and its arguments (_target_, ...)
    storage: Optional[str] = MISSING
    study_name: Optional[str] = MISSING
    workers: int = MISSING          # worker processes on this machine, each training its own rate (normexp.workers)


# ---- the whole config ---------------------------------------------------------------------------


@dataclass
class DivergenceConfig:
    factor: float = MISSING
    patience: int = MISSING


@dataclass
class ProbesConfig:
    enabled: bool = MISSING
    probe_batch_size: int = MISSING
    histogram_bins: int = MISSING
    undo_gamma_tol: float = MISSING
    undo_beta_tol: float = MISSING
    inference_batch_size: int = MISSING
    inference_repeats: int = MISSING
    gradient_every: int = MISSING


@dataclass
class TrainConfig:
    # These four are typed by their options' schemas (a norm=gn has num_groups, a norm=none has not).
    dataset: Any = MISSING
    model: Any = MISSING
    norm: Any = MISSING
    optim: Any = MISSING
    trainer: TrainerConfig = MISSING
    tracking: TrackingConfig = MISSING
    seed: int = MISSING
    divergence: DivergenceConfig = field(default_factory=DivergenceConfig)
    probes: ProbesConfig = field(default_factory=ProbesConfig)


@dataclass
class SearchRunConfig(TrainConfig):
    search: SearchConfig = MISSING


def refuse_added_keys(cfg) -> None:
    """Hydra lets `+norm.foo=1` add a key that no schema has: refuse it too."""
    for group in ("dataset", "model", "norm", "optim"):
        known = [f.name for f in fields(OmegaConf.get_type(cfg[group]))]
        added = [key for key in cfg[group] if key not in known]
        if added:
            raise ConfigError(f"unknown key {group}.{added[0]}; {group}={cfg[group].name if 'name' in cfg[group] else cfg[group].kind} "
                              f"has: {', '.join(known)}")


_store = ConfigStore.instance()
_store.store(group="schema", name="train", node=TrainConfig)
_store.store(group="schema", name="search", node=SearchRunConfig)
for _group, _schemas in {
    "dataset": {"digits": DigitsConfig, "downloaded": DownloadedConfig, "idx": IdxConfig},
    "model": {"mlp": MLPConfig, "cnn": CNNConfig, "cnn_modern": ModernCNNConfig, "seq": SequenceConfig},
    "norm": {"none": NormConfig, "bn": BatchNormConfig, "bn_scratch": ScratchBatchNormConfig,
             "ln": AffineNormConfig, "ln_scratch": ScratchLayerNormConfig, "gn": GroupNormConfig,
             "in": AffineNormConfig},
    "optim": {"adam": AdamConfig, "sgd": SGDConfig},
}.items():
    for _name, _schema in _schemas.items():
        _store.store(group=f"schema/{_group}", name=_name, node=_schema)
