"""normexp.probes.gradients: the per-epoch gradient norm and update ratio of every hidden block, against a
plain per-step computation of the same quantities in the same run."""

import math
import statistics

import pytest
import pytorch_lightning as pl

from normexp import train
from normexp.models.networks import hidden_blocks


class StepByStep(pl.Callback):
    """The reference: each step's ||grad|| and ||W_after - W_before|| / ||W_before||, read on the host."""

    def __init__(self):
        self.norms, self.ratios, self.weight_norms = {}, {}, {}  # layer -> epoch -> per-step values

    def on_fit_start(self, trainer, pl_module):
        self.weights = {name: block.layer.weight for name, block in hidden_blocks(pl_module.model).items()}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.before = {layer: w.detach().clone() for layer, w in self.weights.items()}
        for layer, w in self.weights.items():
            self.norms.setdefault(layer, {}).setdefault(trainer.current_epoch + 1, []).append(w.grad.norm().item())
            self.weight_norms.setdefault(layer, {}).setdefault(trainer.current_epoch + 1, []).append(w.norm().item())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        for layer, w in self.weights.items():
            ratio = ((w.detach() - self.before[layer]).norm() / self.before[layer].norm()).item()
            self.ratios.setdefault(layer, {}).setdefault(trainer.current_epoch + 1, []).append(ratio)


def history(client, run_id, key) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


@pytest.mark.parametrize("overrides", [["norm=bn", "probes.gradient_every=1"], ["norm=bn", "probes.gradient_every=3"],
                                       ["norm=none", "model=cnn", "dataset.train_size=256"]])
def test_epoch_means_match_the_per_step_values_of_the_measured_steps(compose_cfg, mlflow_client, overrides):
    reference = StepByStep()
    cfg = compose_cfg(*overrides)
    outcome = train.run(cfg, callbacks=[reference])
    every = cfg.probes.gradient_every  # the epoch's steps 0, every, 2 * every, ... are measured
    layers = ["conv1", "conv2"] if "model=cnn" in overrides else [f"hidden{i}" for i in range(1, 5)]
    assert set(reference.norms) == set(layers)
    for layer in layers:
        for kind, steps in (("norm", reference.norms[layer]), ("ratio", reference.ratios[layer])):
            logged = history(mlflow_client, outcome.run_id, f"grad/{layer}/{kind}")
            assert list(logged) == [1, 2]
            for epoch, value in logged.items():
                assert value == pytest.approx(statistics.fmean(steps[epoch][::every]), rel=1e-5), (layer, kind, epoch)
                if every > 1:  # sampling changes the figure: the test would notice a probe measuring every step
                    assert value != pytest.approx(statistics.fmean(steps[epoch]), rel=1e-5)
            assert all(v > 0 for v in logged.values())


def test_plain_sgd_update_ratio_is_lr_times_gradient_over_weight(compose_cfg, mlflow_client):
    # Plain SGD's step is -lr * grad, so each step's ratio is lr * ||grad|| / ||W_before||.
    reference = StepByStep()
    outcome = train.run(compose_cfg("norm=none", "optim=sgd", "optim.lr=0.1", "optim.momentum=0",
                                    "trainer.max_epochs=1", "probes.gradient_every=1"), callbacks=[reference])
    for layer in ("hidden1", "hidden4"):
        expected = [0.1 * g / w for g, w in zip(reference.norms[layer][1], reference.weight_norms[layer][1])]
        assert history(mlflow_client, outcome.run_id, f"grad/{layer}/ratio")[1] == pytest.approx(
            statistics.fmean(expected), rel=1e-4)


def test_the_figure_is_logged_and_probes_off_log_no_gradients(compose_cfg, mlflow_client, tmp_path):
    on = train.run(compose_cfg("trainer.max_epochs=1"))
    path = mlflow_client.download_artifacts(on.run_id, "plots/gradient_flow.png", str(tmp_path))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    logged = {k: v for k, v in mlflow_client.get_run(on.run_id).data.metrics.items() if k.startswith("grad/")}
    assert len(logged) == 8 and all(math.isfinite(v) for v in logged.values())  # 4 blocks x (norm, ratio)
    off = train.run(compose_cfg("trainer.max_epochs=1", "probes.enabled=false"))
    assert not [k for k in mlflow_client.get_run(off.run_id).data.metrics if k.startswith("grad/")]
