import itertools
import os
import subprocess
import sys
import time

import pytest
import pytorch_lightning as pl
import torch

from normexp import train
from normexp.analysis import histograms
from normexp.errors import ConfigError
from normexp.training import checkpoints
from tests import forked
from tests.conftest import refusal

MODELS = ("mlp", "mlp_deep", "cnn", "cnn_modern")
NORMS = ("none", "bn", "ln", "gn", "in", "bn_scratch", "ln_scratch")
SPATIAL_ONLY, FLAT_ONLY = {"in"}, {"ln_scratch"}


def is_valid(model: str, norm: str) -> bool:
    spatial = model.startswith("cnn")
    return not (norm in SPATIAL_ONLY and not spatial) and not (norm in FLAT_ONLY and spatial)


@pytest.mark.parametrize("model, norm", [c for c in itertools.product(MODELS, NORMS) if is_valid(*c)])
def test_every_valid_model_and_norm_trains_one_epoch(compose_cfg, experiment_runs, model, norm):
    cfg = compose_cfg(f"model={model}", f"norm={norm}", "trainer.max_epochs=1", "dataset.train_size=256")
    outcome = train.run(cfg)
    assert outcome.epochs == 1 and not outcome.diverged
    (run,) = experiment_runs()
    assert run.info.status == "FINISHED"
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "test/acc", "time/epoch_s"} <= set(run.data.metrics)
    # Set by lightning_fabric's import; unset, Adam's step finds CUDA's availability cached.
    assert "PYTORCH_NVML_BASED_CUDA_CHECK" not in os.environ


@pytest.mark.parametrize("model, norm", [c for c in itertools.product(MODELS, NORMS) if not is_valid(*c)])
def test_every_invalid_model_and_norm_fails_before_any_run(compose_cfg, experiment_runs, model, norm):
    with pytest.raises(ConfigError, match=f"norm={norm}"):
        train.run(compose_cfg(f"model={model}", f"norm={norm}"))
    assert experiment_runs() == []  # nothing recorded, nothing left RUNNING


def test_same_seed_same_config_gives_identical_metrics(compose_cfg, mlflow_client):
    first, second = (train.run(compose_cfg("norm=bn", "model.dropout=0.2")) for _ in range(2))
    assert first.val_acc_curve == second.val_acc_curve and first.test_acc == second.test_acc
    for key in ("train/loss", "val/loss"):
        histories = [[m.value for m in mlflow_client.get_metric_history(o.run_id, key)] for o in (first, second)]
        assert histories[0] == histories[1]
    other_seed = train.run(compose_cfg("norm=bn", "model.dropout=0.2", "seed=1"))
    assert other_seed.val_acc_curve != first.val_acc_curve


class CaptureModule(pl.Callback):
    def on_fit_end(self, trainer, pl_module):
        self.module, self.train_batches = pl_module, trainer.num_training_batches


def test_batchnorm_uses_batch_stats_in_training_and_running_stats_in_eval(compose_cfg, mlflow_client):
    capture = CaptureModule()
    outcome = train.run(compose_cfg("norm=bn", "trainer.max_epochs=2"), callbacks=[capture])
    bn = capture.module.model.hidden1.norm
    # Only training steps update the running statistics; validation and test batches never do.
    assert int(bn.num_batches_tracked) == 2 * capture.train_batches
    # The logged val accuracy is the eval-mode (running statistics) accuracy on the val split.
    from normexp import data
    splits = data.load(compose_cfg().dataset, 0)
    model = capture.module.model.eval()
    with torch.no_grad():
        eval_acc = (model(splits.val.x).argmax(1) == splits.val.y).float().mean().item()
        model.train()
        batch_stats_out = model(splits.val.x[:8])
        model.eval()
        running_stats_out = model(splits.val.x[:8])
    assert eval_acc == pytest.approx(outcome.final_val_acc, abs=1e-6)
    assert not torch.allclose(batch_stats_out, running_stats_out)


