"""model=seq: a small transformer that reads an image row by row, where LayerNorm is the usual choice.

An image (N, C, H, W) is a sequence of H tokens, row h being the W*C pixels of that row. With
dataset.variable_length=true the rows past an image's length are NaN (normexp.data marks them, so
batches stay plain (x, y)); the model takes its mask from them: a token is valid when its row has no NaN.

Padding never reaches a statistic: every norm, and each block's MLP, runs on the valid tokens only,
gathered into one (M, D) matrix (M = valid tokens in the batch). So BatchNorm's batch statistics are
over the batch's valid tokens (a masked BatchNorm, with torch's own layer), attention ignores padded
keys, and the classifier averages the valid tokens. Each block is named like the MLP's hidden blocks
(`layer`, `norm`, `act`), so the probes and the gradient flow find them; the probes see (M, D) tensors.
"""

import torch
from torch import nn

from normexp.models import norms
from normexp.config.schema import ModelConfig


class Block(nn.Module):
    """One norm feeding attention and an MLP in parallel (GPT-J / PaLM's parallel block):
    placement=pre: x + attn(norm(x)) + mlp(norm(x));  post: norm(x + attn(x) + mlp(x)) (the original
    Transformer's post-norm). mlp = proj(act(layer(.))). For norm=none the block has no `norm` at all."""

    def __init__(self, width: int, mlp_width: int, heads: int, norm_cfg: ModelConfig, dropout: float):
        super().__init__()
        norm = norms.make_norm(norm_cfg, width, spatial=False)
        if norm is not None:  # registered first: a norm before `layer` is never folded into it (inference.py)
            self.norm = norm
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.layer = nn.Linear(width, mlp_width)
        self.act = nn.ReLU()
        self.proj = nn.Linear(mlp_width, width)
        self.drop = nn.Dropout(dropout)
        self.pre_norm = norm_cfg.placement == "pre"

    def _normalize(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        if not hasattr(self, "norm"):
            return x
        out = torch.zeros_like(x)
        out[valid] = self.norm(x[valid])  # (M, D): statistics over the valid tokens only
        return out

    def _mlp(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        out[valid] = self.proj(self.act(self.layer(x[valid])))  # (M, D) -> (M, mlp_width) -> (M, D)
        return out

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:  # x (N, T, D), valid (N, T)
        h = self._normalize(x, valid) if self.pre_norm else x
        mixed, _ = self.attn(h, h, h, key_padding_mask=~valid, need_weights=False)  # (N, T, D)
        branch = self.drop(mixed * valid.unsqueeze(-1) + self._mlp(h, valid))  # padded tokens stay 0
        return x + branch if self.pre_norm else self._normalize(x + branch, valid)


class SequenceClassifier(nn.Module):
    """Rows -> tokens (embed + learned position) -> blocks block1..blockN -> mean of valid tokens -> Dense."""

    def __init__(self, cfg: ModelConfig, norm_cfg: ModelConfig, input_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        channels, height, width = input_shape
        self.embed = nn.Linear(width * channels, cfg.width)
        self.position = nn.Parameter(torch.randn(height, cfg.width) * 0.02)  # (T, D); GPT-2's scale
        for i in range(1, cfg.depth + 1):
            self.add_module(f"block{i}", Block(cfg.width, cfg.mlp_width, cfg.heads, norm_cfg, cfg.dropout))
        self.out = nn.Linear(cfg.width, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, num_classes)
        rows = images.permute(0, 2, 3, 1).flatten(2)  # (N, T=H, W*C): token t is row t
        valid = ~rows.isnan().any(dim=2)  # (N, T); normexp.data pads with NaN rows
        x = (self.embed(rows.nan_to_num(0.0)) + self.position[: rows.shape[1]]) * valid.unsqueeze(-1)  # (N, T, D)
        for block in self.children():
            if isinstance(block, Block):
                x = block(x, valid)
        pooled = x.sum(dim=1) / valid.sum(dim=1, keepdim=True)  # (N, D): padded tokens are 0
        return self.out(pooled)
