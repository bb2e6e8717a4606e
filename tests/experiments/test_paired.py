import math

import pytest

from deform_viz.experiments import PairingError, check_pairing, paired_difference, summarize
from deform_viz.experiments.report import headline_spread, spread_table


def test_paired_difference_on_known_numbers():
    # per-seed differences 1, 2, 3: mean 2, sd 1; t_{0.95, 2} = 2.9199856, and for 2 degrees of
    # freedom the two-sided p of t = 2*sqrt(3) is 1 - t / sqrt(t^2 + 2) in closed form
    values = {'baseline': {0: 10.0, 1: 20.0, 2: 30.0}, 'dcn': {0: 11.0, 1: 22.0, 2: 33.0}}
    d = paired_difference(values, 'dcn', 'baseline', confidence=0.90)
    assert d.seeds == [0, 1, 2] and d.differences == [1.0, 2.0, 3.0]
    assert d.mean == 2.0 and d.std == 1.0
    half = 2.9199856 / math.sqrt(3)
    assert d.low == pytest.approx(2 - half, abs=1e-6) and d.high == pytest.approx(2 + half, abs=1e-6)
    t = 2 * math.sqrt(3)
    assert d.p_value == pytest.approx(1 - t / math.sqrt(t * t + 2), rel=1e-9)
    assert d.verdict == 'higher'


def test_unresolved_difference_bounds_the_effect():
    values = {'baseline': {0: 0.5, 1: 0.5, 2: 0.5}, 'd_f': {0: 0.51, 1: 0.49, 2: 0.50}}
    d = paired_difference(values, 'd_f', 'baseline')
    assert d.mean == pytest.approx(0.0, abs=1e-12)
    assert d.verdict == 'unresolved'
    assert d.bound == pytest.approx(2.9199856 * 0.01 / math.sqrt(3), rel=1e-6)


def test_pairing_uses_common_seeds_only():
    values = {'baseline': {0: 1.0, 1: 2.0, 5: 9.0}, 'dcn': {0: 1.5, 1: 2.5}}
    d = paired_difference(values, 'dcn', 'baseline')
    assert d.seeds == [0, 1] and d.differences == [0.5, 0.5]
    assert d.std == 0.0 and d.low == d.high == 0.5 and d.p_value == 0.0


def test_bad_inputs_are_named():
    with pytest.raises(KeyError, match="no values for row 'dk'"):
        paired_difference({'baseline': {0: 1.0}}, 'dk', 'baseline')
    with pytest.raises(ValueError, match='share no seed'):
        paired_difference({'baseline': {0: 1.0}, 'dcn': {1: 1.0}}, 'dcn', 'baseline')
    with pytest.raises(ValueError, match='confidence must be in'):
        paired_difference({'baseline': {0: 1.0}, 'dcn': {0: 1.0}}, 'dcn', 'baseline', confidence=90)


def test_check_pairing_accepts_rounding_and_refuses_other_starts():
    check_pairing({'baseline': 2.3456789, 'dcn': 2.3456790, 'd_f': 2.3456788})
    with pytest.raises(PairingError, match=r"'baseline' and 'dcn' are not paired: .*2\.345679 vs 2\.36"):
        check_pairing({'baseline': 2.3456789, 'dcn': 2.36})
    with pytest.raises(PairingError, match='not paired'):
        check_pairing({'baseline': 2.0, 'dcn': float('nan')})


def test_summarize():
    s = summarize([1.0, 2.0, 3.0])
    assert s == {'mean': 2.0, 'std': 1.0, 'n': 3}
    assert math.isnan(summarize([4.0])['std'])


def test_headline_spread_over_seeds():
    headlines = {0: {'layer': 'backbone.layer4.2.conv2', 'dk_size_rho': 0.2, 'inward_df': None, 'num_layers': 13},
                 1: {'layer': 'backbone.layer4.2.conv2', 'dk_size_rho': 0.4, 'inward_df': 0.5, 'num_layers': 13}}
    spread = headline_spread(headlines)
    assert set(spread) == {'dk_size_rho', 'inward_df', 'num_layers'}  # the layer name is not a number
    assert spread['dk_size_rho']['mean'] == pytest.approx(0.3)
    assert spread['dk_size_rho']['std'] == pytest.approx(math.sqrt(0.02))
    assert spread['inward_df'] == {'mean': 0.5, 'std': spread['inward_df']['std'], 'n': 1, 'per_seed': {1: 0.5}}
    table = spread_table(spread, {'dk_size_rho': 'rho', 'absent': 'never shown'})
    assert table.splitlines()[2] == '| rho | 0.300 ± 0.141 | 0: 0.200, 1: 0.400 |' and 'never' not in table
