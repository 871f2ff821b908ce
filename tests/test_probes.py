import csv

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from normexp import data, train
from normexp.analysis import histograms
from normexp.errors import ConfigError

FIGURES = {"plots/gamma_beta.png", "plots/activation_evolution.png", "plots/before_after_norm.png"}
TABLES = {"probes/norm_params.md", "probes/norm_params.csv", "probes/param_counts.md", "probes/param_counts.csv"}
NORM_KEYS = ("gamma_mean", "gamma_std", "beta_mean", "beta_std", "running_mean_mean", "running_var_mean",
             "train_eval_gap")
ACT_KEYS = ("pre_mean", "pre_std", "post_norm_mean", "post_norm_std", "dead_frac")


class CaptureModel(pl.Callback):
    def on_fit_end(self, trainer, pl_module):
        self.model = pl_module.model


def artifact_paths(client, run_id, path=None) -> set[str]:
    paths = set()
    for item in client.list_artifacts(run_id, path):
        paths |= artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return paths


def read_csv(client, run_id, path, tmp_path) -> list[dict]:
    with open(client.download_artifacts(run_id, path, str(tmp_path))) as f:
        return list(csv.DictReader(f))


def last(client, run_id, key) -> float:
    history = client.get_metric_history(run_id, key)
    return max(history, key=lambda m: m.step).value


def probe_metrics(run) -> set[str]:
    return {k for k in run.data.metrics if k.startswith(("bn/", "act/"))}


