"""Maximum stable learning rate: one Optuna study per configuration, every trial trained by train.run.

A learning rate is *stable* when training for `search.epochs` epochs does not diverge and reaches
the data set's `converge_acc`, for every one of `search.seeds` seeds.

How rates are chosen. Above the rates that are merely too slow, stability is (nearly) monotone in
the learning rate, so the boundary is bracketed rather than sampled: walk a coarse log grid down
from `lr_max` (factor `grid_factor`) to the first stable rate, then bisect the bracket (max stable,
min unstable above it) in log space until its ratio is <= `resolution`. That costs about log2(grid
points) trials where a log grid of the same resolution costs every point, and an unstable rate
stops early (at the step it diverges, at its first failing seed). Each rate is an Optuna trial
(enqueued, then asked) with objective log10(lr) when stable and UNSTABLE otherwise, maximized: the
best trial is the max stable rate, and the TPE sampler that proposes `refine_trials` more rates
after the bisection learns where the stable high rates are. The next rate depends only on the
finished trials in the storage, so re-running the same search resumes its study.
"""

import math
import textwrap
from dataclasses import dataclass
from pathlib import Path

import hydra
import optuna
import pytorch_lightning as pl
from mlflow.exceptions import MlflowException
from omegaconf import OmegaConf
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from normexp import plots, tables, tracking, train
from normexp.errors import ConfigError

UNSTABLE = -10.0  # objective of an unstable rate: below log10 of any rate worth searching
DECIDED = (TrialState.COMPLETE, TrialState.PRUNED)  # trials with a verdict


def check(cfg) -> None:
    """Refuse bad input before any study or MLflow run exists."""
    s = cfg.search
    if not 0 < s.lr_min < s.lr_max:
        raise ConfigError(f"search.lr_min={s.lr_min}, search.lr_max={s.lr_max}: need 0 < lr_min < lr_max; "
                          "e.g. search.lr_min=1e-4 search.lr_max=10")
    for key, low in (("seeds", 1), ("epochs", 1), ("refine_trials", 0)):
        if s[key] < low:
            raise ConfigError(f"search.{key}={s[key]} must be >= {low}")
    for key in ("resolution", "grid_factor"):
        if not s[key] > 1:
            raise ConfigError(f"search.{key}={s[key]} must be > 1 (a ratio of learning rates); e.g. search.{key}=1.25")
    train.prepare(cfg)  # the rest is refused by the checks train.run makes before its run exists


def variant(cfg) -> str:
    return cfg.norm.kind + ("-post" if cfg.norm.placement == "post" else "")


def group(cfg) -> str:
    """What a study name says besides the norm: a cross-variant table compares a group's studies with none's."""
    return f"{cfg.dataset.name}/{cfg.model.name}/{cfg.optim.name}-bs{cfg.dataset.batch_size}"


def study_name(cfg) -> str:
    """e.g. stable-lr/digits/mlp/bn/adam-bs64."""
    return cfg.search.study_name or (f"stable-lr/{cfg.dataset.name}/{cfg.model.name}/{variant(cfg)}/"
                                     f"{cfg.optim.name}-bs{cfg.dataset.batch_size}")


def storage_url(cfg) -> str:
    return cfg.search.storage or f"sqlite:///{tracking.PROJECT_ROOT / 'optuna.db'}"


def definition(cfg) -> str:
    seeds = f"{cfg.search.seeds} seed(s) {cfg.seed}..{cfg.seed + cfg.search.seeds - 1}"
    return (f"stable: training {cfg.search.epochs} epoch(s) does not diverge (loss finite and <= "
            f"{cfg.divergence.factor:g} x first-step loss) and reaches val accuracy {cfg.dataset.converge_acc:g} "
            f"on {cfg.dataset.name}, for each of {seeds}")


def fingerprint(cfg) -> dict[str, str]:
    """The settings a verdict depends on (all but the rate and the search strategy); a resumed study keeps them."""
    flat = tracking.flat_params(cfg)
    skip = ("tracking.", "search.", "probes.", "trainer.progress_bar", "trainer.max_epochs", "optim.lr")
    return {k: v for k, v in flat.items() if not k.startswith(skip)} | {
        k: flat[k] for k in ("search.epochs", "search.seeds")}


def open_study(cfg) -> optuna.Study:
    """Create the study, or load it to resume; trials of a killed search (RUNNING, WAITING) become FAIL
    and their rates are tried again. One search process per study at a time."""
    name, url = study_name(cfg), storage_url(cfg)
    study = optuna.create_study(storage=url, study_name=name, direction="maximize", load_if_exists=True,
                                sampler=optuna.samplers.TPESampler(seed=cfg.seed),
                                pruner=hydra.utils.instantiate(cfg.search.pruner))
    wanted, stored = fingerprint(cfg), study.user_attrs.get("config")
    if stored is None:
        study.set_user_attr("config", wanted)
        study.set_user_attr("definition", definition(cfg))
    elif stored != wanted:
        diff = ", ".join(f"{k}: {stored.get(k)} -> {wanted.get(k)}"
                         for k in sorted(stored.keys() | wanted.keys()) if stored.get(k) != wanted.get(k))
        raise ConfigError(f"study '{name}' in {url} was run with other settings ({diff}); "
                          "use the same settings, or name a new study with search.study_name=...")
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL)
    for _ in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        study.tell(study.ask(), state=TrialState.FAIL)  # ask() pops the waiting trial
    return study


