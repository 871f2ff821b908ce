"""Classifier: a LightningModule around any model; cross-entropy loss, accuracy, optimizer."""

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from normexp.errors import ConfigError

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


def check_optim(cfg) -> None:
    if cfg.name not in OPTIMIZERS:
        raise ConfigError(f"unknown optim '{cfg.name}'; expected one of {', '.join(OPTIMIZERS)}")
    if not cfg.lr > 0:
        raise ConfigError(f"optim.lr={cfg.lr} must be positive; e.g. optim.lr=0.001")
    if cfg.weight_decay < 0:
        raise ConfigError(f"optim.weight_decay={cfg.weight_decay} must be >= 0")


class Classifier(pl.LightningModule):
    def __init__(self, model: nn.Module, optim_cfg):
        super().__init__()
        self.model = model
        self.optim_cfg = optim_cfg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)  # (N, C, H, W) -> (N, num_classes) logits

    def _step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(dim=1) == y).float().mean()
        self.log_dict({f"{stage}/loss": loss, f"{stage}/acc": acc}, on_step=False, on_epoch=True, prog_bar=True)
        # Logging "step" makes Lightning use it as the MLflow step: the x-axis is the epoch (1-based;
        # the test after training shares the last epoch's step), not the batch count.
        epoch = self.current_epoch if self.trainer.testing else self.current_epoch + 1
        self.log("step", float(epoch), on_step=False, on_epoch=True)
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

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
