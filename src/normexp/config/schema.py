"""Config schemas: the type and the domain of every config value, so a wrong type, an unknown key or a
value out of its domain is refused as soon as Hydra has composed the config, before data is loaded,
a model built or a store opened (`check`).

Each dataclass is registered in Hydra's ConfigStore as schema/<group>/<name>; every YAML option of a
group extends its schema first (`defaults: [/schema/norm/bn@_here_, _self_]`), and conf/train.yaml
and conf/search.yaml extend schema/train and schema/search. The schemas hold types and domains
(normexp.config.domains), with an example each; the values live in the YAML files (MISSING here means "the
YAML gives it"). Domains that depend on other values are normexp.config.relations; checks that need the data
(its size, its image height) stay with the code that loads it.
"""

from dataclasses import dataclass, field, fields
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from normexp.config import domains, relations
from normexp.config.domains import (COUNT, FINITE, FRACTION, NON_NEGATIVE, OPEN_FRACTION, POSITIVE, PROBABILITY, RATIO,
                             Interval, NonEmpty, OneOf, domain)
from normexp.errors import ConfigError

# The names a choice may take; the code that implements them dispatches on these names.
DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10")
ARCHS = ("mlp", "cnn", "cnn_modern", "seq")
INITS = ("default", "kaiming", "xavier", "normal")
NORMS = ("none", "bn", "ln", "gn", "in", "bn_scratch", "ln_scratch")  # in display order: none first
PLACEMENTS = ("pre", "post")
OPTIMIZERS = ("adam", "adamw", "sgd")  # normexp.training.classifier.OPTIMIZERS holds their classes


