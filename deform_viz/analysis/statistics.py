"""Statistical tools of the analysis: mergeable moments, rank correlation with permutation nulls,
the sign test and Holm's correction. Everything is deterministic for a given seed."""
import warnings
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Moments:
    """Count, mean and sum of squared deviations of a sample; merged exactly as Chan et al.

    Merging the per-image moments in one fixed order gives the same floating-point result
    however the images were spread over processes.
    """
    count: int = 0
    mean: float = 0.0
    m2: float = 0.0

    @classmethod
    def of(cls, values) -> 'Moments':
        values = np.asarray(values, dtype=np.float64).ravel()
        if values.size == 0:
            return cls()
        mean = float(values.mean())
        return cls(int(values.size), mean, float(np.square(values - mean).sum()))

    def merge(self, other: 'Moments') -> 'Moments':
        if not other.count:
            return self
        if not self.count:
            return other
        count = self.count + other.count
        delta = other.mean - self.mean
        return Moments(count, self.mean + delta * other.count / count,
                       self.m2 + other.m2 + delta * delta * self.count * other.count / count)

    def summary(self) -> Dict[str, Optional[float]]:
        """mean, population std and count; None for an empty sample."""
        if not self.count:
            return {'mean': None, 'std': None, 'count': 0}
        return {'mean': self.mean, 'std': float(np.sqrt(self.m2 / self.count)), 'count': self.count}


def summarize(values) -> Dict[str, Optional[float]]:
    """mean, population std and count of a sample; None for an empty sample."""
    return Moments.of(values).summary()


def mean_with_error(values) -> Dict[str, Optional[float]]:
    """mean, standard error of the mean (n - 1 in the variance) and count of independent values."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        return {'mean': None, 'sem': None, 'count': 0}
    sem = float(values.std(ddof=1) / np.sqrt(values.size)) if values.size > 1 else None
    return {'mean': float(values.mean()), 'sem': sem, 'count': int(values.size)}


def spearman(x, y) -> Dict[str, Optional[float]]:
    """Spearman's rho and scipy's two-sided p-value; None below 3 pairs or for a constant input."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {'rho': None, 'p_value': None, 'count': int(x.size)}
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        result = stats.spearmanr(x, y)
    rho, p = float(result[0]), float(result[1])
    return {'rho': None if np.isnan(rho) else rho, 'p_value': None if np.isnan(p) else p, 'count': int(x.size)}


def _null_correlations(rx: np.ndarray, ry: np.ndarray, labels: np.ndarray, permutations: int,
                       rng: np.random.Generator, chunk: int = 64) -> np.ndarray:
    """rx . ry with rx shuffled among equal ``labels`` (integers 0..k-1), once per permutation."""
    order = np.argsort(labels, kind='stable')
    base = labels[order].astype(np.float64)   # + a random fraction: sorting shuffles within a label only
    target = ry[order]
    null = np.empty(permutations)
    for start in range(0, permutations, chunk):
        rows = min(chunk, permutations - start)
        shuffled = order[np.argsort(base + rng.random((rows, labels.size)), axis=1)]
        null[start:start + rows] = rx[shuffled] @ target
    return null


