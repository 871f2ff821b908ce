"""Statistics over seeds, and how a table cell shows them: mean ± std, and paired comparisons with a
95% confidence interval that says so when it contains "no difference"."""

import math
import statistics

from scipy.stats import t as student_t


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


def interval(values, level: float = 0.95) -> tuple[float, float, int]:
    """(mean, half-width of the Student-t confidence interval, n) of the finite values; the half-width
    is NaN below two values (one seed gives no interval)."""
    mean, std, n = describe(values)
    if n < 2:
        return mean, math.nan, n
    return mean, float(student_t.ppf((1 + level) / 2, n - 1)) * std / math.sqrt(n), n


def paired_cell(values, null: float, spec: str = "+.3f", unit: str = "") -> str:
    """Per-seed comparisons as 'mean ± std (n=3, 95% CI lo..hi)', marked 'no clear difference' when the
    interval contains `null` (0 for a difference, 1 for a ratio)."""
    mean, half, n = interval(values)
    if n == 0:
        return "—"
    if n == 1:
        return f"{mean:{spec}}{unit} (one seed: no interval)"
    std = describe(values)[1]
    low, high = mean - half, mean + half
    text = f"{mean:{spec}}{unit} ± {std:{spec.lstrip('+')}} (n={n}, 95% CI {low:{spec}}..{high:{spec}})"
    return text + (", no clear difference" if low <= null <= high else "")


def ratio_interval(ratios, level: float = 0.95) -> tuple[float, float, float, int]:
    """(geometric mean, low, high, n) of positive per-seed ratios: the Student-t interval of their logs,
    back on the ratio scale. A ratio's noise is multiplicative (one epoch more or less moves 3/6 and 6/3
    alike), so its arithmetic mean and a symmetric interval would misstate both; low and high are NaN
    below two values."""
    logs = [math.log(r) for r in ratios if r is not None and math.isfinite(r) and r > 0]
    mean, half, n = interval(logs, level)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half), n


def ratio_cell(ratios) -> str:
    """Per-seed ratios as 'geometric mean (n=5, 95% CI lo..hi)x', marked 'no clear difference' when the
    interval contains 1."""
    mean, low, high, n = ratio_interval(ratios)
    if n == 0:
        return "—"
    if n == 1:
        return f"{mean:.2f}x (one seed: no interval)"
    return f"{mean:.2f}x (geometric mean, n={n}, 95% CI {low:.2f}..{high:.2f})" + (
        ", no clear difference" if low <= 1 <= high else "")
