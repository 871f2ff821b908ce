"""The Optuna side of the stable-learning-rate search: study names, storage, the settings a verdict
depends on, opening (or resuming) a study, and its bracket so far."""

import json
import tempfile
import warnings
from pathlib import Path

import hydra
import optuna
from optuna.trial import TrialState

from normexp.analysis.variants import variant_name
from normexp.errors import ConfigError
from normexp.stable_lr.bracket import bracket
from normexp.tracking import lifecycle, sharing, stores
from normexp.config.schema import SearchRunConfig, TrainConfig

UNSTABLE = -10.0  # objective of an unstable rate: below log10 of any rate worth searching
OBJECTIVE = f"log10(lr) if stable, else {UNSTABLE:g}"  # its name in the study (optuna-dashboard's axis)
DECIDED = (TrialState.COMPLETE, TrialState.PRUNED)  # trials with a verdict
SUMMARY_ARTIFACT = "summary.json"  # in a study's MLflow run: its bracket (summarize)


def group(cfg: TrainConfig) -> str:
    """What a study name says besides the norm: a cross-variant table compares a group's studies with none's."""
    return f"{cfg.dataset.name}/{cfg.model.name}/{cfg.optim.name}-bs{cfg.dataset.batch_size}"


def study_name(cfg: SearchRunConfig) -> str:
    """e.g. stable-lr/digits/mlp/bn/adam-bs64."""
    variant = variant_name(cfg.norm.kind, cfg.norm.placement)
    return cfg.search.study_name or (f"stable-lr/{cfg.dataset.name}/{cfg.model.name}/{variant}/"
                                     f"{cfg.optim.name}-bs{cfg.dataset.batch_size}")


def storage_url(cfg: SearchRunConfig) -> str:
    return cfg.search.storage or f"sqlite:///{stores.PROJECT_ROOT / 'optuna.db'}"


def definition(cfg: SearchRunConfig) -> str:
    seeds = f"{cfg.search.seeds} seed(s) {cfg.seed}..{cfg.seed + cfg.search.seeds - 1}"
    return (f"stable: training {cfg.search.epochs} epoch(s) does not diverge (loss finite, and not above "
            f"{cfg.divergence.factor:g} x first-step loss for {cfg.divergence.patience} steps in a row) and reaches "
            f"val accuracy {cfg.dataset.converge_acc:g} on {cfg.dataset.name}, for each of {seeds}")


def fingerprint(cfg: SearchRunConfig) -> dict[str, str]:
    """The settings a verdict depends on (all but the rate and the search strategy); a resumed study keeps them."""
    flat = lifecycle.flat_params(cfg)
    skip = ("tracking.", "search.", "probes.", "trainer.progress_bar", "trainer.max_epochs", "optim.lr")
    return {k: v for k, v in flat.items() if not k.startswith(skip)} | {
        k: flat[k] for k in ("search.epochs", "search.seeds")}


def open_study(cfg: SearchRunConfig) -> optuna.Study:
    """Create the study, or load it to resume it or to work on it beside the search workers already on
    it (their RUNNING trials are theirs; normexp.stable_lr.workers fails those whose worker is gone)."""
    name, url = study_name(cfg), storage_url(cfg)
    study = optuna.create_study(storage=sharing.optuna_storage(url), study_name=name, direction="maximize",
                                load_if_exists=True,
                                sampler=optuna.samplers.TPESampler(seed=cfg.seed),
                                pruner=hydra.utils.instantiate(cfg.search.pruner))
    if study.metric_names is None:  # new, or made by an older normexp
        with warnings.catch_warnings():  # "experimental" since Optuna 3.2, on every new study's command
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([OBJECTIVE])
    wanted, stored = fingerprint(cfg), study.user_attrs.get("config")
    if stored is None:
        study.set_user_attr("config", wanted)
        study.set_user_attr("definition", definition(cfg))
    elif stored != wanted:
        diff = ", ".join(f"{k}: {stored.get(k)} -> {wanted.get(k)}"
                         for k in sorted(stored.keys() | wanted.keys()) if stored.get(k) != wanted.get(k))
        raise ConfigError(f"study '{name}' in {url} was run with other settings ({diff}); "
                          "use the same settings, or name a new study with search.study_name=...")
    for _ in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):  # enqueued by an older normexp
        study.tell(study.ask(), state=TrialState.FAIL)  # ask() pops the waiting trial
    return study


def summarize(study: optuna.Study, cfg: TrainConfig) -> dict:
    """The bracket so far, also stored as the study's user attrs."""
    trials = study.get_trials(deepcopy=False, states=DECIDED)
    b = bracket([(t.params["lr"], t.user_attrs["stable"]) for t in trials])
    attrs = {"max_stable_lr": b.max_stable_lr, "min_unstable_lr": b.min_unstable_lr,
             "non_monotone": bool(b.non_monotone_lrs), "non_monotone_lrs": b.non_monotone_lrs,
             "trials": len(trials), "epochs_spent": sum(t.user_attrs["epochs"] for t in trials)}
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    return attrs | {"study": study.study_name, "group": group(cfg),
                    "variant": variant_name(cfg.norm.kind, cfg.norm.placement),
                    "definition": definition(cfg), "storage": storage_url(cfg)}


def log_bracket(client, parent_id: str, summary: dict) -> None:
    """The bracket as metrics of the study's MLflow run (step = trials, so their history shows it narrowing),
    and the whole summary as its SUMMARY_ARTIFACT, which a sweep's report reads back (load_summary)."""
    metrics = {k: summary[k] for k in ("max_stable_lr", "min_unstable_lr", "trials", "epochs_spent")}
    lifecycle.log_metrics(client, parent_id, {k: v for k, v in metrics.items() if v is not None}, step=summary["trials"])
    client.log_dict(parent_id, summary, SUMMARY_ARTIFACT)


def load_summary(client, run_id: str) -> dict:
    """The summary that log_bracket wrote to a study's run."""
    with tempfile.TemporaryDirectory() as folder:
        return json.loads(Path(client.download_artifacts(run_id, SUMMARY_ARTIFACT, folder)).read_text())
