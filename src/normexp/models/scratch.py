"""BatchNorm and LayerNorm written out by hand, forward and backward.

Both layers do the same math, only along a different axis. View the input as a
matrix whose columns each own one gamma/beta pair:
  BatchNorm: rows = every (sample, pixel), columns = channels  -> statistics per column (dim 0)
  LayerNorm: rows = every sample,         columns = features  -> statistics per row    (dim 1)
With m = number of elements each statistic averages over:
  forward:  mu = mean(x),  var = mean((x - mu)^2),  x_hat = (x - mu) / sqrt(var + eps),  y = gamma * x_hat + beta
  backward: dx = (1/m) * inv_std * (m * dxhat - sum(dxhat) - x_hat * sum(dxhat * x_hat)),  with dxhat = dy * gamma

Checked against torch (and GroupNorm against InstanceNorm/LayerNorm) by `python -m normexp.scratch --check`.
"""

import torch
from torch import nn


def _normalize(x, gamma, beta, eps, dim):
    """Forward on a (rows, cols) matrix; statistics along `dim`, gamma/beta are per column (cols,)."""
    mean = x.mean(dim, keepdim=True)  # mu = (1/m) sum x                   (1, cols) or (rows, 1)
    var = ((x - mean) ** 2).mean(dim, keepdim=True)  # var = (1/m) sum (x - mu)^2, biased: what we divide by
    inv_std = torch.rsqrt(var + eps)  # 1 / sqrt(var + eps)
    x_hat = (x - mean) * inv_std  # x_hat = (x - mu) / sqrt(var + eps)   (rows, cols)
    return gamma * x_hat + beta, x_hat, inv_std  # y = gamma * x_hat + beta


def _normalize_backward(dy, x_hat, inv_std, gamma, dim):
    """Closed-form backward of _normalize; dy is (rows, cols)."""
    m = x_hat.shape[dim]
    dgamma = (dy * x_hat).sum(0)  # dgamma = sum dy * x_hat over rows     (cols,)
    dbeta = dy.sum(0)  # dbeta = sum dy over rows                          (cols,)
    dxhat = dy * gamma  # dL/dx_hat                                         (rows, cols)
    # mu and var depend on every x in the group, hence the two correction sums.
    dx = inv_std / m * (m * dxhat
                        - dxhat.sum(dim, keepdim=True)
                        - x_hat * (dxhat * x_hat).sum(dim, keepdim=True))
    return dx, dgamma, dbeta


def _channels_last(x):
    """(N, C, *spatial) -> (N * prod(spatial), C): one row per (sample, pixel), one column per channel."""
    return x.movedim(1, -1).reshape(-1, x.shape[1])


class BatchNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, gamma, beta, eps):  # x: (N, C) or (N, C, H, W); gamma, beta: (C,)
        y, x_hat, inv_std = _normalize(_channels_last(x), gamma, beta, eps, dim=0)
        ctx.save_for_backward(x_hat, inv_std, gamma)
        ctx.shape = x.movedim(1, -1).shape  # to undo _channels_last
        return y.reshape(ctx.shape).movedim(-1, 1)

    @staticmethod
    def backward(ctx, dy):
        x_hat, inv_std, gamma = ctx.saved_tensors
        dx, dgamma, dbeta = _normalize_backward(_channels_last(dy), x_hat, inv_std, gamma, dim=0)
        return dx.reshape(ctx.shape).movedim(-1, 1), dgamma, dbeta, None  # no gradient for eps


class LayerNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, gamma, beta, eps):  # x: (*, *normalized_shape); gamma, beta: normalized_shape
        cols = gamma.numel()  # m = number of normalized elements per sample
        y, x_hat, inv_std = _normalize(x.reshape(-1, cols), gamma.reshape(cols), beta.reshape(cols), eps, dim=1)
        ctx.save_for_backward(x_hat, inv_std, gamma)
        return y.reshape(x.shape)

    @staticmethod
    def backward(ctx, dy):
        x_hat, inv_std, gamma = ctx.saved_tensors
        cols = gamma.numel()
        dx, dgamma, dbeta = _normalize_backward(dy.reshape(-1, cols), x_hat, inv_std, gamma.reshape(cols), dim=1)
        return dx.reshape(dy.shape), dgamma.reshape(gamma.shape), dbeta.reshape(gamma.shape), None


class BatchNorm(nn.Module):
    """Batch normalization over dim 1 of (N, D) or (N, C, H, W) inputs.

    Training: y = weight * (x - mean_B) / sqrt(var_B + eps) + bias, with mean_B and biased var_B
    taken over every dim except dim 1. Running statistics follow PyTorch's momentum convention,
        running = (1 - momentum) * running + momentum * batch_stat,
    with the unbiased batch variance (m / (m - 1) * var_B) for running_var. This is the opposite of
    Keras, where momentum weights the old value (PyTorch momentum=0.1 ~ Keras momentum=0.9).
    Eval: the same formula with running_mean / running_var in place of the batch statistics.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features))  # gamma
        self.bias = nn.Parameter(torch.zeros(num_features))  # beta
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x):
        if x.dim() not in (2, 4):
            raise ValueError(f"BatchNorm expects a 2D (N, D) or 4D (N, C, H, W) input, got {x.dim()}D input "
                             f"of shape {tuple(x.shape)}")
        if x.shape[1] != self.num_features:
            raise ValueError(f"BatchNorm expects {self.num_features} channels in dim 1, got {x.shape[1]}")
        if not self.training:
            shape = (1, -1) + (1,) * (x.dim() - 2)  # broadcast (C,) over (N, C, ...)
            inv_std = torch.rsqrt(self.running_var.view(shape) + self.eps)
            return self.weight.view(shape) * (x - self.running_mean.view(shape)) * inv_std + self.bias.view(shape)
        rows = _channels_last(x.detach())  # (m, C); the running stats are bookkeeping, not part of the graph
        if rows.shape[0] < 2:
            raise ValueError(f"BatchNorm needs more than 1 value per channel in training, got input of shape "
                             f"{tuple(x.shape)}")
        with torch.no_grad():
            self.running_mean.lerp_(rows.mean(0), self.momentum)  # (1 - momentum) * running + momentum * mean_B
            self.running_var.lerp_(rows.var(0, correction=1), self.momentum)  # unbiased: sum (x - mu)^2 / (m - 1)
            self.num_batches_tracked += 1
        return BatchNormFunction.apply(x, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


class LayerNorm(nn.Module):
    """Layer normalization over the last len(normalized_shape) dims of each sample; same in train and eval.

    y = weight * (x - mean) / sqrt(var + eps) + bias, mean and biased var per sample, weight/bias elementwise.
    """

    def __init__(self, normalized_shape, eps=1e-5):
        super().__init__()
        self.normalized_shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(self.normalized_shape))  # gamma
        self.bias = nn.Parameter(torch.zeros(self.normalized_shape))  # beta

    def forward(self, x):
        k = len(self.normalized_shape)
        if tuple(x.shape[x.dim() - k:]) != self.normalized_shape:
            raise ValueError(f"LayerNorm expects input ending in {self.normalized_shape}, got shape {tuple(x.shape)}")
        return LayerNormFunction.apply(x, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}"
