"""Gradient flow: how large each hidden block's gradient and weight update are, per epoch (a probe).

Metrics, MLflow step = the 1-based epoch; <layer> is the block name (hidden1, conv2a, block1, ...):
  grad/<layer>/norm    ||dL/dW||, the L2 (Frobenius) norm of the gradient of the block's `layer` weight,
        taken just before the optimizer step, mean over the measured steps of the epoch
  grad/<layer>/ratio   ||W_after - W_before|| / ||W_before|| of an optimizer step, mean over the measured
        steps: the relative size of the update the optimizer really made (learning rate, Adam's scaling,
        momentum and weight decay included), exact, from a copy of W taken before the step
The measured steps are every `every`-th (probes.gradient_every; 1: all), the epoch's first included.
Figure: plots/gradient_flow.png (both per block, one line per epoch).
Cost per measured step: one copy of each block's weight and three vector norms per block (~200 us for
the default MLP on one CPU thread, ~7% of its step), summed on the device; the host reads the sums once
per epoch, so no step waits for a device-to-host copy.
"""

import pytorch_lightning as pl
import torch

from normexp.analysis import plots
from normexp.models.networks import hidden_blocks
from normexp.tracking.metrics import MetricBuffer

KINDS = ("norm", "ratio")


class GradientFlow(pl.Callback):
    """grad/<layer>/norm and grad/<layer>/ratio each epoch; plots/gradient_flow.png at the end."""

    def __init__(self, metrics: MetricBuffer, every: int):
        self.metrics, self.every = metrics, every
        self.epochs: list[int] = []
        self.history: dict[str, dict[str, list[float]]] = {}  # kind -> layer -> one value per epoch

    def on_fit_start(self, trainer, pl_module):
        self.weights = {name: block.layer.weight for name, block in hidden_blocks(pl_module.model).items()}
        self.before = [torch.empty_like(w) for w in self.weights.values()]  # reused every step
        if not self.epochs:  # a resumed run keeps its earlier epochs (load_state_dict)
            self.history = {kind: {layer: [] for layer in self.weights} for kind in KINDS}

    def on_train_epoch_start(self, trainer, pl_module):
        self.sums = torch.zeros(len(KINDS), len(self.weights), device=pl_module.device)  # (kind, layer)
        self.steps = 0      # measured steps
        self.measuring = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.measuring = batch_idx % self.every == 0

    @torch.no_grad()
    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        # After backward, before the update: the gradient is complete and W is still W_before.
        if not self.measuring:
            return
        self.sums[0] += torch.stack([torch.linalg.vector_norm(w.grad) for w in self.weights.values()])
        for copy, weight in zip(self.before, self.weights.values()):
            copy.copy_(weight)
        self.before_norms = torch.stack([torch.linalg.vector_norm(b) for b in self.before])  # (layers,)

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not self.measuring:
            return
        for copy, weight in zip(self.before, self.weights.values()):
            copy.sub_(weight)  # W_before - W_after, in place: no allocation per step
        self.sums[1] += torch.stack([torch.linalg.vector_norm(d) for d in self.before]) / self.before_norms
        self.steps += 1

    def on_train_epoch_end(self, trainer, pl_module):
        if not self.steps:
            return
        means = (self.sums / self.steps).tolist()  # the epoch's one host read
        epoch = trainer.current_epoch + 1
        values = {}
        for row, kind in enumerate(KINDS):
            for column, layer in enumerate(self.weights):
                values[f"grad/{layer}/{kind}"] = means[row][column]
                self.history[kind][layer].append(means[row][column])
        self.epochs.append(epoch)
        self.metrics.add(values, step=epoch)
        self.metrics.write(trainer.logger.experiment, trainer.logger.run_id)

    def on_exception(self, trainer, pl_module, exception):
        self.metrics.write(trainer.logger.experiment, trainer.logger.run_id, force=True)

    def state_dict(self) -> dict:  # carried by a checkpoint (normexp.training.checkpoints)
        return {"metrics": self.metrics.state_dict(), "epochs": self.epochs, "history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.metrics.load_state_dict(state["metrics"])
        self.epochs, self.history = state["epochs"], state["history"]

    def on_fit_end(self, trainer, pl_module):
        self.metrics.write(trainer.logger.experiment, trainer.logger.run_id, force=True)
        if self.epochs and self.weights:
            plots.log_figure(trainer.logger.experiment, trainer.logger.run_id,
                             plots.gradient_flow(self.epochs, self.history["norm"], self.history["ratio"]),
                             "plots/gradient_flow.png")
