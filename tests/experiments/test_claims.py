"""Every branch of the claim verdicts, on hand-made value tables and offset reports."""
import pytest

from deform_viz.experiments import paired_difference
from deform_viz.experiments.claims import (claim_df_converges, claim_dk_carries_the_gain, claim_dk_tracks_size,
                                           claim_region_segments, over_seeds)
from deform_viz.experiments.report import claims_markdown


def table(**rows):
    """row -> per-seed values over seeds 0, 1, 2 (one list per row)."""
    return {name.replace('_', '-'): dict(enumerate(v)) for name, v in rows.items()}


BASE = [0.30, 0.40, 0.50]


def shifted(by):
    return [b + d for b, d in zip(BASE, by)]


# ---------------------------------------------------------------- paired differences
def test_paired_difference_verdicts_and_the_zero_width_interval():
    values = table(baseline=BASE, up=shifted([0.01, 0.02, 0.03]), down=shifted([-0.01, -0.02, -0.03]),
                   mixed=shifted([0.01, -0.01, 0.0]))
    assert paired_difference(values, 'up', 'baseline').verdict == 'higher'
    assert paired_difference(values, 'down', 'baseline').verdict == 'lower'
    assert paired_difference(values, 'mixed', 'baseline').verdict == 'unresolved'
    # every seed exactly +0.25 (values that floats hold exactly)
    same = paired_difference(table(baseline=[0.5, 0.25, 0.75], same=[0.75, 0.5, 1.0]), 'same', 'baseline')
    assert same.differences == [0.25] * 3 and same.mean == 0.25
    assert same.low == same.high and same.zero_width
    assert same.verdict == 'unresolved' and same.to_dict()['zero_width'] is True
    one_seed = paired_difference({'baseline': {0: 0.3}, 'dcn': {0: 0.5}}, 'dcn', 'baseline')
    assert one_seed.verdict == 'unresolved' and not one_seed.zero_width  # an infinite interval


# ---------------------------------------------------------------- claim 1
def test_claim_1_reproduced_needs_dk_above_df_and_above_the_baseline():
    values = table(baseline=BASE, dcn_df=shifted([0.00, 0.01, 0.00]), dcn_dk=shifted([0.03, 0.04, 0.05]),
                   dcn=shifted([0.03, 0.05, 0.05]))
    verdict = claim_dk_carries_the_gain(values)
    assert verdict['verdict'] == 'reproduced'
    assert verdict['dcn-dk - dcn-df']['verdict'] == 'higher' and verdict['dcn-dk - baseline']['verdict'] == 'higher'
    assert 'dcn - dcn-dk' in verdict


def test_claim_1_dk_above_df_but_not_above_the_baseline_is_unresolved():
    # d_f loses, d_k ties the baseline: d_k - d_f is resolved, d_k - baseline is not
    values = table(baseline=BASE, dcn_df=shifted([-0.05, -0.06, -0.04]), dcn_dk=shifted([0.01, -0.01, 0.0]))
    verdict = claim_dk_carries_the_gain(values)
    assert verdict['dcn-dk - dcn-df']['verdict'] == 'higher'
    assert verdict['dcn-dk - baseline']['verdict'] == 'unresolved'
    assert verdict['verdict'] == 'unresolved' and 'dcn - dcn-dk' not in verdict


def test_claim_1_contradicted_when_df_beats_dk():
    values = table(baseline=BASE, dcn_df=shifted([0.03, 0.04, 0.05]), dcn_dk=shifted([0.00, 0.01, 0.00]))
    assert claim_dk_carries_the_gain(values)['verdict'] == 'contradicted'


def test_claim_1_needs_its_rows():
    assert claim_dk_carries_the_gain(table(baseline=BASE, dcn=BASE)) == {
        'verdict': 'not run', 'needs': ['baseline', 'dcn-df', 'dcn-dk']}


# ---------------------------------------------------------------- over seeds
@pytest.mark.parametrize('verdicts, expected', [
    (['reproduced', 'reproduced', 'unresolved'], 'reproduced'),           # exactly two thirds
    (['reproduced', 'unresolved', 'unresolved'], 'unresolved'),           # one third
    (['contradicted', 'contradicted', 'reproduced'], 'contradicted'),
    (['reproduced'] * 3 + ['unresolved'] * 2, 'unresolved'),              # 3 of 5 < ceil(10 / 3) = 4
    (['reproduced'] * 4 + ['contradicted'], 'reproduced'),                # 4 of 5
    (['reproduced', 'contradicted'], 'unresolved'),                       # 2 seeds need both
    ([], 'unresolved'),
])
def test_two_thirds_of_the_seeds_decide(verdicts, expected):
    assert over_seeds(dict(enumerate(verdicts))) == expected


# ---------------------------------------------------------------- claims 2, 3 and the segmentation finding
def report(layers=13, inward=0, outward=0, objects=0.1, background=0.0, grows=0, shrinks=0, above=0, below=0,
           rho=0.2, folded=0.0):
    """An offset report with the across-layer counts given and every layer alike."""
    layer = {'inward_df': {'objects': {'mean': objects}, 'background': {'mean': background}},
             'extent_vs_size': {'centre': {'rho': rho, 'folded_share': folded}},
             'negative_divergence_mask': {'iou': 0.4, 'null': {'null_mean': 0.3}}}
    return {'layers': {f'l{i}': layer for i in range(layers)},
            'across_layers': {'num_layers': layers,
                              'inward_df': {'supporting': inward, 'contradicting': outward},
                              'dk_radius_grows_with_size': {'supporting': grows, 'contradicting': shrinks},
                              'negative_divergence_segments': {'supporting': above, 'contradicting': below}}}


