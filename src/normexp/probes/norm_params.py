"""The norm-parameter probe (gamma, beta and running statistics of every norm layer, each epoch) and the
parameter-count table; the metrics are listed in normexp.probes."""

import numpy as np
import pytorch_lightning as pl
from torch import nn

from normexp.analysis import plots
from normexp.models.networks import norm_layers, parameter_counts
from normexp.models.norms import has_running_stats
from normexp.probes.writing import WRITE_EVERY_S, log_table, write
from normexp.tracking.metrics import MetricBuffer


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
        log_table(trainer, rows, "param_counts", "Parameter counts",
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
        write(self.metrics, trainer)

    def on_exception(self, trainer, pl_module, exception):
        write(self.metrics, trainer, force=True)

    def state_dict(self) -> dict:  # carried by a checkpoint (normexp.training.checkpoints)
        return {"metrics": self.metrics.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.metrics.load_state_dict(state["metrics"])

    def on_fit_end(self, trainer, pl_module):
        write(self.metrics, trainer, force=True)
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
        log_table(trainer, rows, "norm_params", "Normalization-layer parameters",
                   f"Normalization layers at the end of training. undoes_norm: the layer learned to undo its "
                   f"normalization, i.e. gamma_absdev = mean|gamma - 1| > {self.undo_gamma_tol:g} "
                   f"(probes.undo_gamma_tol) or beta_absmean = mean|beta| > {self.undo_beta_tol:g} "
                   f"(probes.undo_beta_tol). Stds are over the layer's features.")
        params = {layer: p for layer, norm in layers.items() if (p := affine_params(norm)) is not None}
        if params:
            plots.log_figure(trainer.logger.experiment, trainer.logger.run_id,
                             plots.gamma_beta_histograms(params), "plots/gamma_beta.png")
