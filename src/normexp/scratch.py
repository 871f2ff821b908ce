"""`python -m normexp.scratch --check`: the hand-written BatchNorm and LayerNorm (normexp.models.scratch)
against torch's, forward, backward and running statistics, and GroupNorm against InstanceNorm/LayerNorm."""

import argparse
import sys

import torch
from torch import nn

from normexp.models.scratch import BatchNorm, LayerNorm, BatchNormFunction, LayerNormFunction


def compare_with_torch(shape, kind, steps=3, seed=0):
    """Run ours and torch's layer side by side for `steps` training steps, then once in eval mode.

    kind is "batch" or "layer" (LayerNorm normalizes the last dim of 2D inputs, the last two of 4D ones).
    Returns the max abs difference of each compared quantity over all steps, in float32.
    """
    gen = torch.Generator().manual_seed(seed)
    if kind == "batch":
        ours, ref = BatchNorm(shape[1]), (nn.BatchNorm1d if len(shape) == 2 else nn.BatchNorm2d)(shape[1])
    else:
        normalized = shape[-1] if len(shape) == 2 else shape[-2:]
        ours, ref = LayerNorm(normalized), nn.LayerNorm(normalized)
    with torch.no_grad():  # non-trivial gamma/beta, so a mistake in their use cannot hide behind 1s and 0s
        for p in (ours.weight, ours.bias):
            p.copy_(1 + 0.5 * torch.randn(p.shape, generator=gen))
        ref.load_state_dict(ours.state_dict())
    diff = {}

    def record(name, a, b):
        diff[name] = max(diff.get(name, 0.0), (a - b).abs().max().item())

    for _ in range(steps):
        x = 2 * torch.randn(shape, generator=gen) + 0.5  # non-zero mean, non-unit variance
        dy = torch.randn(shape, generator=gen)  # upstream gradient
        outs, grads = [], []
        for module in (ours, ref):
            module.zero_grad()
            xi = x.clone().requires_grad_()
            y = module(xi)
            y.backward(dy)
            outs.append(y.detach())
            grads.append((xi.grad, module.weight.grad, module.bias.grad))
        record("output", *outs)
        for name, a, b in zip(["grad_input", "grad_weight", "grad_bias"], *grads):
            record(name, a, b)
    if kind == "batch":
        record("running_mean", ours.running_mean, ref.running_mean)
        record("running_var", ours.running_var, ref.running_var)
    ours.eval()
    ref.eval()
    x = 2 * torch.randn(shape, generator=gen) + 0.5
    with torch.no_grad():
        record("eval_output", ours(x), ref(x))
    return diff


def gradcheck_functions():
    """torch.autograd.gradcheck in float64 for both hand-written backwards, on small shapes."""
    gen = torch.Generator().manual_seed(0)

    def check(fn, x_shape, param_shape):
        x, gamma, beta = (torch.randn(s, generator=gen, dtype=torch.float64, requires_grad=True)
                          for s in (x_shape, param_shape, param_shape))
        return torch.autograd.gradcheck(fn, (x, gamma, beta, 1e-5), raise_exception=False)

    return {
        "BatchNorm (3, 4)": check(BatchNormFunction.apply, (3, 4), (4,)),
        "BatchNorm (2, 3, 2, 2)": check(BatchNormFunction.apply, (2, 3, 2, 2), (3,)),
        "LayerNorm (3, 5)": check(LayerNormFunction.apply, (3, 5), (5,)),
        "LayerNorm (2, 3, 2, 2)": check(LayerNormFunction.apply, (2, 3, 2, 2), (2, 2)),
    }


def compare_group_norm(shape, seed=0):
    """Max abs output difference of GroupNorm against the two torch norms it reduces to, on (N, C, H, W) inputs.

    "instance": GroupNorm(C, C) (one channel per group) vs InstanceNorm2d(C, affine=True), gamma/beta copied.
    "layer": GroupNorm(1, C) vs LayerNorm([C, H, W]) (what norm=ln builds for conv layers rests on this). Their
    affines differ in shape, per channel (C,) vs elementwise (C, H, W), so LayerNorm gets GroupNorm's gamma/beta
    broadcast over (H, W): the affine stays in the comparison instead of being switched off.
    """
    gen = torch.Generator().manual_seed(seed)
    channels, chw = shape[1], shape[1:]
    per_channel, single = nn.GroupNorm(channels, channels), nn.GroupNorm(1, channels)
    instance, layer = nn.InstanceNorm2d(channels, affine=True), nn.LayerNorm(chw)
    with torch.no_grad():
        for p in (*per_channel.parameters(), *single.parameters()):  # non-trivial gamma/beta, as above
            p.copy_(1 + 0.5 * torch.randn(p.shape, generator=gen))
        instance.load_state_dict(per_channel.state_dict())
        layer.weight.copy_(single.weight[:, None, None].expand(chw))  # (C,) -> (C, H, W)
        layer.bias.copy_(single.bias[:, None, None].expand(chw))
        x = 2 * torch.randn(shape, generator=gen) + 0.5
        return {"instance": (per_channel(x) - instance(x)).abs().max().item(),
                "layer": (single(x) - layer(x)).abs().max().item()}


CHECK_SHAPES = [(2, 3), (7, 5), (16, 33), (4, 3, 5, 5), (2, 7, 3, 3)]
GROUP_SHAPES = [(4, 3, 5, 5), (2, 7, 3, 3), (8, 32, 14, 14)]
COLUMNS = ["output", "grad_input", "grad_weight", "grad_bias", "running_mean", "running_var", "eval_output"]
TOLERANCE = 1e-5


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m normexp.scratch",
                                     description="Compare the hand-written BatchNorm/LayerNorm with torch's, "
                                                 "and GroupNorm with InstanceNorm/LayerNorm.")
    parser.add_argument("--check", action="store_true", help="run the comparisons and gradcheck, exit 1 on failure")
    if not parser.parse_args(argv).check:
        parser.print_usage()
        return 2
    ok = True
    print(f"max abs difference vs torch.nn after 3 training steps + eval, float32 (tolerance {TOLERANCE:g})")
    print(f"{'check':<26}" + "".join(f"{c:>13}" for c in COLUMNS) + "  result")
    for kind, name in (("batch", "BatchNorm"), ("layer", "LayerNorm")):
        for shape in CHECK_SHAPES:
            diff = compare_with_torch(shape, kind)
            passed = max(diff.values()) <= TOLERANCE
            ok &= passed
            cells = "".join(f"{diff[c]:>13.2e}" if c in diff else f"{'-':>13}" for c in COLUMNS)
            print(f"{f'{name} {shape}':<26}{cells}  {'ok' if passed else 'FAIL'}")
    print(f"\nGroupNorm vs the torch norm it reduces to, max abs output difference, float32 (tolerance {TOLERANCE:g})")
    print(f"{'check':<26}{'GN(C, C)=IN':>13}{'GN(1, C)=LN':>13}  result")
    for shape in GROUP_SHAPES:
        diff = compare_group_norm(shape)
        passed = max(diff.values()) <= TOLERANCE
        ok &= passed
        cells = f"{diff['instance']:>13.2e}{diff['layer']:>13.2e}"
        print(f"{f'GroupNorm {shape}':<26}{cells}  {'ok' if passed else 'FAIL'}")
    print("\ntorch.autograd.gradcheck, float64")
    for name, passed in gradcheck_functions().items():
        ok &= passed
        print(f"{name:<26}  {'ok' if passed else 'FAIL'}")
    print("\nALL CHECKS PASSED" if ok else "\nSOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
