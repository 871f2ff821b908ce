"""Maximum stable learning rate: one Optuna study per configuration, every trial trained by train.run.

A learning rate is *stable* when training for `search.epochs` epochs does not diverge and reaches
the data set's `converge_acc`, for every one of `search.seeds` seeds.

The strategy is normexp.stable_lr.bracket; the Optuna study, normexp.stable_lr.study; the trials are trained by
normexp.stable_lr.workers (search.workers processes sharing the study). Each rate is an Optuna trial with
objective log10(lr) when stable and UNSTABLE otherwise, maximized; an unstable rate stops early (at
the step it diverges, at its first failing seed).
"""

import math
import textwrap

import hydra
import optuna
from mlflow.exceptions import MlflowException
from omegaconf import OmegaConf

from normexp import train
from normexp.analysis import plots
from normexp.analysis.variants import variant_name
from normexp.errors import ConfigError
from normexp.stable_lr import study as studies, workers
from normexp.stable_lr.study import DECIDED
from normexp.tracking import commands, lifecycle, progress, sharing, stores, sweep
from normexp.config.schema import SearchRunConfig, TrainConfig


def check(cfg: SearchRunConfig) -> None:
    """Refuse bad input before any study or MLflow run exists: the values (normexp.config.schema.check, which
    train.prepare makes), the pruner and the Optuna storage."""
    if cfg.trainer.resume:
        raise ConfigError("trainer.resume=true is for normexp.train; a search resumes its study by itself: run the "
                          "same command again, without trainer.resume")
    train.prepare(cfg)  # the config's domains, the data, the model and the tracking store
    try:
        hydra.utils.instantiate(cfg.search.pruner)
    except Exception as error:  # an unknown class or argument: Hydra's InstantiationException says which
        raise ConfigError(f"search.pruner is refused: {str(error).strip().splitlines()[0]}; e.g. "
                          "search.pruner._target_=optuna.pruners.MedianPruner") from None
    stores.check_optuna(studies.storage_url(cfg))


def parent_run(cfg: SearchRunConfig, study: optuna.Study) -> tuple:
    """The study's MLflow run: created once (a child of the sweep's run in a multirun) and reused when
    the study resumes; its child runs left RUNNING by a killed search are marked KILLED."""
    client, experiment_id = lifecycle.client_and_experiment(cfg.tracking)
    sweep_run_id = sweep.parent_run_id()
    tags = {"variant": variant_name(cfg.norm.kind, cfg.norm.placement), "study": study.study_name,
            "optuna_storage": studies.storage_url(cfg),
            **{f"search.{k}": v for k, v in cfg.search.items() if k not in ("pruner", "storage")}}
    run_id = study.user_attrs.get("mlflow_run_id")
    try:
        reusable = run_id is not None and client.get_run(run_id).info.experiment_id == experiment_id
    except MlflowException:
        reusable = False  # another tracking store than last time
    if reusable and client.get_run(run_id).info.status == "RUNNING":
        # Another search on the study now (this machine or another), or one killed before its lease ran
        # out: share the run; runs its killed workers left RUNNING end KILLED when the study is done.
        lifecycle.join_run(client, run_id, cfg.tracking)
    elif reusable:
        lifecycle.reopen_run(client, run_id, cfg.tracking)
        if sweep_run_id:
            lifecycle.set_tags(client, run_id, {"mlflow.parentRunId": sweep_run_id, "sweep": sweep_run_id})
    else:
        # The learning rate is what the study searches: no single value belongs in the params.
        named = OmegaConf.merge(cfg, {"tracking": {"run_name": study.study_name}})
        _, run_id = lifecycle.start_run(named, sweep_run_id, extra_params={"optim.lr": "searched"})
        study.set_user_attr("mlflow_run_id", run_id)
    lifecycle.set_tags(client, run_id, tags)
    return client, run_id


def log_evidence(study: optuna.Study, cfg: TrainConfig, client, parent_id: str, summary: dict) -> None:
    """Final val accuracy of every seed run against its rate (the plot) and the trials table."""
    points = []  # (lr, final val acc, 'stable' | 'unstable' | 'diverged')
    for t in study.get_trials(deepcopy=False, states=DECIDED):
        for acc, seed_verdict in zip(t.user_attrs["final_val_acc"], t.user_attrs["seed_verdicts"]):
            kind = "diverged" if seed_verdict == "diverged" else "stable" if t.user_attrs["stable"] else "unstable"
            points.append((t.params["lr"], acc if acc is not None else math.nan, kind))
    title = f"{study.study_name}\n{textwrap.fill(studies.definition(cfg), 110)}"
    fig = plots.val_acc_vs_lr(points, cfg.dataset.converge_acc, summary["max_stable_lr"], summary["min_unstable_lr"], title)
    plots.log_figure(client, parent_id, fig, "plots/val_acc_vs_lr.png")
    client.log_text(parent_id, study.trials_dataframe().to_csv(index=False), "trials.csv")


def run(cfg: TrainConfig) -> dict:
    """Run (or resume) the study of `cfg` until the boundary is bracketed; returns its summary."""
    check(cfg)
    lifecycle.connect(cfg.tracking)  # first, runs whose process died end KILLED
    # The same command started twice on this machine at once: one creates the study's run, the other joins it.
    with sharing.one_at_a_time(f"{studies.storage_url(cfg)}#{studies.study_name(cfg)}"):
        study = studies.open_study(cfg)
        workers.fail_lost(study, cfg.tracking.lease_s)  # trials of a killed search: FAIL, their rates tried again
        client, parent_id = parent_run(cfg, study)
    with lifecycle.ending(client, parent_id):
        workers.run(cfg, parent_id)  # until the bracket is found
        summary = studies.summarize(study, cfg)
        studies.log_bracket(client, parent_id, summary)
        log_evidence(study, cfg, client, parent_id, summary)

    def show(lr):
        return "none" if lr is None else f"{lr:.4g}"

    progress.say(f"{sweep.job_label()}{study.study_name}: max stable lr {show(summary['max_stable_lr'])}, "
                 f"min unstable {show(summary['min_unstable_lr'])}, {summary['trials']} trials, "
                 f"{summary['epochs_spent']} epochs{', NON-MONOTONE' if summary['non_monotone'] else ''}  "
                 f"[optuna-dashboard {summary['storage']}]")
    return summary


@commands.entry_point
@sweep.reports_failed_sweeps
@hydra.main(version_base=None, config_path="../../conf", config_name="search")
def main(cfg: TrainConfig) -> dict:
    with sweep.hydra_job(cfg.tracking):
        return run(cfg)


if __name__ == "__main__":
    main()