def test_run_records_params_tags_config_and_epoch_metrics(compose_cfg, mlflow_client):
    outcome = train.run(compose_cfg("norm=bn", "optim.lr=0.01", "trainer.max_epochs=3"))
    run = mlflow_client.get_run(outcome.run_id)
    assert run.info.run_name == "bn-adam-lr0.01-bs64-s0"
    assert {k: run.data.tags[k] for k in ("dataset", "model", "norm", "placement", "optim", "seed")} == {
        "dataset": "digits", "model": "mlp", "norm": "bn", "placement": "pre", "optim": "adam", "seed": "0"}
    assert len(run.data.tags["mlflow.source.git.commit"]) in (40, len("unknown"))  # shown by MLflow's UI
    assert run.data.params["optim.lr"] == "0.01" and run.data.params["model.widths"] == "[256, 128, 64, 32]"
    # 64 -> 256 -> 128 -> 64 -> 32 -> 10, no hidden bias (BN's beta replaces it), gamma + beta per unit.
    weights = 64 * 256 + 256 * 128 + 128 * 64 + 64 * 32 + 32 * 10 + 10
    assert run.data.params["params_trainable"] == str(weights + 2 * (256 + 128 + 64 + 32))
    assert run.data.params["params_non_trainable"] == str(2 * (256 + 128 + 64 + 32))
    assert [m.step for m in mlflow_client.get_metric_history(outcome.run_id, "val/acc")] == [1, 2, 3]
    config = mlflow_client.download_artifacts(outcome.run_id, "config.yaml")
    assert "lr: 0.01" in open(config).read()
    assert run.data.tags["diverged"] == "false" and run.data.metrics["outcome/epochs"] == 3
    assert run.data.tags["device"] == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert run.data.tags["jobs_at_once"] == "1"  # a run of its own: its timings are comparable with other serial ones
    epoch_s, train_s = (sorted((m.step, m.value) for m in mlflow_client.get_metric_history(outcome.run_id, key))
                        for key in ("time/epoch_s", "time/train_s"))
    assert [step for step, _ in train_s] == [1, 2, 3]
    assert all(0 < train < epoch for (_, epoch), (_, train) in zip(epoch_s, train_s))  # validation takes time