def permutation_spearman(x, y, strata=None, permutations: int = 999, seed: int = 0) -> Dict[str, Optional[float]]:
    """Spearman's rho of (x, y) against the null of ``x`` shuffled among the pairs.

    ``strata`` (one label per pair) restricts each shuffle to pairs with equal labels, e.g. the
    number of cells a per-box statistic was taken over: then a statistic that grows with its
    cell count (a maximum) has that growth in its null too. Returns ``rho``, ``count``,
    ``null_rho`` (mean rho of the null), ``p_greater`` and ``p_less`` (one-sided, each
    ``(1 + hits) / (1 + permutations)``), ``p_value`` (two-sided: twice the smaller one) and
    ``exchangeable`` (pairs that share their stratum with another pair; the others are fixed).
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f'x and y must be 1-d of equal length, got {x.shape} and {y.shape}')
    strata = np.zeros(x.size, np.int64) if strata is None else np.asarray(strata)
    if strata.shape != x.shape:
        raise ValueError(f'strata must have one label per pair, got {strata.shape} for {x.size} pairs')
    if permutations < 1:
        raise ValueError(f'permutations must be at least 1, got {permutations}')
    _, inverse, counts = np.unique(strata, return_inverse=True, return_counts=True)
    exchangeable = int((counts[inverse] > 1).sum())
    empty = {'rho': None, 'count': int(x.size), 'null_rho': None, 'p_value': None, 'p_greater': None,
             'p_less': None, 'permutations': permutations, 'exchangeable': exchangeable}
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return empty
    rx, ry = stats.rankdata(x), stats.rankdata(y)
    rx, ry = (rx - rx.mean()) / np.linalg.norm(rx - rx.mean()), (ry - ry.mean()) / np.linalg.norm(ry - ry.mean())
    rho = float(rx @ ry)
    null = _null_correlations(rx, ry, inverse, permutations, np.random.default_rng(seed))
    tol = 1e-12                                                        # equal pairings, rounded apart
    p_greater = float((1 + (null >= rho - tol).sum()) / (1 + permutations))
    p_less = float((1 + (null <= rho + tol).sum()) / (1 + permutations))
    return dict(empty, rho=rho, null_rho=float(null.mean()), p_value=min(1.0, 2 * min(p_greater, p_less)),
                p_greater=p_greater, p_less=p_less)


def sign_test(values, tie: float = 0.0) -> Dict[str, Optional[float]]:
    """Exact binomial sign test of the median against 0; values with ``|v| <= tie`` are ties, dropped
    (``tie`` > 0 keeps values that are zero up to rounding from counting as signs).

    Returns ``count`` (values that are not ties), ``ties``, ``positive``, ``fraction_positive``,
    ``p_value`` (two-sided), ``p_greater`` (H1: more positive) and ``p_less``.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    positive, negative = int((values > tie).sum()), int((values < -tie).sum())
    n = positive + negative
    ties = int(values.size - n)
    if n == 0:
        return {'count': 0, 'ties': ties, 'positive': 0, 'fraction_positive': None, 'p_value': None,
                'p_greater': None, 'p_less': None}
    test = lambda alternative: float(stats.binomtest(positive, n, 0.5, alternative=alternative).pvalue)  # noqa: E731
    return {'count': n, 'ties': ties, 'positive': positive, 'fraction_positive': positive / n,
            'p_value': test('two-sided'),
            'p_greater': test('greater'), 'p_less': test('less')}


def holm(p_values: Sequence[Optional[float]]) -> list:
    """Holm-adjusted p-values (None stays None and does not count as a test)."""
    tested = [(p, i) for i, p in enumerate(p_values) if p is not None]
    adjusted = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(sorted(tested)):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        adjusted[i] = running
    return adjusted


def random_derangements(strata, permutations: int, rng: np.random.Generator) -> np.ndarray:
    """``permutations`` random maps of the items onto each other, (permutations, n) indices: within
    each stratum (one label per item) a derangement drawn uniformly (no item keeps its place); an
    item alone in its stratum keeps its place."""
    _, inverse = np.unique(np.asarray(strata), return_inverse=True)
    maps = np.tile(np.arange(inverse.size), (permutations, 1))
    for label in np.unique(inverse):
        members = np.flatnonzero(inverse == label)
        if members.size < 2:
            continue
        for k in range(permutations):
            while True:  # rejection: about e draws per derangement
                order = rng.permutation(members.size)
                if not (order == np.arange(members.size)).any():
                    break
            maps[k, members] = members[order]
    return maps


