import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from normexp import scratch
from normexp.models.scratch import BatchNorm, LayerNorm
from normexp.scratch import (CHECK_SHAPES, COLUMNS, GROUP_SHAPES, TOLERANCE, compare_group_norm, compare_with_torch,
                             gradcheck_functions, main)

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.mark.parametrize("shape", CHECK_SHAPES)
@pytest.mark.parametrize("kind", ["batch", "layer"])
def test_matches_torch_in_train_and_eval(kind, shape):
    diff = compare_with_torch(shape, kind, steps=3, seed=0)
    expected = set(COLUMNS) if kind == "batch" else set(COLUMNS) - {"running_mean", "running_var"}
    assert set(diff) == expected
    assert max(diff.values()) <= TOLERANCE, diff


def test_gradcheck_float64_both_functions():
    results = gradcheck_functions()
    assert any(name.startswith("BatchNorm") for name in results)
    assert any(name.startswith("LayerNorm") for name in results)
    assert all(results.values()), results


@pytest.mark.parametrize("shape", GROUP_SHAPES)
def test_group_norm_equals_instance_norm_and_layer_norm(shape):
    diff = compare_group_norm(shape, seed=0)
    assert set(diff) == {"instance", "layer"}
    assert max(diff.values()) <= TOLERANCE, diff


def test_group_norm_comparison_sees_a_norm_that_differs(monkeypatch):
    # eps 0.1 instead of 1e-5 in the reference norms: a comparison that passed regardless would miss it.
    for name in ("InstanceNorm2d", "LayerNorm"):
        monkeypatch.setattr(torch.nn, name, functools.partial(getattr(torch.nn, name), eps=0.1))
    diff = compare_group_norm((4, 3, 5, 5))
    assert min(diff.values()) > 100 * TOLERANCE, diff


def test_check_fails_when_an_equivalence_is_off(monkeypatch, capsys):
    monkeypatch.setattr(scratch, "compare_group_norm", lambda shape: {"instance": 0.0, "layer": 1e-3})
    assert main(["--check"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "SOME CHECKS FAILED" in out


def test_running_var_is_unbiased_and_uses_torch_momentum():
    bn = BatchNorm(1)  # momentum 0.1
    bn(torch.tensor([[0.0], [2.0]]))  # batch mean 1, biased var 1, unbiased var 2
    assert bn.running_mean.item() == pytest.approx(0.9 * 0 + 0.1 * 1)
    assert bn.running_var.item() == pytest.approx(0.9 * 1 + 0.1 * 2)  # the biased var would give 1.0
    assert bn.num_batches_tracked.item() == 1


def test_eval_uses_running_stats_and_leaves_them_alone():
    bn = BatchNorm(2)
    bn.running_mean.fill_(1.0)
    bn.running_var.fill_(4.0)
    bn.eval()
    y = bn(torch.full((3, 2), 3.0))
    torch.testing.assert_close(y, torch.full((3, 2), 2.0 / (4.0 + bn.eps) ** 0.5))
    assert bn.running_mean.tolist() == [1.0, 1.0] and bn.num_batches_tracked.item() == 0


def test_rejects_bad_inputs_with_the_bad_value():
    with pytest.raises(ValueError, match=r"got 3D input of shape \(2, 3, 4\)"):
        BatchNorm(3)(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="expects 3 channels in dim 1, got 5"):
        BatchNorm(3)(torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"ending in \(4,\), got shape \(2, 5\)"):
        LayerNorm(4)(torch.randn(2, 5))


def test_extra_repr():
    assert repr(BatchNorm(3)) == "BatchNorm(3, eps=1e-05, momentum=0.1)"
    assert repr(LayerNorm((3, 4))) == "LayerNorm((3, 4), eps=1e-05)"


def test_check_command_passes_and_names_every_check():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-m", "normexp.scratch", "--check"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    for column in COLUMNS:
        assert column in result.stdout
    for shape in CHECK_SHAPES:
        assert f"BatchNorm {shape}" in result.stdout and f"LayerNorm {shape}" in result.stdout
    for shape in GROUP_SHAPES:
        assert f"GroupNorm {shape}" in result.stdout
    assert "GN(C, C)=IN" in result.stdout and "GN(1, C)=LN" in result.stdout
    for name in gradcheck_functions():
        assert name in result.stdout
    assert "gradcheck" in result.stdout and "ALL CHECKS PASSED" in result.stdout


def test_without_check_prints_usage(capsys):
    assert main([]) != 0
    assert "usage:" in capsys.readouterr().out