def test_a_diverging_run_ends_finished_with_the_step(compose_cfg, mlflow_client):
    # Adam at lr 10 without normalization blows the loss up to ~1e11 at the second step.
    outcome = train.run(compose_cfg("norm=none", "optim.lr=10", "trainer.max_epochs=3"))
    assert outcome.diverged and outcome.diverged_at_step <= 3 and outcome.epochs == 1 and not outcome.converged
    run = mlflow_client.get_run(outcome.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["diverged"] == "true" and run.data.tags["diverged_at_step"] == str(outcome.diverged_at_step)
    assert run.data.metrics["outcome/diverged_at_step"] == outcome.diverged_at_step


def test_outcome_verdict_follows_the_dataset_thresholds(compose_cfg):
    outcome = train.run(compose_cfg("norm=bn", "trainer.max_epochs=3", "dataset.target_acc=0.5", "dataset.converge_acc=0.99"))
    assert outcome.epochs_to_target == 1 and outcome.best_val_acc < 0.99 and not outcome.converged
    assert outcome.best_val_acc == max(outcome.val_acc_curve)


def test_scratch_batchnorm_trains_like_torch_batchnorm(compose_cfg, mlflow_client):
    runs = [train.run(compose_cfg(f"norm={norm}", "trainer.max_epochs=3")) for norm in ("bn", "bn_scratch")]
    # Same math, different float32 summation order: differences of ~1e-7 per step that Adam, which
    # divides by the gradient's own scale, grows to ~4e-4 relative over 60 steps; enough to flip
    # the prediction of one borderline validation example.
    history = {key: [[m.value for m in mlflow_client.get_metric_history(r.run_id, key)] for r in runs]
               for key in ("train/loss", "val/loss", "val/acc")}
    for key in ("train/loss", "val/loss"):
        bn, scratch = history[key]
        assert scratch == pytest.approx(bn, rel=2e-3)
    bn, scratch = history["val/acc"]
    assert scratch == pytest.approx(bn, abs=1.5 / 229)  # at most one of the 229 validation examples


def test_bad_value_is_one_line_nonzero_exit_and_no_run_left_running(monkeypatch, tmp_path):
    assert refusal(train.main, monkeypatch, tmp_path, "norm=gn", "norm.num_groups=3") == (  # and no store, so no run
        "error: norm.num_groups=3 does not divide the layer width(s) [256, 128, 64, 32]; choose one of [1, 2, 4, 8, 16, 32]")


@pytest.mark.parametrize("norm, placement, folded", [("bn", "pre", True), ("bn", "post", False), ("ln", "pre", None)])
def test_every_run_logs_its_inference_cost_and_bn_folded(compose_cfg, mlflow_client, norm, placement, folded):
    outcome = train.run(compose_cfg(f"norm={norm}", f"norm.placement={placement}", "trainer.max_epochs=1"))
    metrics = mlflow_client.get_run(outcome.run_id).data.metrics
    assert metrics["inference/ms_per_batch"] > 0
    if folded is None:  # no running statistics: nothing to fold
        assert not {k for k in metrics if k.startswith("inference/") and k != "inference/ms_per_batch"}
        return
    assert metrics["inference/fold_max_abs_diff"] < 1e-4 and metrics["inference/ms_per_batch_folded"] > 0
    assert metrics["inference/bn_folded"] == (4 if folded else 0)  # BN after the ReLU cannot fold into the layer


def test_epochs_to_target_needs_the_accuracy_to_stay_above_it_for_three_validations():
    def whole(accs):  # one validation an epoch
        return [(epoch + 1.0, acc) for epoch, acc in enumerate(accs)]
    assert train.epochs_to_target(whole([0.90, 0.96, 0.94, 0.96, 0.97, 0.96]), 0.95) == 4  # epoch 2 was one lucky epoch
    assert train.epochs_to_target(whole([0.90, 0.94, 0.96, 0.97]), 0.95) == 3  # held until training ended
    assert train.epochs_to_target(whole([0.96, 0.90]), 0.95) is None
    tenths = [(round(0.1 * (i + 1), 1), acc) for i, acc in enumerate([0.5, 0.96, 0.9, 0.95, 0.96, 0.97, 0.9])]
    assert train.epochs_to_target(tenths, 0.95) == 0.4  # a tenth of an epoch apart


def test_a_killed_run_resumes_from_its_checkpoint_with_identical_metrics(compose_cfg, tmp_path, tracking_uri,
                                                                         experiment_name, mlflow_client, experiment_runs):
    # 64 batches of 8 make an epoch last long enough (~0.3 s) to kill the run between two of them; dropout
    # draws from the global RNG, which the checkpoint carries too.
    same = ["trainer.max_epochs=4", "dataset.batch_size=8", "dataset.train_size=512", "model.dropout=0.2",
            "tracking.heartbeat_s=0.5", "tracking.lease_s=1.5", "trainer.progress_bar=false"]
    process = forked.Popen([sys.executable, "-m", "normexp.train", *same, f"tracking.uri={tracking_uri}",
                            f"tracking.experiment={experiment_name}", f"hydra.run.dir={tmp_path}/out"],
                           cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (runs := experiment_runs()) or len(mlflow_client.get_metric_history(runs[0].info.run_id, "val/acc")) < 2:
            assert process.poll() is None, process.stderr.read()[-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        process.kill()  # SIGKILL after epoch 2 of 4
    finally:
        process.kill()
        process.wait()
    time.sleep(1.5)  # its lease runs out

    resumed = train.run(compose_cfg(*same, "trainer.resume=true"))
    (run,) = experiment_runs()  # the same run, continued
    assert resumed.run_id == run.info.run_id and run.info.status == "FINISHED"
    assert run.data.tags["resumed_from_epoch"] in ("1", "2", "3") and "killed_reason" not in run.data.tags
    assert not checkpoints.path(compose_cfg().tracking, run.info.run_id).parent.exists()  # FINISHED: removed
    whole = train.run(compose_cfg(*same, f"tracking.experiment={experiment_name}-uninterrupted"))

    def per_epoch(run_id: str) -> dict[str, dict[int, float]]:
        keys = [k for k in mlflow_client.get_run(run_id).data.metrics if not k.startswith(("time/", "inference/"))
                and k not in ("outcome/epoch_s", "outcome/train_s")]
        # A step of the epoch the kill interrupted may be logged twice, with the same value.
        return {k: {m.step: m.value for m in mlflow_client.get_metric_history(run_id, k)} for k in keys}

    expected = per_epoch(whole.run_id)
    assert {"val/acc", "train/loss", "act/hidden1/pre_mean", "bn/hidden1/gamma_mean", "grad/hidden1/ratio"} <= set(expected)
    assert list(expected["val/acc"]) == [1, 2, 3, 4]
    assert per_epoch(resumed.run_id) == expected
    assert resumed.val_acc_curve == whole.val_acc_curve and resumed.test_acc == whole.test_acc
    assert histograms.load(mlflow_client, resumed.run_id)["hidden1"]["pre"].epochs.tolist() == [1, 2, 3, 4]
