"""Classifier: a LightningModule around any model; cross-entropy loss, accuracy, optimizer."""

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from normexp.config.schema import OptimConfig

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


class Classifier(pl.LightningModule):
    def __init__(self, model: nn.Module, optim_cfg: OptimConfig):
        super().__init__()
        self.model = model
        self.optim_cfg = optim_cfg
        self._kept: dict[str, list[tuple]] = {}  # stage -> a (loss, logits, labels) tuple per step of its epoch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)  # (N, C, H, W) -> (N, num_classes) logits

    # Lightning sets this attribute around each of the ~20 hooks it calls a step; nn.Module.__setattr__
    # (which looks for parameters, buffers and submodules first) made that ~100 us of a ~3 ms
    # Fashion-MNIST MLP step (benchmarks/epoch_time.py). It only ever holds a hook's name or None.
    def __setattr__(self, name: str, value) -> None:
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    # Each step keeps its detached loss and logits (no copy, no kernel) and the epoch's means are
    # computed once, at its end: Lightning's self.log on every step costs about 1 ms, and even summing
    # on the device costs ~8 small ops (~70 us) a step. The loss mean weighs every example equally.
    def _keep(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)  # (N, num_classes)
        loss = F.cross_entropy(logits, y)
        self._kept.setdefault(stage, []).append((loss.detach(), logits.detach(), y))
        return loss

    def _log_means(self, stage: str) -> None:
        losses, logits, labels = zip(*self._kept.pop(stage))
        sizes = torch.tensor([len(y) for y in labels], dtype=losses[0].dtype, device=losses[0].device)  # (steps,)
        loss = (torch.stack(losses) * sizes).sum() / sizes.sum()
        acc = (torch.cat(logits).argmax(dim=1) == torch.cat(labels)).float().mean()  # (examples,) -> ()
        self.log_dict({f"{stage}/loss": loss, f"{stage}/acc": acc}, prog_bar=True)
        # Logging "step" makes Lightning use it as the MLflow step: the x-axis is the epoch (1-based;
        # the test after training shares the last epoch's step), not the batch count.
        self.log("step", float(self.current_epoch if self.trainer.testing else self.current_epoch + 1))

    def training_step(self, batch, batch_idx):
        return self._keep(batch, "train")

    def on_train_batch_end(self, outputs, batch, batch_idx):
        # At the epoch's last batch, or the batch after which a callback (the divergence guard) stopped
        # training: callbacks read the epoch's train metrics at on_train_epoch_end, before this module's.
        if batch_idx == self.trainer.num_training_batches - 1 or self.trainer.should_stop:
            self._log_means("train")

    def validation_step(self, batch, batch_idx):
        self._keep(batch, "val")

    def on_validation_epoch_end(self):
        self._log_means("val")

    def test_step(self, batch, batch_idx):
        self._keep(batch, "test")

    def on_test_epoch_end(self):
        self._log_means("test")

    def configure_optimizers(self):
        # Weight decay on weight matrices and kernels only: decaying norm gammas/betas and biases
        # towards 0 fights the normalization (the usual practice; these are the 1-D parameters).
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.ndim > 1], "weight_decay": self.optim_cfg.weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
        ]
        kwargs = {k: v for k, v in self.optim_cfg.items() if k not in ("name", "weight_decay")}
        if "betas" in kwargs:
            kwargs["betas"] = tuple(kwargs["betas"])
        return OPTIMIZERS[self.optim_cfg.name](groups, **kwargs)
