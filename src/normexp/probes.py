"""Probes: what happens inside the network, logged to every run (switch off with probes.enabled=false).

Metrics, MLflow step = the 1-based epoch; <layer> is the block name (hidden1, conv2a, head, ...):
  bn/<layer>/gamma_mean, gamma_std, beta_mean, beta_std   every norm layer with affine parameters. `bn/`
        names normalization-layer metrics of any kind (BN, LN, GN, IN), so runs compare side by side;
        the run's `norm` tag says which kind. Stds are population stds over the layer's features.
  bn/<layer>/running_mean_mean, running_var_mean          layers with running statistics (BatchNorm)
  bn/<layer>/train_eval_gap   ditto: mean |norm_train(x) - norm_eval(x)| over the probe batch, x being
        the layer's input: how far the running statistics are from the batch statistics, in output units
  act/<layer>/pre_mean, pre_std        the block's pre-activation (the input to its ReLU)
  act/<layer>/post_norm_mean, post_norm_std   the output of the block's norm (same as pre for placement=pre)
  act/<layer>/dead_frac                fraction of units (features, or channels of a conv) whose ReLU
        output is 0 for every example (and every pixel) of the probe batch
Activation statistics come from one eval-mode forward pass of a fixed probe batch (the first
`probes.probe_batch_size` validation examples) after each epoch: no dropout, no running-stat update,
no random numbers drawn, so probing never changes training.
Artifacts: probes/param_counts.{md,csv}, probes/norm_params.{md,csv}, probes/histograms.npz (normexp.histograms),
plots/gamma_beta.png, plots/activation_evolution.png, plots/before_after_norm.png.
Gradient flow (grad/<layer>/norm, ratio; plots/gradient_flow.png) is normexp.gradients, registered here too.
"""

import copy

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn

from normexp import histograms, plots, tables
from normexp.gradients import GradientFlow
from normexp.histograms import HistogramSeries
from normexp.models import hidden_blocks, norm_layers, parameter_counts
from normexp.metrics import MetricBuffer

# Metrics are buffered (metrics.MetricBuffer). Long runs still show them live, written at the first
# epoch end this many seconds after the last write.
WRITE_EVERY_S = 30


def has_running_stats(norm: nn.Module) -> bool:
    return getattr(norm, "running_mean", None) is not None


def affine_params(norm: nn.Module) -> tuple[np.ndarray, np.ndarray] | None:
    """(gamma, beta) flattened to one value per feature, or None for a norm without affine parameters."""
    if getattr(norm, "weight", None) is None:
        return None
    return (norm.weight.detach().flatten().float().cpu().numpy(), norm.bias.detach().flatten().float().cpu().numpy())


def norm_summary(norm: nn.Module) -> dict[str, float]:
    """gamma/beta and running-statistic summaries of one norm layer (population std over features)."""
    summary = {}
    params = affine_params(norm)
    if params is not None:
        gamma, beta = params
        summary |= {"gamma_mean": gamma.mean(), "gamma_std": gamma.std(), "gamma_min": gamma.min(),
                    "gamma_max": gamma.max(), "gamma_absdev": np.abs(gamma - 1).mean(),
                    "beta_mean": beta.mean(), "beta_std": beta.std(), "beta_absmean": np.abs(beta).mean()}
    if has_running_stats(norm):
        mean, var = (b.detach().float().cpu().numpy() for b in (norm.running_mean, norm.running_var))
        summary |= {"running_mean_mean": mean.mean(), "running_mean_std": mean.std(),
                    "running_var_mean": var.mean(), "running_var_std": var.std()}
    return {k: float(v) for k, v in summary.items()}


def _log_table(trainer, rows: list[dict], stem: str, title: str, caption: str) -> None:
    """rows as probes/<stem>.md (numbers to 4 significant digits, the caption below) and probes/<stem>.csv."""
    table = tables.from_records(stem, title, rows, [caption])
    table.log_to_run(trainer.logger.experiment, trainer.logger.run_id, "probes")


def _write(buffer: MetricBuffer, trainer, force: bool = False) -> None:
    buffer.write(trainer.logger.experiment, trainer.logger.run_id, force)


