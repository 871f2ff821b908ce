"""Statistics over seeds, and how a table cell shows them."""

import math
import statistics


def describe(values) -> tuple[float, float, int]:
    """(mean, std over seeds, n) of the finite values; std is 0 for one value."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return math.nan, math.nan, 0
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0, len(finite)


def shown(values, spec: str = ".3f") -> str:
    """'0.973' for one value, '0.973 ± 0.004' for several, '—' for none."""
    mean, std, n = describe(values)
    if n == 0:
        return "—"
    return f"{mean:{spec}}" if n == 1 else f"{mean:{spec}} ± {std:{spec}}"


def numbers(prefix: str, values) -> dict:
    """{prefix_mean, prefix_std}: a cell's content as numbers, for a CSV row."""
    mean, std, _ = describe(values)
    return {f"{prefix}_mean": mean, f"{prefix}_std": std}
