"""normexp.report on a real sweep recorded in a temporary SQLite store: the tables' numbers
against the runs' own metrics, diverged runs marked "no", the report on the parent run, the CLI."""

import csv
import math
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from normexp import report
from normexp.report import command as report_command
from normexp.sweep_report import SweepReport
from normexp.tracking.sweep import PARENT_RUN_FILE
from tests import forked

from .conftest import CONF_DIR, NO_MODEL

# Adam at lr 1.0 makes the plain MLP diverge on digits within a few steps (every seed tried); BN survives it.
LRS = ("0.01", "1.0")
# Digits-sized models train several times faster on one thread than on two that wait for each
# other on a 2-core machine busy with other work.


def run_sweep(folder: Path) -> None:
    """The lr_tolerance preset shrunk on digits: none/bn x 2 learning rates x 2 seeds, 3 epochs, one multirun
    in a store of its own in `folder`, its stdout in folder/stdout.txt."""
    done = forked.run(
        [sys.executable, "-m", "normexp.train", "-m", "experiment=lr_tolerance", "dataset=digits",
         f"optim.lr={','.join(LRS)}", "seed=0,1", "trainer.max_epochs=3", "trainer.progress_bar=false", NO_MODEL,
         f"tracking.uri=sqlite:///{folder}/mlflow.db", "tracking.experiment=report_sweep",
         f"hydra.sweep.dir={folder}/sweep"],
        cwd=folder, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (folder / "stdout.txt").write_text(done.stdout)


@pytest.fixture(scope="module")
def sweep(built_once):
    """run_sweep, once for all the workers (a worker that runs this module's tests in two stretches would
    otherwise build it twice): (client, parent run id, child runs, the multirun's stdout). Tests only read it."""
    folder = built_once("report-sweep", run_sweep)
    client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
    parent_id = (folder / "sweep" / PARENT_RUN_FILE).read_text()
    experiment_id = client.get_run(parent_id).info.experiment_id
    children = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    return client, parent_id, children, (folder / "stdout.txt").read_text()


def by_variant(children) -> dict[tuple[str, str], list]:
    groups = {}
    for run in children:
        groups.setdefault((run.data.tags["norm"], run.data.params["optim.lr"]), []).append(run)
    return groups


def outcome(runs, key: str) -> list[float]:
    return [run.data.metrics[f"outcome/{key}"] for run in runs if f"outcome/{key}" in run.data.metrics]


def table(answer, name: str):
    return next(t for t in answer.tables if t.name == name)


def row(found, *prefix: str) -> list[str]:
    return next(r for r in found.rows if r[: len(prefix)] == list(prefix))


def test_every_job_finishes_and_the_diverged_runs_are_marked_no(sweep):
    client, parent_id, children, _ = sweep
    assert len(children) == 8 and {r.info.status for r in children} == {"FINISHED"}
    assert client.get_run(parent_id).info.status == "FINISHED"
    groups = by_variant(children)
    diverged = groups["none", "1.0"]
    assert all(r.data.tags["diverged"] == "true" and r.data.tags["converged"] == "false" for r in diverged)
    steps = [r.data.tags["diverged_at_step"] for r in diverged]

    lrs = table(report.build_report(client, parent_id), "lr_tolerance")
    assert lrs.header == ["lr", "norm=none", "norm=bn"]
    assert row(lrs, "1.0")[1] in (f"no 0/2 (diverged @ step {', '.join(steps)})",
                                  f"no 0/2 (diverged @ step {', '.join(reversed(steps))})")
    for lr in LRS:
        for column, norm in ((1, "none"), (2, "bn")):
            runs = groups[norm, lr]
            expected = "yes" if all(r.data.tags["converged"] == "true" for r in runs) else "no"
            assert row(lrs, lr)[column].startswith(expected + " ")
    # The largest lr at which every seed converged, per norm.
    for column, norm in ((1, "none"), (2, "bn")):
        converging = [float(lr) for lr in LRS if all(r.data.tags["converged"] == "true" for r in groups[norm, lr])]
        assert row(lrs, "**max converging lr**")[column] == (f"**{max(converging):g}**" if converging else "**none**")


def test_convergence_table_numbers_are_the_runs_metrics(sweep):
    client, parent_id, children, _ = sweep
    convergence = table(report.build_report(client, parent_id), "convergence")
    assert convergence.header[:3] == ["norm", "lr", "seeds"]  # what varies names the variant; the seed does not
    records = {(r["norm"], r["lr"]): r for r in convergence.records}
    assert set(records) == set(by_variant(children))
    for (norm, lr), runs in by_variant(children).items():
        record = records[norm, lr]
        assert record["seeds"] == 2
        assert record["converged"] == sum(r.data.tags["converged"] == "true" for r in runs)
        assert record["diverged"] == sum(r.data.tags["diverged"] == "true" for r in runs)
        for key in ("final_val_acc", "best_val_acc", "epoch_s", "train_val_gap"):
            values = outcome(runs, key)
            assert record[f"{key}_mean"] == pytest.approx(statistics.fmean(values))
            assert record[f"{key}_std"] == pytest.approx(statistics.stdev(values))
        reached = outcome(runs, "epochs_to_target")
        assert record["reached_target"] == len(reached)
        if reached:
            assert record["epochs_to_target_mean"] == pytest.approx(statistics.fmean(reached))
        else:
            assert math.isnan(record["epochs_to_target_mean"])
        final = outcome(runs, "final_val_acc")
        shown = row(convergence, norm, lr)
        assert shown[5] == f"{statistics.fmean(final):.3f} ± {statistics.stdev(final):.3f}"


def per_seed(runs, key: str) -> dict[str, float]:
    return {run.data.params["seed"]: run.data.metrics.get(f"outcome/{key}") for run in runs}


def test_versus_none_pairs_the_seeds_for_the_speedup_and_accuracy_difference(sweep):
    client, parent_id, children, _ = sweep
    versus = table(report.build_report(client, parent_id), "versus_none")
    groups = by_variant(children)
    for record in versus.records:
        plain, bn = groups["none", record["lr"]], groups["bn", record["lr"]]
        acc_none, acc_bn = per_seed(plain, "final_val_acc"), per_seed(bn, "final_val_acc")
        differences = [acc_bn[seed] - acc_none[seed] for seed in acc_bn]
        assert record["pairs"] == 2 and record["difference_mean"] == pytest.approx(statistics.fmean(differences))
        assert row(versus, record["lr"], "bn")[-2].startswith(f"{statistics.fmean(differences):+.3f} ± ")
        ett_none, ett_bn = per_seed(plain, "epochs_to_target"), per_seed(bn, "epochs_to_target")
        # results.speedups' rule: none never reaching the target counts as the 3-epoch budget; bn never reaching
        # it leaves the seed out
        speedups = [(ett_none[s] or 3) / ett_bn[s] for s in ett_bn if ett_bn[s] is not None]
        if speedups:
            assert record["speedup_geomean"] == pytest.approx(statistics.geometric_mean(speedups))
        else:
            assert math.isnan(record["speedup_geomean"])
    assert {r["lr"] for r in versus.records} == set(LRS)


def test_overlay_figures_plot_the_mean_histories_of_the_seeds(sweep):
    client, parent_id, children, _ = sweep
    answer = report.build_report(client, parent_id)
    try:
        assert set(answer.figures) == {"curves", "accuracy_vs_lr", "gradient_norm_per_layer"}
        # The last epoch's gradient norm per block, input side first, mean over the seeds.
        gradients = {line.get_label(): line for line in answer.figures["gradient_norm_per_layer"].axes[0].lines}
        runs = by_variant(children)["bn", "0.01"]
        np.testing.assert_allclose(gradients["norm=bn, lr=0.01"].get_ydata(), [
            np.mean([r.data.metrics[f"grad/hidden{i}/norm"] for r in runs]) for i in range(1, 5)])
        loss_ax, acc_ax = answer.figures["curves"].axes
        for ax, key in ((loss_ax, "train/loss"), (acc_ax, "val/acc")):
            lines = {line.get_label(): line for line in ax.lines}
            runs = by_variant(children)["bn", "0.01"]
            histories = [[m.value for m in sorted(client.get_metric_history(r.info.run_id, key), key=lambda m: m.step)]
                         for r in runs]
            np.testing.assert_allclose(lines["norm=bn, lr=0.01"].get_ydata(), np.mean(histories, axis=0))
    finally:
        answer.close()


def test_the_parent_run_carries_the_report_and_the_sweep_printed_it(sweep):
    client, parent_id, _, stdout = sweep
    artifacts = {a.path for a in client.list_artifacts(parent_id, "report")}
    assert {f"report/{name}" for name in ("report.md", "convergence.csv", "versus_none.csv", "lr_tolerance.csv",
                                          "curves.png", "accuracy_vs_lr.png")} <= artifacts
    markdown = client.download_artifacts(parent_id, "report/report.md")
    with open(markdown) as f:
        logged = f.read()
    assert client.get_run(parent_id).data.tags["mlflow.note.content"] == logged
    assert "### Learning-rate tolerance" in logged and "### Learning-rate tolerance" in stdout


def test_cli_prints_and_saves_markdown_csv_and_png(sweep, tmp_path, capsys):
    client, parent_id, _, _ = sweep
    written = report_command.main(["--parent", parent_id, "--tracking-uri", client.tracking_uri, "--out", str(tmp_path)])
    assert {p.name for p in written} >= {"report.md", "convergence.md", "convergence.csv", "lr_tolerance.csv",
                                         "curves.png", "accuracy_vs_lr.png"}
    assert all(p.stat().st_size > 0 for p in written)
    assert "| **max converging lr** |" in capsys.readouterr().out
    with open(tmp_path / "convergence.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {(r["norm"], r["lr"]) for r in rows} == {(n, lr) for n in ("none", "bn") for lr in LRS}


def test_cli_experiment_and_filter_report_only_the_matching_runs(sweep, tmp_path):
    client, _, _, _ = sweep
    report_command.main(["--experiment", "report_sweep", "--filter", "tags.norm = 'bn'",
                         "--tracking-uri", client.tracking_uri, "--out", str(tmp_path)])
    with open(tmp_path / "convergence.csv") as f:
        rows = list(csv.DictReader(f))
    # Only BN runs: the norm no longer varies, so it is no column and there is no comparison with none.
    assert sorted(r["lr"] for r in rows) == sorted(LRS) and "norm" not in rows[0]
    assert not (tmp_path / "versus_none.csv").exists()
    assert "norm=bn" in (tmp_path / "report.md").read_text()  # among the settings every run shares


@pytest.mark.parametrize("args, message", [
    (["--parent", "0123456789abcdef"], "no run '0123456789abcdef'"),
    (["--experiment", "no_such_experiment"], "no experiment 'no_such_experiment'"),
    (["--experiment", "report_sweep", "--filter", "tags.norm = "], "is not an MLflow filter"),
])
def test_cli_refuses_bad_input_with_the_bad_value(sweep, args, message, capsys):
    client, _, _, _ = sweep
    with pytest.raises(SystemExit) as exit_info:
        report_command.main([*args, "--tracking-uri", client.tracking_uri])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_compare_activations_puts_one_layer_of_two_runs_side_by_side(sweep, tmp_path, capsys):
    client, _, children, _ = sweep
    groups = by_variant(children)
    runs = [next(r.info.run_id for r in groups[norm, "0.01"] if r.data.tags["seed"] == "0") for norm in ("bn", "none")]
    written = report_command.main(["--compare-activations", *runs, "--layer", "hidden2",
                                   "--tracking-uri", client.tracking_uri, "--out", str(tmp_path)])
    assert written == [tmp_path / "activations_hidden2.png"] and written[0].stat().st_size > 0
    with pytest.raises(SystemExit):
        report_command.main(["--compare-activations", *runs, "--layer", "conv1", "--tracking-uri", client.tracking_uri])
    assert "no such layer; it has hidden1, hidden2, hidden3, hidden4" in capsys.readouterr().err


def test_a_failing_report_still_finishes_the_parent_run(tmp_path, tracking_uri, experiment_name, experiment_runs):
    with initialize_config_dir(str(CONF_DIR), version_base=None):
        cfg = compose("train", overrides=[f"tracking.uri={tracking_uri}", f"tracking.experiment={experiment_name}",
                                          f"hydra.sweep.dir={tmp_path}"], return_hydra_config=True)
    callback = SweepReport()
    callback.on_multirun_start(cfg)
    callback.on_multirun_end(cfg)  # no job ran, so there is nothing to report on
    [parent] = experiment_runs()
    assert parent.info.status == "FINISHED"
    assert "no finished training runs" in parent.data.tags["report_error"]