@pytest.mark.parametrize('counts, expected', [
    (dict(inward=7, objects=0.1, background=0.0), 'reproduced'),      # 7 of 13, margin +0.1
    (dict(inward=6, objects=0.1, background=0.0), 'unresolved'),      # 6 of 13 is no majority
    (dict(inward=13, objects=0.0, background=0.0), 'unresolved'),     # margin exactly 0
    (dict(inward=13, objects=0.0, background=0.1), 'unresolved'),     # margin negative
    (dict(outward=7, objects=-0.1, background=0.0), 'contradicted'),  # mirrored: outward and margin < 0
    (dict(outward=7, objects=0.1, background=0.0), 'unresolved'),     # outward but margin > 0
    (dict(outward=7, objects=0.0, background=0.0), 'unresolved'),     # outward, margin exactly 0
])
def test_claim_2_per_seed(counts, expected):
    verdict = claim_df_converges({0: report(**counts)})
    seed = verdict['per_seed'][0]
    assert seed['verdict'] == expected
    assert seed['objects_minus_background'] == pytest.approx(counts['objects'] - counts['background'])
    assert (seed['inward'], seed['outward']) == (counts.get('inward', 0), counts.get('outward', 0))


def test_claim_2_margin_skips_layers_without_objects():
    r = report(inward=7, objects=0.2, background=0.0)
    r['layers']['l0'] = {**r['layers']['l0'], 'inward_df': {'objects': {'mean': None}, 'background': {'mean': 5.0}}}
    assert claim_df_converges({0: r})['per_seed'][0]['objects_minus_background'] == pytest.approx(0.2)


def test_claim_2_over_seeds():
    reports = {3: report(inward=9), 4: report(inward=9), 5: report(inward=2)}
    assert claim_df_converges(reports)['verdict'] == 'reproduced'
    reports[4] = report(inward=2)
    assert claim_df_converges(reports)['verdict'] == 'unresolved'


@pytest.mark.parametrize('counts, expected', [
    (dict(grows=7), 'reproduced'), (dict(grows=6), 'unresolved'), (dict(shrinks=7), 'contradicted'),
    (dict(grows=6, shrinks=6), 'unresolved'),
    (dict(layers=12, grows=6), 'unresolved'),   # half is no majority
    (dict(layers=12, grows=7), 'reproduced'),
])
def test_claim_3_per_seed(counts, expected):
    verdict = claim_dk_tracks_size({0: report(folded=0.25, **counts)})
    seed = verdict['per_seed'][0]
    assert seed['verdict'] == expected == verdict['verdict']
    assert (seed['growing'], seed['shrinking']) == (counts.get('grows', 0), counts.get('shrinks', 0))
    assert seed['median_rho'] == 0.2 and seed['median_folded_share'] == 0.25


def test_claim_3_median_rho_of_an_even_number_of_layers():
    r = report(layers=2)
    r['layers'] = {'a': {'extent_vs_size': {'centre': {'rho': 0.1}}}, 'b': {'extent_vs_size': {'centre': {'rho': 0.4}}},
                   'c': {'extent_vs_size': {'centre': {'rho': None}}}}
    assert claim_dk_tracks_size({0: r})['per_seed'][0]['median_rho'] == pytest.approx(0.25)


@pytest.mark.parametrize('counts, expected', [
    (dict(above=7), 'reproduced'), (dict(above=6), 'unresolved'), (dict(below=7), 'contradicted'),
])
def test_segmentation_finding_per_seed(counts, expected):
    verdict = claim_region_segments({0: report(**counts), 1: report(**counts)})
    assert verdict['verdict'] == expected
    seed = verdict['per_seed'][1]
    assert (seed['above_null'], seed['below_null']) == (counts.get('above', 0), counts.get('below', 0))
    assert (seed['median_iou'], seed['median_null_iou']) == (0.4, 0.3)


def test_no_reports_no_verdict():
    for claim in (claim_df_converges, claim_dk_tracks_size, claim_region_segments):
        assert claim({}) == {'verdict': 'unresolved', 'per_seed': {}}


def test_the_claims_in_markdown_give_their_numbers():
    values = table(baseline=BASE, dcn_df=shifted([0.00, 0.01, 0.00]), dcn_dk=shifted([0.03, 0.04, 0.05]))
    text = claims_markdown({'d_k carries the gain': claim_dk_carries_the_gain(values),
                            'd_k tracks size': claim_dk_tracks_size({3: report(grows=9, rho=-0.25, folded=0.5)})})
    assert text.splitlines() == [
        '- d_k carries the gain: **reproduced**',
        '  - dcn-dk - dcn-df: +0.037 [+0.017, +0.056] (higher; per seed +0.030, +0.030, +0.050)',
        '  - dcn-dk - baseline: +0.040 [+0.023, +0.057] (higher; per seed +0.030, +0.040, +0.050)',
        '- d_k tracks size: **reproduced**',
        '  - seed 3: reproduced (layers 13, growing 9, shrinking 0, median rho -0.250, median folded share 0.500)']