class ParameterTable(pl.Callback):
    """Logs probes/param_counts.{md,csv}: trainable vs non-trainable per layer and in total, Keras style."""

    def on_fit_start(self, trainer, pl_module):
        model = pl_module.model
        rows = []
        for name, module in model.named_modules():
            counts = parameter_counts(module)
            if not list(module.children()) and any(counts.values()):  # leaf layers that hold numbers
                rows.append({"layer": name, "type": type(module).__name__, "trainable": counts["params_trainable"],
                             "non_trainable": counts["params_non_trainable"]})
        total = parameter_counts(model)
        rows.append({"layer": "total", "type": "", "trainable": total["params_trainable"],
                     "non_trainable": total["params_non_trainable"]})
        for row in rows:
            row["total"] = row["trainable"] + row["non_trainable"]
        _log_table(trainer, rows, "param_counts", "Parameter counts",
                   "Parameters per layer. Non-trainable: frozen parameters and BatchNorm running statistics.")


class NormProbe(pl.Callback):
    """bn/<layer>/... metrics each epoch; at the end the norm-parameter table and the gamma/beta figure."""

    def __init__(self, undo_gamma_tol: float, undo_beta_tol: float):
        self.undo_gamma_tol, self.undo_beta_tol = undo_gamma_tol, undo_beta_tol
        self.metrics = MetricBuffer(WRITE_EVERY_S)

    EPOCH_KEYS = ("gamma_mean", "gamma_std", "beta_mean", "beta_std", "running_mean_mean", "running_var_mean")

    def on_train_epoch_end(self, trainer, pl_module):
        values = {f"bn/{layer}/{key}": value
                  for layer, norm in norm_layers(pl_module.model).items()
                  for key, value in norm_summary(norm).items() if key in self.EPOCH_KEYS}
        self.metrics.add(values, step=trainer.current_epoch + 1)
        _write(self.metrics, trainer)

    def on_exception(self, trainer, pl_module, exception):
        _write(self.metrics, trainer, force=True)

    def state_dict(self) -> dict:  # carried by a checkpoint (normexp.checkpoints)
        return {"metrics": self.metrics.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.metrics.load_state_dict(state["metrics"])

    def on_fit_end(self, trainer, pl_module):
        _write(self.metrics, trainer, force=True)
        layers = norm_layers(pl_module.model)
        if not layers:
            return
        rows = []
        for layer, norm in layers.items():
            summary = norm_summary(norm)
            undoes = (summary.get("gamma_absdev", 0.0) > self.undo_gamma_tol
                      or summary.get("beta_absmean", 0.0) > self.undo_beta_tol)
            rows.append({"layer": layer, "type": type(norm).__name__} | summary | {"undoes_norm": undoes})
        # Every row gets every column (empty where a layer lacks affine parameters or running stats).
        columns = list(dict.fromkeys(key for row in rows for key in row))
        rows = [{c: row.get(c, "") for c in columns} for row in rows]
        _log_table(trainer, rows, "norm_params", "Normalization-layer parameters",
                   f"Normalization layers at the end of training. undoes_norm: the layer learned to undo its "
                   f"normalization, i.e. gamma_absdev = mean|gamma - 1| > {self.undo_gamma_tol:g} "
                   f"(probes.undo_gamma_tol) or beta_absmean = mean|beta| > {self.undo_beta_tol:g} "
                   f"(probes.undo_beta_tol). Stds are over the layer's features.")
        params = {layer: p for layer, norm in layers.items() if (p := affine_params(norm)) is not None}
        if params:
            plots.log_figure(trainer.logger.experiment, trainer.logger.run_id,
                             plots.gamma_beta_histograms(params), "plots/gamma_beta.png")


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
        _write(self.metrics, trainer)

    def _describe(self, layer: str, what: str, x: torch.Tensor) -> tuple[float, float]:
        """Adds this epoch's histogram of x; returns x's (mean, std) over all its elements."""
        self.per_epoch.setdefault((layer, what), []).append(histograms.histogram(x.float().cpu().numpy(), self.bins))
        std, mean = torch.std_mean(x)
        return mean.item(), std.item()

    def on_exception(self, trainer, pl_module, exception):
        _write(self.metrics, trainer, force=True)

    # A checkpoint (normexp.checkpoints) carries the epochs so far: per (layer, what) the stacked edges
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
        _write(self.metrics, trainer, force=True)
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


def make_callbacks(cfg, val) -> list[pl.Callback]:
    """The probes for one run; `cfg` is the probes config group, `val` the validation Split."""
    probe_x = val.x[: cfg.probe_batch_size]  # (N, C, H, W): the same examples every epoch
    return [ParameterTable(), NormProbe(cfg.undo_gamma_tol, cfg.undo_beta_tol), ActivationProbe(probe_x, cfg.histogram_bins),
            GradientFlow(MetricBuffer(WRITE_EVERY_S), cfg.gradient_every)]
