"""The four verdicts a claim can get from its per-seed paired values, and how many seeds would decide one
that the seeds do not decide yet.

A claim is about one effect in one direction (BN is faster, BN gives higher accuracy), with a margin M that
the question states (its preset's answers.margin): an effect within ±M does not matter. A difference is
judged on its per-seed values; a ratio (a speedup) on its per-seed logs, M being a factor then (1.1: within
10% either way). With the 95% Student-t interval [low, high] of the values, oriented so that the claimed
direction is up:
- no difference beyond ±M: -M < low and high < M (an equivalence verdict; first, as an effect within the
  margin does not matter even when the interval is clear of zero);
- holds: low > 0, the interval is clear of no effect; a range claim ("2-10x") says which part is shown;
- does not hold: high < M, the interval excludes the claimed effect, and it is not within ±M: the only
  verdict that says "on this setup";
- inconclusive at n seeds: none of these, with about how many seeds would decide at the observed spread.
"""

import math
from dataclasses import dataclass

from scipy.stats import t as student_t

from normexp.analysis.stats import describe, interval

HOLDS, NO_DIFFERENCE, DOES_NOT_HOLD, INCONCLUSIVE = "holds", "no difference", "does not hold", "inconclusive"
MOST_SEEDS = 1000  # the seed estimate looks no further: beyond it, read "more seeds than any run here"


@dataclass(frozen=True)
class Claim:
    effect: str                  # what the values are, e.g. "speedup (epochs to target, none / bn)"
    word: str                    # the claimed direction, read after "not" too: "faster", "worse at batch 2"
    margin: float                # no difference beyond ±margin (a ratio's: beyond margin x either way)
    ratio: bool = False          # the values are ratios, judged on their logs
    sign: int = 1                # +1: the claim is that the effect is above no effect; -1: below it
    size: tuple[float, float] | None = None  # a range claim's size, e.g. (2, 10) for "2-10x"


@dataclass(frozen=True)
class Judgement:
    kind: str                    # HOLDS, NO_DIFFERENCE, DOES_NOT_HOLD or INCONCLUSIVE
    words: str                   # the verdict as the page says it: "holds (faster: yes; 2-10x: not shown)"
    measure: str                 # what was measured (the claim's effect): "speedup"
    shown: str                   # the effect's mean: "1.58x", "+0.012" ("" with no pairs)
    bounds: str | None           # its 95% interval: "1.10..2.27" (None: fewer than two pairs)
    n: int                       # seeds paired
    seeds_needed: int | None     # INCONCLUSIVE: seeds that would decide at the observed spread (None: unknown)

    def value(self, seeds: int | None = None) -> str:
        """The effect: "1.58x, 95% CI 1.10..2.27 (n=5)", or "no pairs". With `seeds`, for a table whose
        header names the 95% CI and the seeds: "1.58x [1.10..2.27]", its n given only where it is not `seeds`."""
        if self.n == 0:
            return "no pairs"
        n = "" if self.n == seeds else f" (n={self.n})"
        if seeds is not None:
            return (self.shown if self.bounds is None else f"{self.shown} [{self.bounds}]") + n
        return f"{self.shown}{n}" if self.bounds is None else f"{self.shown}, 95% CI {self.bounds}{n}"

    def effect(self, seeds: int | None = None) -> str:
        """The evidence: "speedup 1.58x, 95% CI 1.10..2.27 (n=5)"; `seeds` as in value."""
        return f"{self.measure}: {self.value(seeds)}" if self.n == 0 else f"{self.measure} {self.value(seeds)}"


def seeds_to_decide(mean: float, std: float, margin: float) -> int | None:
    """The fewest seeds whose 95% interval, at this mean and spread (oriented, log scale for a ratio), would
    give a verdict: holds needs the half-width below `mean`, the other two below `margin - mean` (then high <
    margin). None beyond MOST_SEEDS or when the spread is unknown."""
    distance = max(mean, margin - mean)
    if not math.isfinite(std) or distance <= 0:
        return None
    if std == 0:
        return 2
    for n in range(2, MOST_SEEDS + 1):
        if float(student_t.ppf(0.975, n - 1)) * std / math.sqrt(n) < distance:
            return n
    return None


def _shown(claim: Claim, values: list[float]) -> tuple[str, str | None]:
    """(the mean as shown, its 95% interval or None under two values): ("1.58x", "1.10..2.27")."""
    if claim.ratio:
        mean, half, n = interval([math.log(v) for v in values if v > 0])
        shown = f"{math.exp(mean):.2f}x"
        bounds = f"{math.exp(mean - half):.2f}..{math.exp(mean + half):.2f}"
    else:
        mean, half, n = interval(values)
        shown, bounds = f"{mean:+.3f}", f"{mean - half:+.3f}..{mean + half:+.3f}"
    return ("", None) if n == 0 else (shown, None) if n < 2 else (shown, bounds)


def _size_part(claim: Claim, low: float, high: float) -> str:
    """'2-10x: yes' when the interval lies within the claimed range, 'no' when it lies outside it."""
    small, large = claim.size
    shown = "yes" if small <= low and high <= large else "no" if high < small or low > large else "not shown"
    return f"{small:g}-{large:g}x: {shown}"


def judge(claim: Claim, values: list[float]) -> Judgement:
    """The verdict of `claim` on its per-seed values (module docstring)."""
    values = [v for v in values if v is not None and math.isfinite(v) and (v > 0 or not claim.ratio)]
    oriented = [claim.sign * (math.log(v) if claim.ratio else v) for v in values]
    margin = math.log(claim.margin) if claim.ratio else claim.margin
    mean, half, n = interval(oriented)
    shown, bounds = _shown(claim, values)

    def judgement(kind: str, words: str, needed: int | None = None) -> Judgement:
        return Judgement(kind, words, claim.effect, shown, bounds, n, needed)

    if n < 2:
        return judgement(INCONCLUSIVE, f"inconclusive at {n} seed{'s' * (n != 1)} (no interval)")
    low, high = mean - half, mean + half
    if -margin < low and high < margin:  # first: an effect clear of zero but within the margin does not matter
        either = f"{claim.margin:g}x either way" if claim.ratio else f"±{claim.margin:g}"
        return judgement(NO_DIFFERENCE, f"no difference beyond {either}")
    if low > 0:
        parts = [f"{claim.word}: yes"] + ([_size_part(claim, math.exp(low), math.exp(high))] if claim.size else [])
        return judgement(HOLDS, f"holds ({'; '.join(parts)})" if claim.size else HOLDS)
    if high < margin:
        return judgement(DOES_NOT_HOLD, f"does not hold on this setup (not {claim.word})")
    needed = seeds_to_decide(mean, describe(oriented)[1], margin)
    estimate = f"about {needed} would decide" if needed else f"more than {MOST_SEEDS} would be needed"
    return judgement(INCONCLUSIVE, f"inconclusive at {n} seeds ({estimate})", needed)
