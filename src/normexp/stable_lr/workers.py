"""The stable-LR search's trials, trained by `search.workers` processes that share one study
(normexp.search opens the study and its MLflow run, then calls `run`).

Each worker repeats: plan the next rate from the study's finished and running trials (bracket.plan:
k running rates cut the bracket into k + 1 parts), claim it as a RUNNING trial, train it on each seed
(train.run: one MLflow child run per seed, under the study's run), tell its verdict. Workers meet only
in the storage, so the same command on another machine with the same storage adds workers there.

- A claim is one write: the trial is created RUNNING with its rate, worker, lease and phase (no queue of
  enqueued trials to race on). Optuna's `ask` creates a trial first and sets its rate in a second write:
  between the two, the other workers saw a RUNNING trial without a rate, planned that rate again, and
  their check could miss it too; two workers then trained one rate. The workers of one machine plan
  and claim one at a time (a file lock), so they never plan the same rate; workers on other machines
  that claim a rate at the same moment both see both trials: the lower number keeps it, the other is FAIL.
- Optuna's heartbeat does not cover ask-and-tell trials, so each trial has a lease: its worker renews
  the user attr `lease_until` every tracking.heartbeat_s from a thread. A RUNNING trial whose lease ran
  out, or whose worker process on this machine has ended, is told FAIL by the next worker that plans,
  and its rate is planned again.
"""

import logging
import math
import multiprocessing
import multiprocessing.connection
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import signal
import socket
import sys
import threading
import time
from contextlib import contextmanager

import optuna
from omegaconf import OmegaConf
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from normexp import threads, train
from normexp.stable_lr import study as studies
from normexp.stable_lr.bracket import plan
from normexp.stable_lr.study import DECIDED, UNSTABLE
from normexp.tracking import commands, lifecycle, progress, run_names, sharing
from normexp.training.callbacks import TrialPruning
from normexp.config.schema import SearchRunConfig, TrackingConfig, TrainConfig

LEASE_ATTR, WORKER_ATTR = "lease_until", "worker"  # trial user attrs: unix seconds; "host:pid"
POLL_S = 2.0          # a worker with nothing to start looks at the study again this often
STOP_GRACE_S = 60     # an interrupted search waits this long for its workers to end their runs
log = logging.getLogger(__name__)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _process_gone(worker: str) -> bool:
    """Whether the worker "host:pid" ran on this machine and its process has ended."""
    host, _, pid = worker.rpartition(":")
    return host == socket.gethostname() and pid.isdigit() and _ended(int(pid))


