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
Artifacts: probes/param_counts.{md,csv}, probes/norm_params.{md,csv}, probes/histograms.npz (normexp.analysis.histograms),
plots/gamma_beta.png, plots/activation_evolution.png, plots/before_after_norm.png.
Gradient flow (grad/<layer>/norm, ratio; plots/gradient_flow.png) is probes/gradients.py, registered here too.
"""

import pytorch_lightning as pl

from normexp.probes.activations import ActivationProbe
from normexp.probes.gradients import GradientFlow
from normexp.probes.norm_params import NormProbe, ParameterTable
from normexp.probes.writing import WRITE_EVERY_S
from normexp.tracking.metrics import MetricBuffer
from normexp.config.schema import ProbesConfig


def make_callbacks(cfg: ProbesConfig, val) -> list[pl.Callback]:
    """The probes for one run; `cfg` is the probes config group, `val` the validation Split."""
    probe_x = val.x[: cfg.probe_batch_size]  # (N, C, H, W): the same examples every epoch
    return [ParameterTable(), NormProbe(cfg.undo_gamma_tol, cfg.undo_beta_tol), ActivationProbe(probe_x, cfg.histogram_bins),
            GradientFlow(MetricBuffer(WRITE_EVERY_S), cfg.gradient_every)]
