"""Paired comparisons of experiment rows: one value per (row, seed), rows of a seed trained in pairs.

Within a seed every row starts from the same initial weights (apart from zero-initialised offset
predictors) and sees the same data in the same order, so the seed-to-seed spread cancels in the
difference ``row - reference`` of each seed. The difference over seeds is summarised by its mean and
a Student-t interval; an interval that contains zero bounds the effect instead of showing one.
"""
import math
from dataclasses import asdict, dataclass
from typing import Dict, List, Mapping, Sequence

from scipy import stats


class PairingError(RuntimeError):
    """Rows that should be paired are not: their first training steps differ."""


@dataclass(frozen=True)
class PairedDifference:
    """``row - reference`` over the seeds both have; interval at ``confidence`` (two-sided)."""
    row: str
    reference: str
    seeds: List[int]
    differences: List[float]
    mean: float
    std: float  # sample standard deviation of the per-seed differences (nan for one seed)
    low: float
    high: float
    confidence: float
    p_value: float  # two-sided paired t-test of mean difference 0 (nan below two seeds)

    @property
    def zero_width(self) -> bool:
        """Every seed gave the same difference: the interval has no spread to test against."""
        return bool(self.low == self.high)

    @property
    def verdict(self) -> str:
        """'higher' / 'lower' when the interval excludes 0, else 'unresolved' (also for an interval
        of zero width, whatever its mean: docs/results/PLAN.md, "Confirmation")."""
        if self.zero_width:
            return 'unresolved'
        if self.low > 0:
            return 'higher'
        if self.high < 0:
            return 'lower'
        return 'unresolved'

    @property
    def bound(self) -> float:
        """The largest |difference| the interval admits: an unresolved effect is smaller than this."""
        return max(abs(self.low), abs(self.high))

    def to_dict(self) -> dict:
        return {**asdict(self), 'verdict': self.verdict, 'bound': self.bound, 'zero_width': self.zero_width}


def paired_difference(values: Mapping[str, Mapping[int, float]], row: str, reference: str,
                      confidence: float = 0.90) -> PairedDifference:
    """Mean of ``values[row][s] - values[reference][s]`` over the common seeds, with a t-interval.

    Args:
        values: row -> seed -> metric.
        row, reference: two keys of ``values``.
        confidence: two-sided level of the interval, e.g. 0.90.
    """
    if not 0 < confidence < 1:
        raise ValueError(f'confidence must be in (0, 1), got {confidence}')
    for name in (row, reference):
        if name not in values:
            raise KeyError(f'no values for row {name!r}; rows: {sorted(values)}')
    seeds = sorted(set(values[row]) & set(values[reference]))
    if not seeds:
        raise ValueError(f'rows {row!r} and {reference!r} share no seed '
                         f'({sorted(values[row])} vs {sorted(values[reference])})')
    diffs = [float(values[row][s]) - float(values[reference][s]) for s in seeds]
    n = len(diffs)
    mean = sum(diffs) / n
    if n < 2:
        nan = float('nan')
        return PairedDifference(row, reference, seeds, diffs, mean, nan, -math.inf, math.inf,
                                confidence, nan)
    std = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * std / math.sqrt(n)
    if std == 0:
        p_value = 1.0 if mean == 0 else 0.0
    else:
        p_value = float(2 * stats.t.sf(abs(mean) / (std / math.sqrt(n)), n - 1))
    return PairedDifference(row, reference, seeds, diffs, mean, std, mean - half, mean + half,
                            confidence, p_value)


def check_pairing(first_losses: Mapping[str, float], rtol: float = 1e-4) -> None:
    """Refuse rows of one seed whose first training loss differs by more than ``rtol`` (relative).

    At the first iteration every row of a seed is the same rigid network on the same batch (zero
    offsets sample the rigid grid), so their losses agree up to floating-point reordering: a
    larger difference means different initial weights or data, and the rows are not paired.
    """
    if not first_losses:
        raise ValueError('no first-iteration losses to compare')
    reference, ref_loss = next(iter(first_losses.items()))
    for row, loss in first_losses.items():
        if not math.isfinite(loss) or abs(loss - ref_loss) > rtol * abs(ref_loss):
            raise PairingError(
                f'rows {reference!r} and {row!r} are not paired: first-iteration loss {ref_loss:.7g} '
                f'vs {loss:.7g} (relative tolerance {rtol:g}); they must start from the same weights '
                'and see the same first batch')


def summarize(values: Sequence[float]) -> Dict[str, float]:
    """Mean and sample standard deviation of per-seed values."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else float('nan')
    return {'mean': mean, 'std': std, 'n': n}