@dataclass
class Bracket:
    max_stable_lr: float | None
    min_unstable_lr: float | None        # the lowest unstable rate above max_stable_lr
    non_monotone_lrs: list[float]        # unstable rates at or below max_stable_lr


def bracket(points: list[tuple[float, bool]]) -> Bracket:
    """points: (lr, stable) of every finished trial."""
    best = max((lr for lr, stable in points if stable), default=None)
    if best is None:
        return Bracket(None, None, [])
    unstable = [lr for lr, stable in points if not stable]
    return Bracket(best, min((lr for lr in unstable if lr > best), default=None),
                   sorted(lr for lr in unstable if lr <= best))


def coarse_grid(s) -> list[float]:
    """lr_max, lr_max / grid_factor, ... down to lr_min (included)."""
    count = math.floor(math.log(s.lr_max / s.lr_min) / math.log(s.grid_factor) + 1e-9)
    grid = [s.lr_max / s.grid_factor**k for k in range(count + 1)]
    return grid if math.isclose(grid[-1], s.lr_min) else grid + [s.lr_min]


def plan(cfg, trials: list) -> tuple[str | None, float | None]:
    """(phase, lr) of the next trial: ('grid' | 'bisect', lr), ('refine', None) for TPE, or (None, None): done."""
    points = [(t.params["lr"], t.user_attrs["stable"]) for t in trials]
    b = bracket(points)

    def new(lr):
        return not any(math.isclose(lr, tried, rel_tol=1e-9) for tried, _ in points)

    grid = coarse_grid(cfg.search)
    if b.max_stable_lr is None:  # walk down until a rate is stable
        lr = next((lr for lr in grid if new(lr)), None)
    elif b.min_unstable_lr is None:  # stable so far only: go up (a resumed or refined study)
        lr = next((lr for lr in reversed(grid) if lr > b.max_stable_lr and new(lr)), None)
    elif b.min_unstable_lr / b.max_stable_lr > cfg.search.resolution * (1 + 1e-9):  # not float noise
        return "bisect", math.sqrt(b.max_stable_lr * b.min_unstable_lr)
    else:
        lr = None
    if lr is not None:
        return "grid", lr
    refined = sum(t.user_attrs.get("phase") == "refine" for t in trials)
    return ("refine", None) if refined < cfg.search.refine_trials else (None, None)


class TrialPruning(pl.Callback):
    """Reports each epoch's val/acc to the Optuna trial (step = seed index x epochs + epoch) and, when
    the study's pruner says so, stops training the way DivergenceGuard does: `pruned` becomes True
    and the MLflow run still ends FINISHED (raising optuna.TrialPruned inside fit would end it FAILED)."""

    def __init__(self, trial: optuna.Trial, step_offset: int):
        self.trial, self.step_offset, self.pruned = trial, step_offset, False

    def on_train_epoch_end(self, trainer, pl_module):
        value = trainer.callback_metrics.get("val/acc")  # validation ran inside this epoch
        if value is None or not math.isfinite(float(value)):
            return
        self.trial.report(float(value), self.step_offset + trainer.current_epoch + 1)
        if self.trial.should_prune():
            self.pruned, trainer.should_stop = True, True


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
    sweep = tracking.sweep_parent_run_id()
    tags = {"variant": variant(cfg), "study": study.study_name, "optuna_storage": storage_url(cfg),
            **{f"search.{k}": v for k, v in cfg.search.items() if k not in ("pruner", "storage")}}
    run_id = study.user_attrs.get("mlflow_run_id")
    try:
        reusable = run_id is not None and client.get_run(run_id).info.experiment_id == experiment_id
    except MlflowException:
        reusable = False  # another tracking store than last time
    if reusable:
        client.update_run(run_id, status="RUNNING")
        stale = f"tags.mlflow.parentRunId = '{run_id}' and attributes.status = 'RUNNING'"
        for child in client.search_runs([experiment_id], stale):
            client.set_terminated(child.info.run_id, "KILLED")
        if sweep:
            tracking.set_tags(client, run_id, {"mlflow.parentRunId": sweep, "sweep": sweep})
    else:
        # The learning rate is what the study searches: no single value belongs in the params.
        named = OmegaConf.merge(cfg, {"optim": {"lr": "searched"}, "tracking": {"run_name": study.study_name}})
        _, run_id = tracking.start_run(named, sweep)
        study.set_user_attr("mlflow_run_id", run_id)
    tracking.set_tags(client, run_id, tags)
    return client, run_id


