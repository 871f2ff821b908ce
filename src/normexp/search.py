"""Maximum stable learning rate: one Optuna study per configuration, every trial trained by train.run.

A learning rate is *stable* when training for `search.epochs` epochs does not diverge and reaches
the data set's `converge_acc`, for every one of `search.seeds` seeds.

The strategy is normexp.bracket; the Optuna study, normexp.study. Each rate is an Optuna trial
(enqueued, then asked) with objective log10(lr) when stable and UNSTABLE otherwise, maximized; an
unstable rate stops early (at the step it diverges, at its first failing seed).
"""

import math
import textwrap

import hydra
import optuna
from mlflow.exceptions import MlflowException
from omegaconf import OmegaConf
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from normexp import plots, study as studies, sweep, tracking, train
from normexp.bracket import plan
from normexp.callbacks import TrialPruning
from normexp.errors import ConfigError
from normexp.study import DECIDED, UNSTABLE
from normexp.variants import variant_name


def check(cfg) -> None:
    """Refuse bad input before any study or MLflow run exists."""
    s = cfg.search
    if not 0 < s.lr_min < s.lr_max:
        raise ConfigError(f"search.lr_min={s.lr_min:g}, search.lr_max={s.lr_max:g}: need 0 < lr_min < lr_max; "
                          "e.g. search.lr_min=1e-4 search.lr_max=10")
    for key, low in (("seeds", 1), ("epochs", 1), ("refine_trials", 0)):
        if s[key] < low:
            raise ConfigError(f"search.{key}={s[key]} must be >= {low}")
    for key in ("resolution", "grid_factor"):
        if not s[key] > 1:
            raise ConfigError(f"search.{key}={s[key]} must be > 1 (a ratio of learning rates); e.g. search.{key}=1.25")
    train.prepare(cfg)  # the rest is refused by the checks train.run makes before its run exists


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None  # JSON user attrs: NaN would break the dashboard


def run_trial(cfg, study: optuna.Study, phase: str, lr: float | None, client, parent_id: str):
    """Train `lr` (None: the sampler's choice) on each seed until one fails: one Optuna trial, one MLflow
    child run per seed."""
    if lr is not None:
        study.enqueue_trial({"lr": lr})
    trial = study.ask({"lr": FloatDistribution(cfg.search.lr_min, cfg.search.lr_max, log=True)})
    lr, epochs = trial.params["lr"], cfg.search.epochs
    runs = []  # (Outcome, seed verdict)
    try:
        for index in range(cfg.search.seeds):
            trial_cfg = OmegaConf.merge(cfg, {"optim": {"lr": lr}, "seed": cfg.seed + index,
                                              "trainer": {"max_epochs": epochs}})
            trial_cfg.tracking.run_name = f"trial{trial.number}-{tracking.run_name(trial_cfg)}"
            pruning = TrialPruning(trial, step_offset=index * epochs)
            outcome = train.run(trial_cfg, parent_run_id=parent_id, callbacks=[pruning])
            runs.append((outcome, "diverged" if outcome.diverged else "pruned" if pruning.pruned
                         else "converged" if outcome.converged else "not_converged"))
            if runs[-1][1] != "converged":
                break  # one failing seed settles the trial
    except BaseException:
        study.tell(trial, state=TrialState.FAIL)
        raise
    stable = len(runs) == cfg.search.seeds and all(v == "converged" for _, v in runs)
    verdict = "stable" if stable else runs[-1][1]
    for outcome, seed_verdict in runs:
        tracking.set_tags(client, outcome.run_id, {"trial": trial.number, "seed_verdict": seed_verdict,
                                                   "trial_verdict": verdict})
    attrs = {"phase": phase, "verdict": verdict, "stable": stable, "seeds_run": len(runs),
             "epochs": sum(o.epochs for o, _ in runs), "seed_verdicts": [v for _, v in runs],
             "final_val_acc": [_finite(o.final_val_acc) for o, _ in runs],
             "mlflow_run_ids": [o.run_id for o, _ in runs]}
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    print(f"trial {trial.number} lr={lr:.4g} ({phase}): {verdict}, {len(runs)} seed(s), {attrs['epochs']} epoch(s)")
    if verdict == "pruned":
        return study.tell(trial, state=TrialState.PRUNED)
    return study.tell(trial, math.log10(lr) if stable else UNSTABLE)


