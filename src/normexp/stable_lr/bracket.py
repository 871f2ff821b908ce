"""The search strategy for the maximum stable learning rate, as pure functions of the finished trials.

Above the rates that are merely too slow, stability is (nearly) monotone in the learning rate, so
the boundary is bracketed rather than sampled: walk a coarse log grid down from `lr_max` (factor
`grid_factor`) to the first stable rate, then bisect the bracket (max stable, min unstable above it)
in log space until its ratio is <= `resolution`. That costs about log2(grid points) trials where a
log grid of the same resolution costs every point. After the bisection, `refine_trials` more rates
come from Optuna's TPE sampler. The next rate depends only on the finished trials and the ones being
trained now, so a search resumes from its storage and parallel workers share it: k workers keep k
rates inside the bracket at a time, cutting it into k + 1 equal parts in log space (`split`), and no
rate is trained twice.
"""

import math
from dataclasses import dataclass

from normexp.config.schema import SearchRunConfig


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


def split(low: float, high: float, running: list[float], workers: int, resolution: float) -> float | None:
    """The next rate to try inside the bracket (low, high): cut it in log space into k + 1 equal parts,
    k = the rates being tried in it plus this one (at least `workers`), but no finer than `resolution`
    needs; of the cuts, the one farthest from the ends and the running rates. None when every part
    that needs a rate has one. One worker, nothing running: the bisection's midpoint."""
    inside = [lr for lr in running if low < lr < high]
    span = math.log(high / low)
    parts = min(max(workers, len(inside) + 1) + 1, math.ceil(span / math.log(resolution) - 1e-9))
    if parts - 1 <= len(inside):
        return None
    cuts = [low * math.exp(span * i / parts) for i in range(1, parts)]
    return max(cuts, key=lambda cut: min(abs(math.log(cut / lr)) for lr in [low, high, *inside]))


def plan(cfg: SearchRunConfig, trials: list, running: list[tuple[float, str]] = (),
         workers: int = 1) -> tuple[str | None, float | None]:
    """(phase, lr) of the next trial to start: ('grid' | 'bisect', lr), ('refine', None) for TPE, or
    (None, None): nothing to start now (done, when nothing is running). `running`: (lr, phase) of the
    trials being trained now, whose rates are never proposed again; `workers`: how many share the study."""
    points = [(t.params["lr"], t.user_attrs["stable"]) for t in trials]
    busy = [lr for lr, _ in running]
    b = bracket(points)

    def new(lr):
        return not any(math.isclose(lr, seen, rel_tol=1e-9) for seen in [tried for tried, _ in points] + busy)

    grid = coarse_grid(cfg.search)
    if b.max_stable_lr is None:  # walk down until a rate is stable
        lr = next((lr for lr in grid if new(lr)), None)
    elif b.min_unstable_lr is None:  # stable so far only: go up (a resumed or refined study)
        lr = next((lr for lr in reversed(grid) if lr > b.max_stable_lr and new(lr)), None)
    elif b.min_unstable_lr / b.max_stable_lr > cfg.search.resolution * (1 + 1e-9):  # not float noise
        lr = split(b.max_stable_lr, b.min_unstable_lr, busy, workers, cfg.search.resolution)
        return ("bisect", lr) if lr is not None else (None, None)
    else:
        lr = None
    if lr is not None:
        return "grid", lr
    if any(phase != "refine" for _, phase in running):  # their verdicts may move the bracket first
        return None, None
    refined = sum(t.user_attrs.get("phase") == "refine" for t in trials) + [p for _, p in running].count("refine")
    return ("refine", None) if refined < cfg.search.refine_trials else (None, None)