def _ended(pid: int) -> bool:
    """Whether process `pid` of this machine has ended."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def fail_lost(study: optuna.Study, lease_s: float) -> list[int]:
    """Tell FAIL every RUNNING trial whose worker is gone: its lease ran out (a trial without one yet:
    lease_s after its start), or its process on this machine has ended. Returns their numbers."""
    now, lost = time.time(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        until = t.user_attrs.get(LEASE_ATTR, t.datetime_start.timestamp() + lease_s)
        if until < now or _process_gone(t.user_attrs.get(WORKER_ATTR, "")):
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)  # another worker may be first
            lost.append(t.number)
            progress.say(f"trial {t.number} (lr {t.params.get('lr', math.nan):.4g}) lost its worker "
                         f"{t.user_attrs.get(WORKER_ATTR, '?')}: FAIL, its rate is planned again")
    return lost


def claim(study: optuna.Study, cfg: SearchRunConfig, phase: str, lr: float | None) -> optuna.Trial | None:
    """A new RUNNING trial of `lr` (None: the TPE sampler's choice), leased to this worker; None when a
    trial with a lower number has the same rate (claimed by a worker on another machine at the same moment)."""
    attrs = {WORKER_ATTR: worker_id(), LEASE_ATTR: time.time() + cfg.tracking.lease_s, "phase": phase}
    distribution = FloatDistribution(cfg.search.lr_min, cfg.search.lr_max, log=True)
    if lr is None:
        trial = study.ask({"lr": distribution})  # TPE's rate: set after the trial exists, but no other worker plans it
        try:
            for key, value in attrs.items():
                trial.set_user_attr(key, value)
        except BaseException:
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            raise
    else:
        # The trial with its rate and attrs in one write (Study.add_trial's own call, which returns no id).
        template = optuna.trial.create_trial(state=TrialState.RUNNING, params={"lr": lr},
                                             distributions={"lr": distribution}, user_attrs=attrs)
        trial = optuna.Trial(study, study._storage.create_new_trial(study._study_id, template_trial=template))
    try:  # an interrupt from here on (Ctrl-C during these writes) leaves no rate claimed
        lr = trial.params["lr"]
        first = min(t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, *DECIDED))
                    if math.isclose(t.params.get("lr", math.nan), lr, rel_tol=1e-9))
        if first != trial.number:
            trial.set_user_attr("duplicate_of", first)
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            return None
    except BaseException:
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        raise
    return trial


@contextmanager
def leased(trial: optuna.Trial, tracking_cfg: TrackingConfig):
    """While inside, a thread renews the trial's lease every heartbeat_s."""
    stop = threading.Event()

    def renew():
        while not stop.wait(tracking_cfg.heartbeat_s):
            try:
                trial.set_user_attr(LEASE_ATTR, time.time() + tracking_cfg.lease_s)
            except Exception as error:  # a busy or unreachable storage: the next beat tries again
                log.warning("could not renew the lease of trial %d: %s", trial.number, error)

    thread = threading.Thread(target=renew, name=f"lease trial {trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None  # JSON user attrs: NaN would break the dashboard


def run_trial(cfg: SearchRunConfig, study: optuna.Study, trial: optuna.Trial, client, parent_id: str,
              label: str = "") -> None:
    """Train the trial's rate on each seed until one fails (one MLflow child run per seed), then tell."""
    lr, epochs = trial.params["lr"], cfg.search.epochs
    runs = []  # (Outcome, seed verdict)
    try:
        with leased(trial, cfg.tracking):
            for index in range(cfg.search.seeds):
                trial_cfg = OmegaConf.merge(cfg, {"optim": {"lr": lr}, "seed": cfg.seed + index,
                                                  "trainer": {"max_epochs": epochs}})
                trial_cfg.tracking.run_name = f"trial{trial.number}-{run_names.run_name(trial_cfg)}"
                pruning = TrialPruning(trial, step_offset=index * epochs)
                outcome = train.run(trial_cfg, parent_run_id=parent_id, callbacks=[pruning])
                runs.append((outcome, "diverged" if outcome.diverged else "pruned" if pruning.pruned
                             else "converged" if outcome.converged else "not_converged"))
                if runs[-1][1] != "converged":
                    break  # one failing seed settles the trial
    except BaseException:
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        raise
    stable = len(runs) == cfg.search.seeds and all(v == "converged" for _, v in runs)
    verdict = "stable" if stable else runs[-1][1]
    for outcome, seed_verdict in runs:
        lifecycle.set_tags(client, outcome.run_id, {"trial": trial.number, "seed_verdict": seed_verdict,
                                                   "trial_verdict": verdict})
    attrs = {"lr": lr, "verdict": verdict, "stable": stable, "seeds_run": len(runs),  # lr: the objective is its log
             "epochs": sum(o.epochs for o, _ in runs), "seed_verdicts": [v for _, v in runs],
             "final_val_acc": [_finite(o.final_val_acc) for o, _ in runs],
             "mlflow_run_ids": [o.run_id for o, _ in runs]}
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    if verdict == "pruned":
        told = study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
    else:
        told = study.tell(trial, math.log10(lr) if stable else UNSTABLE, skip_if_finished=True)
    lost = "" if told.state != TrialState.FAIL else "; but another worker had given it up as lost (FAIL)"
    progress.say(f"{label}trial {trial.number} lr={lr:.4g} ({trial.user_attrs['phase']}): {verdict}, "
                 f"{len(runs)} seed(s), {attrs['epochs']} epoch(s){lost}")


def work(cfg: TrainConfig, parent_id: str, label: str = "") -> None:
    """One worker: plan, claim, train and tell trials until the study is bracketed and none is running."""
    study = studies.open_study(cfg)
    client = lifecycle.client_and_experiment(cfg.tracking)[0]
    while True:
        with sharing.one_at_a_time(f"{studies.storage_url(cfg)}#{study.study_name}#plan"):  # this machine's workers
            fail_lost(study, cfg.tracking.lease_s)
            phase, lr, running = next_step(study, cfg)
            trial = claim(study, cfg, phase, lr) if phase is not None else None
        if phase is None:
            if not running:
                return
            time.sleep(POLL_S)  # their verdicts decide what comes next
            continue
        if trial is not None:
            run_trial(cfg, study, trial, client, parent_id, label)
            studies.log_bracket(client, parent_id, studies.summarize(study, cfg))


def next_step(study: optuna.Study, cfg: SearchRunConfig) -> tuple[str | None, float | None, list]:
    """bracket.plan's next (phase, lr) given the study's decided and running trials, and those running."""
    trials = study.get_trials(deepcopy=False)
    running = [(t.params["lr"], t.user_attrs.get("phase", "")) for t in trials
               if t.state == TrialState.RUNNING and "lr" in t.params]
    phase, lr = plan(cfg, [t for t in trials if t.state in DECIDED], running, cfg.search.workers)
    return phase, lr, running


def _worker_process(cfg: SearchRunConfig, parent_id: str, index: int, jobs_at_once: int) -> None:
    if signal.getsignal(signal.SIGINT) == signal.SIG_DFL:  # the forkserver's, set by forkserver_sigint
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if _ended(multiprocessing.parent_process().pid):
        return  # a SIGTERM ended the search while the forkserver was importing, before this worker was forked
    commands.freeze_imports()
    threads.use(jobs_at_once)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not once per worker: "Using an existing study"
    try:
        with commands.signals_raise(forward_to_workers=False):  # SIGINT, SIGTERM: the trial's run ends KILLED
            work(cfg, parent_id, label=f"[worker {index}] ")
    except KeyboardInterrupt:
        sys.exit(130)  # quietly: the launching process says it was interrupted


def run(cfg: SearchRunConfig, parent_id: str) -> None:
    """Train the study's trials until its bracket is found: in this process with one worker, else in
    search.workers processes of their own. A worker killed on the way loses only its trial (the others
    train its rate again); the search fails if the workers stop before the bracket is found."""
    if cfg.search.workers == 1:
        work(cfg, parent_id)
    else:
        _run_processes(cfg, parent_id)
    # Bracketed, and no trial runs anywhere: a run still RUNNING lost its worker (killed here or elsewhere).
    client = lifecycle.client_and_experiment(cfg.tracking)[0]
    for lost in lifecycle.running_children(client, parent_id):
        lifecycle.end_run(client, lost.info.run_id, "KILLED")


def _start_forkserver() -> None:
    """Starts the forkserver, unless it runs, with SIGINT blocked, which it keeps through exec: a Ctrl-C before it
    has imported forkserver_sigint waits until then. Only this thread blocks it, and only meanwhile."""
    multiprocessing.resource_tracker.ensure_running()  # first: starting it unblocks SIGINT (SIG_UNBLOCK)
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def _run_processes(cfg: SearchRunConfig, parent_id: str) -> None:
    jobs_at_once = threads.sweep_jobs_at_once() * cfg.search.workers  # a joblib sweep of searches: theirs too
    # Each worker is forked from a server process that imported the training stack once, before any
    # thread, lock or connection existed (a fork of this process would copy the store's connections and
    # threads): the workers start in a fraction of a second, where a spawned interpreter each imported
    # torch, Lightning and MLflow again (~6 s of CPU a worker, docs/performance.md).
    forkserver = multiprocessing.get_context("forkserver")
    forkserver.set_forkserver_preload(["normexp.stable_lr.forkserver_sigint", __name__])  # in this order
    _start_forkserver()
    processes = [forkserver.Process(target=_worker_process, args=(cfg, parent_id, index, jobs_at_once),
                                    name=f"search worker {index}") for index in range(cfg.search.workers)]
    for process in processes:
        process.start()
    try:
        pending = list(processes)
        while pending:  # reaped as each ends, so that the others see its process gone
            multiprocessing.connection.wait([p.sentinel for p in pending])
            pending = [p for p in pending if p.is_alive()]
    except BaseException:  # interrupted: a SIGTERM reached this process only; each worker ends its run KILLED
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join(STOP_GRACE_S)
            if process.is_alive():
                process.kill()
        raise
    if all(p.exitcode == 0 for p in processes):
        return
    codes = ", ".join(f"{p.name}: {p.exitcode}" for p in processes)
    phase, _, running = next_step(studies.open_study(cfg), cfg)
    if phase is not None or running:
        raise RuntimeError(f"the search's workers stopped before its bracket was found (exit codes {codes}); "
                           "see their errors above; the same command resumes the study")
    print(f"the others finished the work of the search workers that were stopped ({codes})", flush=True)