def parent_run(cfg, study: optuna.Study) -> tuple:
    """The study's MLflow run: created once (a child of the sweep's run in a multirun) and reused when
    the study resumes; its child runs left RUNNING by a killed search are marked KILLED."""
    client, experiment_id = tracking.client_and_experiment(cfg.tracking)
    sweep_run_id = sweep.parent_run_id()
    tags = {"variant": variant_name(cfg.norm.kind, cfg.norm.placement), "study": study.study_name,
            "optuna_storage": studies.storage_url(cfg),
            **{f"search.{k}": v for k, v in cfg.search.items() if k not in ("pruner", "storage")}}
    run_id = study.user_attrs.get("mlflow_run_id")
    try:
        reusable = run_id is not None and client.get_run(run_id).info.experiment_id == experiment_id
    except MlflowException:
        reusable = False  # another tracking store than last time
    if reusable:
        tracking.reopen_run(client, run_id)
        if sweep_run_id:
            tracking.set_tags(client, run_id, {"mlflow.parentRunId": sweep_run_id, "sweep": sweep_run_id})
    else:
        # The learning rate is what the study searches: no single value belongs in the params.
        named = OmegaConf.merge(cfg, {"tracking": {"run_name": study.study_name}})
        _, run_id = tracking.start_run(named, sweep_run_id, extra_params={"optim.lr": "searched"})
        study.set_user_attr("mlflow_run_id", run_id)
    tracking.set_tags(client, run_id, tags)
    return client, run_id


def log_bracket(client, parent_id: str, summary: dict) -> None:
    """The bracket as parent-run metrics; step = trials, so their history shows it narrowing."""
    metrics = {k: summary[k] for k in ("max_stable_lr", "min_unstable_lr", "trials", "epochs_spent")}
    tracking.log_metrics(client, parent_id, {k: v for k, v in metrics.items() if v is not None}, step=summary["trials"])


def log_evidence(study: optuna.Study, cfg, client, parent_id: str, summary: dict) -> None:
    """Final val accuracy of every seed run against its rate (the plot) and the trials table."""
    points = []  # (lr, final val acc, 'stable' | 'unstable' | 'diverged')
    for t in study.get_trials(deepcopy=False, states=DECIDED):
        for acc, seed_verdict in zip(t.user_attrs["final_val_acc"], t.user_attrs["seed_verdicts"]):
            kind = "diverged" if seed_verdict == "diverged" else "stable" if t.user_attrs["stable"] else "unstable"
            points.append((t.params["lr"], acc if acc is not None else math.nan, kind))
    fig = plots.val_acc_vs_lr(points, cfg.dataset.converge_acc, summary["max_stable_lr"],
                              summary["min_unstable_lr"], f"{study.study_name}\n{textwrap.fill(studies.definition(cfg), 110)}")
    plots.log_figure(client, parent_id, fig, "plots/val_acc_vs_lr.png")
    client.log_text(parent_id, study.trials_dataframe().to_csv(index=False), "trials.csv")


def run(cfg) -> dict:
    """Run (or resume) the study of `cfg` until the boundary is bracketed; returns its summary."""
    check(cfg)
    study = studies.open_study(cfg)
    client, parent_id = parent_run(cfg, study)
    with tracking.ending(client, parent_id):
        ran = 0
        while (step := plan(cfg, study.get_trials(deepcopy=False, states=DECIDED)))[0] is not None:
            run_trial(cfg, study, *step, client, parent_id)
            ran += 1
            log_bracket(client, parent_id, studies.summarize(study, cfg))
        summary = studies.summarize(study, cfg)
        if not ran:  # a finished study run again, maybe into a new parent run
            log_bracket(client, parent_id, summary)
        log_evidence(study, cfg, client, parent_id, summary)
        client.log_dict(parent_id, summary, sweep.STUDY_SUMMARY_ARTIFACT)  # read by the sweep's report

    def show(lr):
        return "none" if lr is None else f"{lr:.4g}"

    print(f"{study.study_name}: max stable lr {show(summary['max_stable_lr'])}, min unstable "
          f"{show(summary['min_unstable_lr'])}, {summary['trials']} trials, {summary['epochs_spent']} epochs"
          f"{', NON-MONOTONE' if summary['non_monotone'] else ''}  [optuna-dashboard {summary['storage']}]")
    return summary


@hydra.main(version_base=None, config_path="../../conf", config_name="search")
def main(cfg) -> dict:
    with sweep.hydra_job(cfg.tracking):
        return run(cfg)


if __name__ == "__main__":
    main()
