"""The search strategy for the maximum stable learning rate, as pure functions of the finished trials.

Above the rates that are merely too slow, stability is (nearly) monotone in the learning rate, so
the boundary is bracketed rather than sampled: walk a coarse log grid down from `lr_max` (factor
`grid_factor`) to the first stable rate, then bisect the bracket (max stable, min unstable above it)
in log space until its ratio is <= `resolution`. That costs about log2(grid points) trials where a
log grid of the same resolution costs every point. After the bisection, `refine_trials` more rates
come from Optuna's TPE sampler. The next rate depends only on the finished trials, so a search
resumes from its storage.
"""

import math
from dataclasses import dataclass


@dataclass
class Bracket:
    max_stable_lr: float | None
    min_unstable_lr: float | None        # the lowest unstable rate above max_stable_lr
    non_monotone_lrs: list[float]        # unstable rates at or below max_stable_lr


def bracket(points: list[tuple[float, bool]]) -> Bracket:
    """points: (lr, stable) of every finished trial."""
    best = max((lr for lr, stable in points if stable), default=None)
    if best is None:
        return Bracket(None, None, [])
    unstable = [lr for lr, stable in points if not stable]
    return Bracket(best, min((lr for lr in unstable if lr > best), default=None),
                   sorted(lr for lr in unstable if lr <= best))


def coarse_grid(s) -> list[float]:
    """lr_max, lr_max / grid_factor, ... down to lr_min (included)."""
    count = math.floor(math.log(s.lr_max / s.lr_min) / math.log(s.grid_factor) + 1e-9)
    grid = [s.lr_max / s.grid_factor**k for k in range(count + 1)]
    return grid if math.isclose(grid[-1], s.lr_min) else grid + [s.lr_min]


def plan(cfg, trials: list) -> tuple[str | None, float | None]:
    """(phase, lr) of the next trial: ('grid' | 'bisect', lr), ('refine', None) for TPE, or (None, None): done."""
    points = [(t.params["lr"], t.user_attrs["stable"]) for t in trials]
    b = bracket(points)

    def new(lr):
        return not any(math.isclose(lr, tried, rel_tol=1e-9) for tried, _ in points)

    grid = coarse_grid(cfg.search)
    if b.max_stable_lr is None:  # walk down until a rate is stable
        lr = next((lr for lr in grid if new(lr)), None)
    elif b.min_unstable_lr is None:  # stable so far only: go up (a resumed or refined study)
        lr = next((lr for lr in reversed(grid) if lr > b.max_stable_lr and new(lr)), None)
    elif b.min_unstable_lr / b.max_stable_lr > cfg.search.resolution * (1 + 1e-9):  # not float noise
        return "bisect", math.sqrt(b.max_stable_lr * b.min_unstable_lr)
    else:
        lr = None
    if lr is not None:
        return "grid", lr
    refined = sum(t.user_attrs.get("phase") == "refine" for t in trials)
    return ("refine", None) if refined < cfg.search.refine_trials else (None, None)
