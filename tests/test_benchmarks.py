"""The benchmark scripts still run: benchmarks/epoch_time.py's --tiny mode (digits, batch 128, ~15 s with
one thread) prints its table."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_epoch_time_tiny_prints_every_mode_for_both_norms():
    # conftest sets OMP_NUM_THREADS=1, which the subprocess inherits: its default --threads is 1.
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "epoch_time.py"), "--tiny"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("data: digits"), lines[0]
    rows = [line.split() for line in lines if line.startswith("(")]
    assert [(" ".join(r[:-12]), r[-12], r[-11]) for r in rows] == [
        (mode, norm, "128") for norm in ("none", "bn") for mode in ("(a) plain", "(b) run", "(c) no probes", "(d) bare")]
    for row in rows:
        train_s, val_s, epoch_s, ratio = map(float, row[-9:-5])
        assert epoch_s > 0 and train_s > 0 and val_s >= 0 and ratio > 0