def accelerators() -> tuple[str, ...]:
    """trainer.accelerator's choices: Lightning's, as this machine's Lightning knows them."""
    from pytorch_lightning.accelerators import AcceleratorRegistry  # torch: imported when checked, not with the schemas

    return ("auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators()))


# ---- dataset ------------------------------------------------------------------------------------


@dataclass
class DatasetConfig:
    name: str = domain(OneOf(DATASETS), "digits")
    val_fraction: float = domain(OPEN_FRACTION, "0.15")  # of the training pool (digits: of what the test split leaves)
    fraction: float = domain(FRACTION, "0.1")
    train_size: Optional[int] = domain(COUNT, "1000")      # at most the training split: checked with the data
    batch_size: int = domain(COUNT, "64")
    mean: list[float] = domain(FINITE, "[0.5]")
    std: list[float] = domain(POSITIVE, "[0.25]")
    max_value: float = domain(POSITIVE, "255")
    converge_acc: float = domain(PROBABILITY, "0.8")
    target_acc: float = domain(PROBABILITY, "0.95")
    variable_length: bool = MISSING  # cut each image to a random number of rows (model=seq only)
    min_length: int = domain(COUNT, "4")  # the fewest rows an image keeps when variable_length (<= its height)


@dataclass
class DigitsConfig(DatasetConfig):
    test_fraction: float = domain(OPEN_FRACTION, "0.15")


@dataclass
class DownloadedConfig(DatasetConfig):
    download_dir: str = MISSING


@dataclass
class IdxConfig(DownloadedConfig):
    root: Optional[str] = MISSING   # a folder of raw IDX files


# ---- model --------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    name: str = domain(NonEmpty(), "mlp")
    arch: str = domain(OneOf(ARCHS), "mlp")
    dropout: float = domain(Interval(low=0, high=1, high_open=True), "0.2")
    init: str = domain(OneOf(INITS), "kaiming")
    init_scale: float = domain(POSITIVE, "1.0")  # multiplies every weight matrix / kernel after init; 1.0 = unchanged


@dataclass
class MLPConfig(ModelConfig):
    widths: Optional[list[int]] = domain(COUNT, "[256,128]")
    depth: Optional[int] = domain(COUNT, "8")  # with width: widths = [width] * depth
    width: Optional[int] = domain(COUNT, "128")


@dataclass
class SequenceConfig(ModelConfig):
    width: int = domain(COUNT, "64")      # token width D
    depth: int = domain(COUNT, "2")       # transformer blocks
    heads: int = domain(COUNT, "4")       # must divide width
    mlp_width: int = domain(COUNT, "128")  # hidden width of each block's MLP


@dataclass
class CNNConfig(ModelConfig):
    channels: list[int] = domain(COUNT, "[32,64]")


@dataclass
class ModernCNNConfig(CNNConfig):
    head_channels: int = domain(COUNT, "128")


# ---- norm ---------------------------------------------------------------------------------------


@dataclass
class NormConfig:
    kind: str = domain(OneOf(NORMS), "bn")
    placement: str = domain(OneOf(PLACEMENTS), "pre")


@dataclass
class ScratchLayerNormConfig(NormConfig):
    eps: float = domain(NON_NEGATIVE, "1e-5")  # > 0 for norm=bn (normexp.config.relations)


@dataclass
class AffineNormConfig(ScratchLayerNormConfig):  # ln, in
    affine: bool = MISSING


@dataclass
class ScratchBatchNormConfig(ScratchLayerNormConfig):
    momentum: float = domain(PROBABILITY, "0.1")  # PyTorch's: the weight of the new batch's statistics


@dataclass
class BatchNormConfig(ScratchBatchNormConfig):
    affine: bool = MISSING


@dataclass
class GroupNormConfig(AffineNormConfig):
    num_groups: int = domain(COUNT, "8")  # must divide every width (normexp.config.relations)


# ---- optim --------------------------------------------------------------------------------------


@dataclass
class OptimConfig:
    name: str = domain(OneOf(OPTIMIZERS), "adam")
    lr: float = domain(POSITIVE, "0.001")
    weight_decay: float = domain(NON_NEGATIVE, "0.01")


@dataclass
class AdamConfig(OptimConfig):
    betas: list[float] = domain(Interval(low=0, high=1, high_open=True), "[0.9,0.999]")


@dataclass
class SGDConfig(OptimConfig):
    momentum: float = domain(NON_NEGATIVE, "0.9")
    nesterov: bool = MISSING         # needs momentum > 0 (normexp.config.relations)


# ---- trainer, tracking, search (typed by the whole config's schema) ---------------------------


@dataclass
class TrainerConfig:
    max_epochs: int = domain(COUNT, "10")
    accelerator: str = domain(OneOf(accelerators), "auto")
    deterministic: Any = domain(OneOf((True, False, "warn")), "warn")  # Lightning's values
    progress_bar: Optional[bool] = MISSING
    resume: bool = MISSING          # continue the newest KILLED run of this config from its checkpoint
    val_checks_per_epoch: int = domain(COUNT, "10")  # validations an epoch: the time to target's resolution
    stop_at_target: bool = MISSING  # stop once val accuracy has held dataset.target_acc (train.TARGET_HELD_CHECKS)


@dataclass
class AnswersConfig:
    # No difference beyond ±margin: a preset's equivalence margin for its claim (normexp.analysis.claims), in
    # the unit of its effect (0.005: of accuracy; 1.1: a factor, for a speedup); null: a preset judges no claim.
    margin: Optional[float] = domain(POSITIVE, "0.005")


@dataclass
class TrackingConfig:
    uri: Optional[str] = MISSING
    artifact_root: Optional[str] = MISSING
    experiment: str = domain(NonEmpty(), "normexp")
    description: Optional[str] = MISSING
    run_name: Optional[str] = MISSING
    heartbeat_s: float = domain(POSITIVE, "10")  # a RUNNING run's process renews its lease this often
    lease_s: float = domain(POSITIVE, "60")      # a lease not renewed for this long: the run's process is gone (KILLED)
    server_timeout_s: float = domain(POSITIVE, "5")  # a tracking server's answer to one request
    log_model: bool = MISSING        # each training run logs its trained network as an MLflow model
    system_metrics: bool = MISSING   # each training run records CPU, memory (and GPU) use as system/* metrics
    system_metrics_interval_s: float = domain(POSITIVE, "10")  # one sample of them this often


@dataclass
class SearchConfig:
    epochs: int = domain(COUNT, "3")
    seeds: int = domain(COUNT, "2")
    lr_min: float = domain(POSITIVE, "1e-4")  # below lr_max (normexp.config.relations)
    lr_max: float = domain(POSITIVE, "10")
    grid_factor: float = domain(RATIO, "10")
    resolution: float = domain(RATIO, "1.25")
    refine_trials: int = domain(NON_NEGATIVE, "0")
    pruner: Any = MISSING           # an optuna.pruners class and its arguments (_target_, ...)
    storage: Optional[str] = MISSING
    study_name: Optional[str] = MISSING
    workers: int = domain(COUNT, "2")  # processes on this machine, each training its own rate (stable_lr.workers)


# ---- the whole config ---------------------------------------------------------------------------


@dataclass
class DivergenceConfig:
    factor: float = domain(RATIO, "10")
    patience: int = domain(COUNT, "5")  # steps


@dataclass
class ProbesConfig:
    enabled: bool = MISSING
    probe_batch_size: int = domain(Interval(low=2), "256")  # BatchNorm's train-mode output needs two examples
    histogram_bins: int = domain(COUNT, "50")
    undo_gamma_tol: float = domain(POSITIVE, "0.5")
    undo_beta_tol: float = domain(POSITIVE, "0.5")
    inference_batch_size: int = domain(COUNT, "256")
    inference_repeats: int = domain(COUNT, "10")
    gradient_every: int = domain(COUNT, "10")


@dataclass
class TrainConfig:
    # These four are typed by their options' schemas (a norm=gn has num_groups, a norm=none has not).
    dataset: Any = MISSING
    model: Any = MISSING
    norm: Any = MISSING
    optim: Any = MISSING
    trainer: TrainerConfig = MISSING
    tracking: TrackingConfig = MISSING
    seed: int = domain(Interval(low=0, high=2**32 - 1), "0")  # Lightning's and NumPy's range
    divergence: DivergenceConfig = field(default_factory=DivergenceConfig)
    probes: ProbesConfig = field(default_factory=ProbesConfig)
    answers: AnswersConfig = field(default_factory=AnswersConfig)


@dataclass
class SearchRunConfig(TrainConfig):
    search: SearchConfig = MISSING


def check(cfg: TrainConfig) -> None:
    """Refuse, with one line naming the key, the value and an allowed one, what composing let through:
    a key added with `+`, a value outside its field's domain, values that do not fit together."""
    refuse_added_keys(cfg)
    domains.refuse_out_of_domain(cfg)
    relations.check(cfg)


def refuse_added_keys(cfg: TrainConfig) -> None:
    """Hydra lets `+norm.foo=1` add a key that no schema has: refuse it too."""
    for group in ("dataset", "model", "norm", "optim"):
        known = [f.name for f in fields(OmegaConf.get_type(cfg[group]))]
        added = [key for key in cfg[group] if key not in known]
        if added:
            option = cfg[group].name if "name" in cfg[group] else cfg[group].kind
            raise ConfigError(f"unknown key {group}.{added[0]}; {group}={option} has: {', '.join(known)}")


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