def test_bn_run_logs_metrics_tables_and_figures_that_match_the_model(compose_cfg, mlflow_client, tmp_path):
    cfg = compose_cfg("norm=bn")
    capture = CaptureModel()
    outcome = train.run(cfg, callbacks=[capture])
    model, run_id = capture.model.eval(), outcome.run_id
    layers = ["hidden1", "hidden2", "hidden3", "hidden4"]

    # Every metric, once per epoch, at step = the 1-based epoch.
    for layer in layers:
        for key in [f"bn/{layer}/{k}" for k in NORM_KEYS] + [f"act/{layer}/{k}" for k in ACT_KEYS]:
            assert [m.step for m in mlflow_client.get_metric_history(run_id, key)] == [1, 2], key

    # The last epoch's norm metrics are the trained model's parameters (population std over features).
    for layer in layers:
        norm = getattr(model, layer).norm
        gamma, beta = norm.weight.detach().numpy(), norm.bias.detach().numpy()
        expected = {"gamma_mean": gamma.mean(), "gamma_std": gamma.std(), "beta_mean": beta.mean(),
                    "beta_std": beta.std(), "running_mean_mean": norm.running_mean.mean().item(),
                    "running_var_mean": norm.running_var.mean().item()}
        for key, value in expected.items():
            assert last(mlflow_client, run_id, f"bn/{layer}/{key}") == pytest.approx(value, rel=1e-5, abs=1e-7)
    assert last(mlflow_client, run_id, "bn/hidden4/gamma_std") > 0  # trained, no longer all ones

    # Activation statistics: the eval-mode pre-activation of the first 256 validation examples (all 229 here).
    probe_x = data.load(cfg.dataset, cfg.seed).val.x[: cfg.probes.probe_batch_size]
    with torch.no_grad():
        linear = model.hidden1.layer(model.flatten(probe_x))  # (229, 256)
        pre = model.hidden1.norm(linear)  # placement=pre: the ReLU's input is the norm's output
        batch_normed = F.batch_norm(linear, None, None, model.hidden1.norm.weight, model.hidden1.norm.bias,
                                    training=True, eps=model.hidden1.norm.eps)
    assert last(mlflow_client, run_id, "act/hidden1/pre_mean") == pytest.approx(pre.mean().item(), abs=1e-5)
    assert last(mlflow_client, run_id, "act/hidden1/pre_std") == pytest.approx(pre.std().item(), rel=1e-5)
    assert last(mlflow_client, run_id, "act/hidden1/dead_frac") == pytest.approx(
        (pre.amax(dim=0) <= 0).float().mean().item())
    gap = (batch_normed - pre).abs().mean().item()
    assert gap > 0 and last(mlflow_client, run_id, "bn/hidden1/train_eval_gap") == pytest.approx(gap, rel=1e-4)

    # Tables and figures.
    paths = artifact_paths(mlflow_client, run_id)
    assert FIGURES | TABLES | {"plots/curves.png", histograms.ARTIFACT} <= paths
    for figure in FIGURES | {"plots/curves.png"}:
        with open(mlflow_client.download_artifacts(run_id, figure, str(tmp_path)), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    rows = {row["layer"]: row for row in read_csv(mlflow_client, run_id, "probes/norm_params.csv", tmp_path)}
    assert list(rows) == layers
    gamma = model.hidden2.norm.weight.detach().numpy()
    assert float(rows["hidden2"]["gamma_min"]) == pytest.approx(gamma.min())
    assert float(rows["hidden2"]["gamma_max"]) == pytest.approx(gamma.max())
    assert {row["undoes_norm"] for row in rows.values()} == {"False"}  # 2 epochs move gamma by ~0.01
    with open(mlflow_client.download_artifacts(run_id, "probes/norm_params.md", str(tmp_path))) as f:
        assert "mean|gamma - 1| > 0.5" in f.read()
    counts = {row["layer"]: row for row in read_csv(mlflow_client, run_id, "probes/param_counts.csv", tmp_path)}
    assert counts["hidden1.norm"]["trainable"] == counts["hidden1.norm"]["non_trainable"] == "512"  # 2 x 256 each
    params = mlflow_client.get_run(run_id).data.params
    assert counts["total"]["trainable"] == params["params_trainable"]
    assert counts["total"]["non_trainable"] == params["params_non_trainable"]

    # Histogram data loads back: one histogram per epoch, holding every probed value.
    by_layer = histograms.load(mlflow_client, run_id)
    assert set(by_layer) == set(layers) and set(by_layer["hidden1"]) == {"pre", "norm_in", "norm_out"}
    series = by_layer["hidden1"]["pre"]
    assert series.epochs.tolist() == [1, 2] and series.counts.shape == (2, cfg.probes.histogram_bins)
    assert series.counts.sum(axis=1).tolist() == [pre.numel()] * 2
    edges = series.edges[-1]
    assert edges[0] == pytest.approx(pre.min().item(), abs=1e-5) and edges[-1] == pytest.approx(pre.max().item(), abs=1e-5)


def test_no_norm_run_has_activation_statistics_and_no_norm_summaries(compose_cfg, mlflow_client):
    outcome = train.run(compose_cfg("norm=none", "trainer.max_epochs=1"))
    run = mlflow_client.get_run(outcome.run_id)
    assert probe_metrics(run) == {f"act/hidden{i}/{k}" for i in range(1, 5) for k in ("pre_mean", "pre_std", "dead_frac")}
    paths = artifact_paths(mlflow_client, outcome.run_id)
    assert {"plots/activation_evolution.png", "probes/param_counts.csv", histograms.ARTIFACT} <= paths
    assert not paths & {"plots/gamma_beta.png", "plots/before_after_norm.png", "probes/norm_params.csv"}


def test_probes_change_nothing_in_training_and_switch_off(compose_cfg, mlflow_client):
    # Dropout on: a probe that ran the model in train mode would draw random numbers and shift training.
    on, off = (train.run(compose_cfg("norm=bn", "model.dropout=0.2", f"probes.enabled={flag}")) for flag in (True, False))
    assert on.val_acc_curve == off.val_acc_curve and on.test_acc == off.test_acc
    loss = [[m.value for m in mlflow_client.get_metric_history(o.run_id, "train/loss")] for o in (on, off)]
    assert loss[0] == loss[1]
    assert probe_metrics(mlflow_client.get_run(on.run_id))
    assert probe_metrics(mlflow_client.get_run(off.run_id)) == set()
    assert artifact_paths(mlflow_client, off.run_id) == {"config.yaml", "plots/curves.png"}


def test_cnn_with_group_norm_probes_channels(compose_cfg, mlflow_client):
    capture = CaptureModel()
    outcome = train.run(compose_cfg("model=cnn", "norm=gn", "trainer.max_epochs=1", "dataset.train_size=256"),
                        callbacks=[capture])
    run = mlflow_client.get_run(outcome.run_id)
    metrics = probe_metrics(run)
    assert {f"bn/conv{i}/{k}" for i in (1, 2) for k in ("gamma_mean", "gamma_std", "beta_mean", "beta_std")} <= metrics
    assert not any("running" in k or "train_eval_gap" in k for k in metrics)  # GroupNorm keeps no running stats
    gamma = capture.model.conv2.norm.weight.detach().numpy()  # (64,) one per channel
    assert run.data.metrics["bn/conv2/gamma_mean"] == pytest.approx(gamma.mean(), rel=1e-5)
    dead = run.data.metrics["act/conv1/dead_frac"]
    assert dead * 32 == pytest.approx(round(dead * 32))  # a fraction of the 32 channels
    pre = histograms.load(mlflow_client, outcome.run_id)["conv1"]["pre"]
    assert pre.counts.sum() == 229 * 32 * 8 * 8  # every element of (N, C, H, W): all 229 validation images
    assert "plots/before_after_norm.png" in artifact_paths(mlflow_client, outcome.run_id)


@pytest.mark.parametrize("override, message", [
    ("probes.probe_batch_size=1", "probes.probe_batch_size=1 must be an integer >= 2"),
    ("probes.histogram_bins=0", "probes.histogram_bins=0 must be an integer >= 1"),
    ("probes.inference_repeats=0", "probes.inference_repeats=0 must be an integer >= 1"),
    ("probes.undo_beta_tol=-1", "probes.undo_beta_tol=-1.0 must be a finite number > 0"),
])
def test_bad_probe_settings_fail_before_any_run(compose_cfg, experiment_runs, override, message):
    with pytest.raises(ConfigError, match=message.replace("|", r"\|")):
        train.run(compose_cfg(override))
    assert experiment_runs() == []

