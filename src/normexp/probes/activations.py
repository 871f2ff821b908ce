"""The activation probe: what the activations inside do, epoch by epoch, on a fixed validation batch; the
metrics are listed in normexp.probes."""

import copy

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn

from normexp.analysis import histograms, plots
from normexp.analysis.histograms import HistogramSeries
from normexp.models.networks import hidden_blocks, norm_layers
from normexp.models.norms import has_running_stats
from normexp.probes.writing import WRITE_EVERY_S, write
from normexp.tracking.metrics import MetricBuffer


class ActivationProbe(pl.Callback):
    """act/<layer>/... and bn/<layer>/train_eval_gap each epoch on a fixed validation batch; histograms
    of every layer's pre-activation and norm input/output, saved as data and drawn at the end."""

    def __init__(self, probe_x: torch.Tensor, bins: int):
        self.probe_x, self.bins = probe_x, bins  # (N, C, H, W)
        self.metrics = MetricBuffer(WRITE_EVERY_S)
        self.epochs: list[int] = []
        self.per_epoch: dict[tuple[str, str], list[tuple[np.ndarray, np.ndarray]]] = {}  # (layer, what) -> per epoch

    def on_fit_start(self, trainer, pl_module):
        self.probe_x = self.probe_x.to(pl_module.device)

    @torch.no_grad()
    def _forward(self, model: nn.Module) -> dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]]:
        """One eval-mode pass of the probe batch; (layer, "act" | "norm") -> (module input, module output)."""
        seen, handles = {}, []

        def keeper(key):
            def hook(module, inputs, output):
                seen[key] = (inputs[0], output)
            return hook

        for name, block in hidden_blocks(model).items():
            for part in ("act", "norm"):
                if hasattr(block, part):
                    handles.append(getattr(block, part).register_forward_hook(keeper((name, part))))
        was_training = model.training
        model.eval()
        try:
            model(self.probe_x)
        finally:
            model.train(was_training)
            for handle in handles:
                handle.remove()
        return seen

    @torch.no_grad()
    def on_train_epoch_end(self, trainer, pl_module):
        seen = self._forward(pl_module.model)
        norms = norm_layers(pl_module.model)
        values = {}
        for layer in hidden_blocks(pl_module.model):
            pre = seen[(layer, "act")][0]  # (N, F) or (N, C, H, W)
            pre_mean, pre_std = self._describe(layer, "pre", pre)
            never_active = pre.movedim(1, 0).flatten(1).amax(dim=1) <= 0  # (F,) or (C,): ReLU 0 everywhere
            values |= {f"act/{layer}/pre_mean": pre_mean, f"act/{layer}/pre_std": pre_std,
                       f"act/{layer}/dead_frac": never_active.float().mean().item()}
            if layer in norms:
                norm_in, norm_out = seen[(layer, "norm")]
                self._describe(layer, "norm_in", norm_in)
                if norm_out is pre:  # placement=pre: the norm's output is the ReLU's input, described above
                    self.per_epoch.setdefault((layer, "norm_out"), []).append(self.per_epoch[(layer, "pre")][-1])
                    out_mean, out_std = pre_mean, pre_std
                else:
                    out_mean, out_std = self._describe(layer, "norm_out", norm_out)
                values |= {f"act/{layer}/post_norm_mean": out_mean, f"act/{layer}/post_norm_std": out_std}
                if has_running_stats(norms[layer]):
                    # A copy in train mode normalizes with the batch statistics; its running-stat update
                    # dies with it, so the model's own state is untouched.
                    train_out = copy.deepcopy(norms[layer]).train()(norm_in)
                    values[f"bn/{layer}/train_eval_gap"] = (train_out - norm_out).abs().mean().item()
        self.epochs.append(trainer.current_epoch + 1)
        self.metrics.add(values, step=trainer.current_epoch + 1)
        write(self.metrics, trainer)

    def _describe(self, layer: str, what: str, x: torch.Tensor) -> tuple[float, float]:
        """Adds this epoch's histogram of x; returns x's (mean, std) over all its elements."""
        self.per_epoch.setdefault((layer, what), []).append(histograms.histogram(x.float().cpu().numpy(), self.bins))
        std, mean = torch.std_mean(x)
        return mean.item(), std.item()

    def on_exception(self, trainer, pl_module, exception):
        write(self.metrics, trainer, force=True)

    # A checkpoint (normexp.training.checkpoints) carries the epochs so far: per (layer, what) the stacked edges
    # and counts, two tensors (which load with weights_only) however many epochs.
    def state_dict(self) -> dict:
        return {"metrics": self.metrics.state_dict(), "epochs": self.epochs,
                "per_epoch": {"\t".join(key): [torch.from_numpy(np.stack(arrays)) for arrays in zip(*series)]
                              for key, series in self.per_epoch.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.metrics.load_state_dict(state["metrics"])
        self.epochs = state["epochs"]
        self.per_epoch = {tuple(key.split("\t")): list(zip(edges.numpy(), counts.numpy()))
                          for key, (edges, counts) in state["per_epoch"].items()}

    def on_fit_end(self, trainer, pl_module):
        write(self.metrics, trainer, force=True)
        if not self.epochs:
            return
        client, run_id = trainer.logger.experiment, trainer.logger.run_id
        series = {}
        for (layer, what), per_epoch in self.per_epoch.items():
            edges, counts = (np.stack(arrays) for arrays in zip(*per_epoch))
            series.setdefault(layer, {})[what] = HistogramSeries(np.array(self.epochs), edges, counts)
        histograms.save(client, run_id, series)
        plots.log_figure(client, run_id, plots.activation_evolution({layer: s["pre"] for layer, s in series.items()}),
                         "plots/activation_evolution.png")
        first_norm = next((layer for layer, s in series.items() if "norm_in" in s), None)
        if first_norm is not None:
            s = series[first_norm]
            plots.log_figure(client, run_id, plots.before_after_norm(s["norm_in"], s["norm_out"], first_norm),
                             "plots/before_after_norm.png")
