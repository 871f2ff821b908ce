"""What a trained model costs at inference, and BatchNorm folded into the layer before it.

In eval mode BatchNorm is a fixed per-channel affine map, y = gamma * (z - running_mean) / sqrt(running_var + eps)
+ beta, so when it directly follows a Linear/Conv2d (placement=pre) it can be folded into that layer's weight and
bias and removed. After the activation (placement=post) it cannot be folded into the layer before it: the ReLU sits
in between. It is left in place; it is still exact in eval mode, only not free.
"""

import contextlib
import copy
import statistics
import time

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

from normexp.models.norms import has_running_stats


def running_stat_norms(model: nn.Module) -> list[str]:
    """Names of the norms that hold running statistics (BatchNorm1d/2d, scratch.BatchNorm): the foldable kind.

    On a model returned by fold_batchnorm these are the norms that were left unfolded.
    """
    return [name for name, module in model.named_modules() if has_running_stats(module)]


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode with every BatchNorm that directly follows its block's layer folded into it."""
    folded = copy.deepcopy(model).eval()
    for block in list(folded.modules()):  # a list: the loop replaces children as it goes
        layer, norm = getattr(block, "layer", None), getattr(block, "norm", None)
        if not (isinstance(layer, (nn.Linear, nn.Conv2d)) and has_running_stats(norm)):
            continue
        order = list(block._modules)
        if order.index("norm") != order.index("layer") + 1:  # placement=post: layer -> act -> norm
            continue
        # The *_weights helpers rather than fuse_*_bn_eval: fuse_linear_bn_weights needs a gamma tensor, and a
        # BatchNorm with affine=false has weight None; gamma = 1, beta = 0 is what it applies.
        gamma = norm.weight if norm.weight is not None else torch.ones_like(norm.running_mean)
        beta = norm.bias if norm.bias is not None else torch.zeros_like(norm.running_mean)
        fuse = fuse_conv_bn_weights if isinstance(layer, nn.Conv2d) else fuse_linear_bn_weights
        # The layer was built with bias=False when the norm had a shift; the fused layer needs one, and gets it
        # here: a missing bias is treated as zeros and the result is always a Parameter.
        layer.weight, layer.bias = fuse(layer.weight, layer.bias, norm.running_mean, norm.running_var,
                                        norm.eps, gamma, beta)
        block.norm = nn.Identity()  # keeps the name, so probes that look up `<block>.norm` still find a module
    return folded


@contextlib.contextmanager
def _evaluating(*models: nn.Module):
    """Eval mode and no grad for the duration; each model's previous train/eval mode is put back after."""
    modes = [m.training for m in models]
    try:
        with torch.no_grad():
            for m in models:
                m.eval()
            yield
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)


def ms_per_batch(model: nn.Module, x: torch.Tensor, repeats: int = 20, warmup: int = 3) -> float:
    """Median wall-clock milliseconds of one eval-mode forward pass over the batch `x`."""
    if repeats < 1:
        raise ValueError(f"repeats={repeats} must be at least 1")
    times = []
    with _evaluating(model):
        for i in range(warmup + repeats):  # the warm-up passes pay for allocation and kernel selection
            _synchronize(x)
            start = time.perf_counter()
            model(x)
            _synchronize(x)  # CUDA launches are asynchronous: without this we would time the launch only
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)  # the median, so one pass interrupted by the OS does not move it


def fold_max_abs_diff(model: nn.Module, folded: nn.Module, x: torch.Tensor) -> float:
    """max |model(x) - folded(x)| with both in eval mode."""
    with _evaluating(model, folded):
        return (model(x) - folded(x)).abs().max().item()


def inference_metrics(model: nn.Module, x: torch.Tensor, repeats: int = 20) -> dict[str, float]:
    """The inference figures to log at the end of a run, for a batch `x` (callers use 256 samples).

    Models with running-stat norms also get the folded model's time, its max output difference, and how many
    norms were folded and left (placement=post leaves all of them, so there "folded" is the same model).
    """
    metrics = {"inference/ms_per_batch": ms_per_batch(model, x, repeats)}
    norms = running_stat_norms(model)
    if not norms:  # none, ln, gn, in: nothing to fold
        return metrics
    folded = fold_batchnorm(model)
    left = running_stat_norms(folded)
    metrics["inference/ms_per_batch_folded"] = ms_per_batch(folded, x, repeats)
    metrics["inference/fold_max_abs_diff"] = fold_max_abs_diff(model, folded, x)
    metrics["inference/bn_folded"] = float(len(norms) - len(left))
    metrics["inference/bn_unfolded"] = float(len(left))
    return metrics


def _synchronize(x: torch.Tensor) -> None:
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