def summarize(study: optuna.Study, cfg) -> dict:
    """The bracket so far, also stored as the study's user attrs."""
    trials = study.get_trials(deepcopy=False, states=DECIDED)
    b = bracket([(t.params["lr"], t.user_attrs["stable"]) for t in trials])
    attrs = {"max_stable_lr": b.max_stable_lr, "min_unstable_lr": b.min_unstable_lr,
             "non_monotone": bool(b.non_monotone_lrs), "non_monotone_lrs": b.non_monotone_lrs,
             "trials": len(trials), "epochs_spent": sum(t.user_attrs["epochs"] for t in trials)}
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    return attrs | {"study": study.study_name, "group": group(cfg), "variant": variant(cfg),
                    "definition": definition(cfg), "storage": storage_url(cfg)}


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
                              summary["min_unstable_lr"], f"{study.study_name}\n{textwrap.fill(definition(cfg), 110)}")
    plots.log_figure(client, parent_id, fig, "plots/val_acc_vs_lr.png")
    client.log_text(parent_id, study.trials_dataframe().to_csv(index=False), "trials.csv")


def run(cfg) -> dict:
    """Run (or resume) the study of `cfg` until the boundary is bracketed; returns its summary."""
    check(cfg)
    study = open_study(cfg)
    client, parent_id = parent_run(cfg, study)
    try:
        ran = 0
        while (step := plan(cfg, study.get_trials(deepcopy=False, states=DECIDED)))[0] is not None:
            run_trial(cfg, study, *step, client, parent_id)
            ran += 1
            log_bracket(client, parent_id, summarize(study, cfg))
        summary = summarize(study, cfg)
        if not ran:  # a finished study run again, maybe into a new parent run
            log_bracket(client, parent_id, summary)
        log_evidence(study, cfg, client, parent_id, summary)
    except BaseException as error:  # Lightning turns Ctrl-C into SystemExit
        client.set_terminated(parent_id, "KILLED" if isinstance(error, (KeyboardInterrupt, SystemExit)) else "FAILED")
        raise
    client.set_terminated(parent_id, "FINISHED")
    def show(lr):
        return "none" if lr is None else f"{lr:.4g}"

    print(f"{study.study_name}: max stable lr {show(summary['max_stable_lr'])}, min unstable "
          f"{show(summary['min_unstable_lr'])}, {summary['trials']} trials, {summary['epochs_spent']} epochs"
          f"{', NON-MONOTONE' if summary['non_monotone'] else ''}  [optuna-dashboard {summary['storage']}]")
    return summary


def table(summaries: list[dict]) -> tables.Table:
    """One row per study; ratio_to_none = its max stable rate / that of norm=none in the same group."""
    none = {s["group"]: s["max_stable_lr"] for s in summaries if s["variant"] == "none"}
    records = [{"variant": s["variant"], "group": s["group"], "max_stable_lr": s["max_stable_lr"],
                "min_unstable_lr": s["min_unstable_lr"],
                "ratio_to_none": s["max_stable_lr"] / none[s["group"]]
                if s["max_stable_lr"] and none.get(s["group"]) else None,
                "trials": s["trials"], "epochs_spent": s["epochs_spent"], "non_monotone": s["non_monotone"],
                "study": s["study"]} for s in summaries]
    rows = [["-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v) for v in r.values()]
            for r in records]
    notes = sorted({s["definition"] for s in summaries})
    return tables.Table("stable_lr", "Maximum stable learning rate per variant", list(records[0]), rows, records, notes)


class CrossVariantReport(tracking.SweepParentRun):
    """Hydra callback of `python -m normexp.search -m norm=...` (in place of train.yaml's
    sweep_parent_run, whose report reads training runs): the same parent run, every study's run its
    child; when the multirun ends, the studies side by side (stable_lr.md, stable_lr.csv,
    plots/stable_lr.png) on that parent run and in the sweep folder."""

    def on_multirun_start(self, config, **kwargs) -> None:
        super().on_multirun_start(config, **kwargs)
        self.summaries = []

    def on_job_end(self, config, job_return, **kwargs) -> None:
        super().on_job_end(config, job_return, **kwargs)
        if job_return.status.name == "COMPLETED":
            self.summaries.append(job_return.return_value)

    def on_multirun_end(self, config, **kwargs) -> None:
        if self.failed:  # already marked FAILED by on_job_end
            return
        try:
            result = table(self.summaries)
            for suffix, text in ((".md", result.markdown), (".csv", result.csv)):
                (Path(config.hydra.sweep.dir) / f"{result.name}{suffix}").write_text(text)
                self.client.log_text(self.run_id, text, f"{result.name}{suffix}")
            print(result.markdown)
            plots.log_figure(self.client, self.run_id, plots.max_stable_lr_bars(result.records), "plots/stable_lr.png")
            unique = len({r["variant"] for r in result.records}) == len(result.records)
            tracking.log_metrics(self.client, self.run_id, {
                f"max_stable_lr/{r['variant'] if unique else r['study'].removeprefix('stable-lr/')}": r["max_stable_lr"]
                for r in result.records if r["max_stable_lr"] is not None})
        finally:
            self.client.set_terminated(self.run_id, "FINISHED")


@hydra.main(version_base=None, config_path="../../conf", config_name="search")
def main(cfg) -> dict:
    with tracking.hydra_job(cfg.tracking):
        return run(cfg)


if __name__ == "__main__":
    main()