def swapped_region_iou(negative: Sequence[np.ndarray], valid: Sequence[np.ndarray],
                       on_objects: Sequence[np.ndarray], truth: Sequence[int], strata,
                       permutations: int = 999, seed: int = 0) -> Dict[str, Optional[float]]:
    """The pooled IoU of per-image regions with the images' objects, against the null of each
    region scored on another image's objects.

    Args:
        negative: per image, the region as a bool vector over its cells, (C_i,).
        valid, on_objects: per image, the valid and object pixels each cell paints, (C_i,).
        truth: per image, its object pixels.
        strata: per image a label; a region is moved only onto images of the same label, whose
            cells must be the same (same C_i, same placement on the image).

    The null keeps every region (its size and layout) and every image's objects and breaks only
    their pairing: ``permutations`` derangements within the strata, each giving a pooled IoU.
    Returns ``iou``, ``null_mean``, ``null_p95``, ``p_greater`` / ``p_less`` (one-sided, each
    ``(1 + hits) / (1 + permutations)``), ``exchangeable`` (images that can be moved) and
    ``permutations``; the null entries are None when no image can be moved or nothing is predicted.
    """
    n = len(negative)
    if not (len(valid) == len(on_objects) == len(truth) == n == len(strata)):
        raise ValueError('negative, valid, on_objects, truth and strata need one entry per image')
    inter = sum(float(o[r].sum()) for r, o in zip(negative, on_objects))
    predicted = sum(float(v[r].sum()) for r, v in zip(negative, valid))
    total = float(sum(truth))
    union = predicted + total - inter
    out = {'iou': inter / union if union > 0 else None, 'null_mean': None, 'null_p95': None,
           'p_greater': None, 'p_less': None, 'permutations': permutations, 'exchangeable': 0}
    labels = np.unique(np.asarray(strata), return_inverse=True)[1] if n else np.zeros(0, np.int64)
    counts = np.bincount(labels) if n else np.zeros(0, np.int64)
    out['exchangeable'] = int((counts[labels] > 1).sum()) if n else 0
    if out['iou'] is None or not out['exchangeable']:
        return out
    # pairwise scores within each stratum: row i's region on column j's objects
    inter_pairs, predicted_pairs = {}, {}
    for label in np.flatnonzero(counts > 1):
        members = np.flatnonzero(labels == label)
        shapes = {negative[i].shape for i in members}
        if len(shapes) != 1:
            raise ValueError(f'images of one stratum have regions of different sizes {sorted(shapes)}')
        regions = np.stack([negative[i] for i in members]).astype(np.float64)
        inter_pairs[label] = regions @ np.stack([on_objects[i] for i in members]).astype(np.float64).T
        predicted_pairs[label] = regions @ np.stack([valid[i] for i in members]).astype(np.float64).T
    maps = random_derangements(labels, permutations, np.random.default_rng(seed))
    null_inter = np.zeros(permutations)
    null_predicted = np.zeros(permutations)
    fixed = counts[labels] == 1
    null_inter += sum(float(on_objects[i][negative[i]].sum()) for i in np.flatnonzero(fixed))
    null_predicted += sum(float(valid[i][negative[i]].sum()) for i in np.flatnonzero(fixed))
    for label, pairs in inter_pairs.items():
        members = np.flatnonzero(labels == label)
        position = np.full(n, -1)
        position[members] = np.arange(members.size)
        targets = position[maps[:, members]]                             # (permutations, m)
        rows = np.arange(members.size)
        null_inter += pairs[rows, targets].sum(1)
        null_predicted += predicted_pairs[label][rows, targets].sum(1)
    null = null_inter / np.maximum(null_predicted + total - null_inter, 1e-12)
    tol = 1e-12
    out.update(null_mean=float(null.mean()), null_p95=float(np.quantile(null, 0.95)),
               p_greater=float((1 + (null >= out['iou'] - tol).sum()) / (1 + permutations)),
               p_less=float((1 + (null <= out['iou'] + tol).sum()) / (1 + permutations)))
    return out
