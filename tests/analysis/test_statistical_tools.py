"""Mergeable moments, the permutation Spearman test with strata, the sign test and Holm, on known values."""
import numpy as np
import pytest
from scipy import stats

from deform_viz.analysis import Moments, holm, mean_with_error, permutation_spearman, sign_test, spearman


def test_moments_merge_equals_the_pooled_sample():
    rng = np.random.default_rng(0)
    parts = [rng.normal(3.0, 2.0, size=n) for n in (1, 7, 0, 250, 3)]
    merged = Moments()
    for part in parts:
        merged = merged.merge(Moments.of(part))
    pooled = np.concatenate(parts)
    assert merged.count == 261
    assert merged.summary()['mean'] == pytest.approx(pooled.mean(), rel=1e-13)
    assert merged.summary()['std'] == pytest.approx(pooled.std(), rel=1e-12)
    assert Moments().summary() == {'mean': None, 'std': None, 'count': 0}
    assert Moments.of([2.0, 4.0]).summary() == {'mean': 3.0, 'std': 1.0, 'count': 2}


def test_mean_with_error():
    assert mean_with_error([1.0, 2.0, 3.0, 6.0]) == pytest.approx({'mean': 3.0, 'sem': np.sqrt(14 / 3) / 2,
                                                                   'count': 4})
    assert mean_with_error([5.0]) == {'mean': 5.0, 'sem': None, 'count': 1}


def test_permutation_spearman_matches_scipy_and_the_exact_null():
    x = np.array([20.0, 40.0, 56.0, 100.0, 70.0])
    y = np.array([1.0, 2.0, 3.0, 5.0, 4.0])
    draws = 199999
    result = permutation_spearman(x, y, permutations=draws, seed=1)
    assert result['rho'] == pytest.approx(stats.spearmanr(x, y)[0]) == pytest.approx(1.0)
    # exactly 1 of the 120 orderings reaches rho = 1: the hits among the drawn permutations are
    # Binomial(draws, 1/120), (1 + hits) / (1 + draws) a whole count inside its central range of
    # probability 1 - 2e-7 (p = 1/120 +- 0.001: the room a Monte-Carlo p needs)
    hits = result['p_greater'] * (1 + draws) - 1
    assert abs(hits - round(hits)) < 1e-6
    assert stats.binom.ppf(1e-7, draws, 1 / 120) <= round(hits) <= stats.binom.isf(1e-7, draws, 1 / 120)
    assert result['p_less'] == 1.0
    assert result['p_value'] == pytest.approx(2 * result['p_greater'])
    # the exact null of rho over the 120 orderings has mean 0 and variance 1 / (n - 1) = 1/4: its
    # mean over the draws lies within 5.3 standard errors (two-sided 1e-7)
    assert abs(result['null_rho']) < 5.3 * np.sqrt(0.25 / draws)
    assert result['exchangeable'] == 5 and result['count'] == 5
    assert permutation_spearman(x, y, permutations=99, seed=1) == permutation_spearman(x, y, permutations=99, seed=1)


def test_strata_keep_what_depends_on_them():
    """y is fixed by the stratum alone: shuffling x within strata keeps rho, so p_greater ~ 1."""
    rng = np.random.default_rng(0)
    strata = np.repeat(np.arange(10), 20)
    x = strata * 10 + rng.random(200)          # x ranks follow the strata
    y = strata + 0.0                            # and so does y, with ties inside each stratum
    free = permutation_spearman(x, y, permutations=199)
    kept = permutation_spearman(x, y, strata=strata, permutations=199)
    assert free['rho'] == kept['rho'] == pytest.approx(stats.spearmanr(x, y)[0])
    assert free['rho'] > 0.95 and free['p_greater'] == pytest.approx(1 / 200)
    assert kept['null_rho'] == pytest.approx(kept['rho'])       # within a stratum y is constant
    assert kept['p_greater'] == 1.0 and kept['p_value'] == 1.0
    # singleton strata cannot move: they are reported as not exchangeable
    assert permutation_spearman(x[:12], y[:12], strata=np.arange(12), permutations=9)['exchangeable'] == 0


def test_degenerate_and_bad_inputs():
    assert permutation_spearman([1.0, 2.0], [1.0, 2.0])['rho'] is None
    assert permutation_spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])['p_value'] is None
    assert spearman([1, 2], [3, 4]) == {'rho': None, 'p_value': None, 'count': 2}
    with pytest.raises(ValueError, match='equal length'):
        permutation_spearman([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match='one label per pair'):
        permutation_spearman([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], strata=[0, 1])
    with pytest.raises(ValueError, match='permutations must be at least 1'):
        permutation_spearman([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], permutations=0)


def test_sign_test():
    result = sign_test([0.5, 1.0, 2.0, 0.1, 0.0, 3.0, -1.0])
    assert (result['count'], result['positive']) == (6, 5)
    assert result['p_greater'] == pytest.approx(7 / 64)           # P(X >= 5), X ~ Bin(6, 1/2)
    assert result['p_less'] == pytest.approx(63 / 64)
    assert result['p_value'] == pytest.approx(14 / 64)
    assert sign_test([1.0] * 6)['p_greater'] == pytest.approx(1 / 64)
    assert sign_test([0.0, 0.0])['p_value'] is None


def test_holm():
    adjusted = holm([0.01, None, 0.04, 0.03])
    assert adjusted[1] is None
    assert [adjusted[i] for i in (0, 2, 3)] == pytest.approx([0.03, 0.06, 0.06])   # 3x, max(2x, 1x)
    assert holm([0.5, 0.9]) == [1.0, 1.0]
    assert holm([]) == []
