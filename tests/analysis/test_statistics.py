"""analyze_offsets on hand-built dumps: known values, one report for any number of workers, figures,
the headline numbers, and clear errors on bad input."""
import json
import os

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from deform_viz.analysis import (AnalysisSettings, LayerNotFoundError, OffsetInputError, analyze_offsets,
                                 format_markdown, headline)
from deform_viz.dump import OffsetDumpError
from synthetic_dumps import same_for_all_taps, scaled_kernel_field, write_coco, write_dump

# 160 x 192 image, input stride 8, conv stride 1: a 20 x 24 grid, cell (r, c) centred on (8r + .5, 8c + .5)
ORI = (160, 192)
GRID = (20, 24)
# (x, y, w, h), sqrt(area), kernel scale inside, number of cell centres inside (by hand)
BOXES = {
    'A': ((4, 4, 20, 20), 20, 1.2, 2 * 2),       # small
    'B': ((40, 8, 40, 40), 40, 1.6, 5 * 5),      # medium
    'D': ((8, 80, 56, 56), 56, 2.0, 7 * 7),      # medium
    'C': ((88, 56, 100, 100), 100, 3.0, 13 * 13),  # large
}
CROWD = (150, 0, 40, 40)                          # 5 x 5 cells, neither object nor background
BACKGROUND_SCALE = 1.4


def cell_centres():
    rows, cols = np.mgrid[0:GRID[0], 0:GRID[1]]
    return rows * 8 + 0.5, cols * 8 + 0.5


def inside(box, ys, xs):
    x, y, w, h = box
    return (xs >= x) & (xs < x + w) & (ys >= y) & (ys < y + h)


def object_fields():
    """A d_k layer (kernel scaled per object) and a d_f layer (arrows to the box centre)."""
    ys, xs = cell_centres()
    scale = np.full(GRID, BACKGROUND_SCALE)
    d_f = np.zeros((2,) + GRID)
    for box, _, s, count in BOXES.values():
        sel = inside(box, ys, xs)
        assert sel.sum() == count
        scale[sel] = s
        cy, cx = box[1] + box[3] / 2, box[0] + box[2] / 2
        d_f[0][sel] = 0.25 * (cy - ys[sel]) / 8      # input pixels = image pixels / 8
        d_f[1][sel] = 0.25 * (cx - xs[sel]) / 8
    return scaled_kernel_field(scale), same_for_all_taps(d_f)


@pytest.fixture
def object_dump(tmp_path):
    dk, df = object_fields()
    dump_dir = tmp_path / 'dumps'
    write_dump(dump_dir, 5, {'backbone.layer2.0.conv2': ({}, dk), 'backbone.layer3.0.conv2': ({}, df)},
               ori_shape=ORI, img_path='images/5.png')
    anns = [dict(image_id=5, bbox=list(b[0])) for b in BOXES.values()] + \
           [dict(image_id=5, bbox=list(CROWD), iscrowd=1)]
    ann_file = write_coco(tmp_path / 'ann.json', [(5, '5.png', *ORI), (6, '6.png', 10, 10)], anns)
    return str(dump_dir), ann_file


def monte_carlo_range(draws: int, p: float, tail: float = 1e-7):
    """The counts of hits among ``draws`` Bernoulli(p) draws outside which lies ``tail`` on each side."""
    return stats.binom.ppf(tail, draws, p), stats.binom.isf(tail, draws, p)


def test_effective_dilation_by_size_class(object_dump):
    report = analyze_offsets(*object_dump, layers=['layer2'])
    eff = report['layers']['backbone.layer2.0.conv2']['effective_dilation']
    assert eff['small'] == pytest.approx(dict(mean=1.2, std=0.0, count=4))
    medium = np.array([1.6] * 25 + [2.0] * 49)
    assert eff['medium'] == pytest.approx(dict(mean=medium.mean(), std=medium.std(), count=74))
    assert eff['large'] == pytest.approx(dict(mean=3.0, std=0.0, count=169))
    assert eff['background'] == pytest.approx(dict(mean=BACKGROUND_SCALE, std=0.0, count=480 - 247 - 25))


def test_extent_tracks_object_size(object_dump):
    ext = analyze_offsets(*object_dump, layers=['layer2'])['layers']['backbone.layer2.0.conv2']['extent_vs_size']
    assert ext['num_objects'] == 4
    for statistic in ('centre', 'box_max', 'box_mean'):
        assert ext[statistic]['rho'] == pytest.approx(1.0) and ext[statistic]['count'] == 4
    # 4 boxes in the best of their 24 orderings: a permutation reaches rho = 1 with probability 1/24
    # exactly. p = (1 + hits) / 1000 of 999 drawn permutations must be a whole count, and one outside
    # the hits' central binomial range of probability 1 - 2e-7 fails a correct test for at most one
    # seed in five million (that much, not less, is the room a Monte-Carlo p leaves)
    centre = ext['centre']
    hits = centre['p_greater'] * 1000 - 1
    assert hits == round(hits) and monte_carlo_range(999, 1 / 24)[0] <= hits <= monte_carlo_range(999, 1 / 24)[1]
    assert centre['p_less'] == 1.0 and centre['p_value'] == pytest.approx(2 * centre['p_greater'])
    precise = analyze_offsets(*object_dump, layers=['layer2'], settings=AnalysisSettings(permutations=99999))
    hits = precise['layers']['backbone.layer2.0.conv2']['extent_vs_size']['centre']['p_greater'] * 100000 - 1
    low, high = monte_carlo_range(99999, 1 / 24)
    assert low <= round(hits) <= high and (high - low) / 99999 < 0.007    # p within 1/24 +- 0.0033
    # the boxes cover 4, 25, 49 and 169 cells: alone in their strata, nothing can be shuffled
    assert ext['box_max']['exchangeable'] == 0 and ext['box_max']['p_value'] == 1.0
    radii = sorted(s * 2 * 8 for _, _, s, _ in BOXES.values())   # scale x rigid extent 2 x stride 8, no resize
    assert ext['centre']['radius']['mean'] == pytest.approx(np.mean(radii))
    assert ext['cells']['mean'] == pytest.approx((4 + 25 + 49 + 169) / 4)


def test_inward_df_and_divergence(object_dump):
    result = analyze_offsets(*object_dump, layers=['layer3'],
                             settings=AnalysisSettings(remove_global_shift=False))['layers']['backbone.layer3.0.conv2']
    inward = result['inward_df']
    assert inward['narrow_objects'] == 1                     # box A is 2.5 cells wide
    ys, xs = cell_centres()
    expected = []
    for name in ('B', 'D', 'C'):                             # d_f = 0.25 x (box centre - cell) in input px
        (x, y, w, h), _, _, count = BOXES[name]
        sel = inside(BOXES[name][0], ys, xs)
        distance = np.hypot(y + h / 2 - ys[sel], x + w / 2 - xs[sel]) / 8
        expected.append(0.25 * (distance.sum() - distance.min()) / (count - 1))   # the centre cell left out
    assert inward['objects']['count'] == 3 and inward['objects']['cells'] == 25 + 49 + 169 - 3
    assert inward['objects']['mean'] == pytest.approx(np.mean(expected))
    assert inward['objects']['sign_test']['positive'] == 3
    assert inward['objects']['sign_test']['p_greater'] == pytest.approx(1 / 8)
    assert inward['background']['mean'] == pytest.approx(0.0)        # the background does not move
    div = result['divergence']
    assert div['objects']['count'] == 247 and div['background']['count'] == 480 - 247 - 25
    # central differences of the float32 d_f (one-sided at the grid border): cells inside a box away
    # from its border see exactly -2 * 0.25 (dimensionless at conv stride 1), its border cells less
    _, df = object_fields()
    d_f = df[0, 0].astype(np.float64)
    expected = np.gradient(d_f[1], axis=1) + np.gradient(d_f[0], axis=0)
    in_box = np.zeros(GRID, dtype=bool)
    for box, _, _, _ in BOXES.values():
        in_box |= inside(box, ys, xs)
    background = ~in_box & ~inside(CROWD, ys, xs)
    assert div['objects'] == pytest.approx({'mean': expected[in_box].mean(), 'std': expected[in_box].std(),
                                            'count': 247}, rel=1e-6, abs=1e-9)
    assert div['background'] == pytest.approx({'mean': expected[background].mean(),
                                               'std': expected[background].std(), 'count': 208}, rel=1e-6, abs=1e-9)
    big = inside(BOXES['C'][0], ys, xs)
    interior = big & np.roll(big, 1, 0) & np.roll(big, -1, 0) & np.roll(big, 1, 1) & np.roll(big, -1, 1)
    assert interior.sum() == 11 * 11
    np.testing.assert_allclose(expected[interior], -0.5, atol=1e-6)
    assert expected[in_box].mean() < -0.3 and div['background']['mean'] > 0


def band_dump(tmp_path, with_second_box: bool, segmentation=None):
    """div(d_f) < 0 exactly on grid columns 2-4 of an 8 x 8 grid (image 64 x 64, stride 8):
    image pixels x in [12, 36)."""
    cols = np.arange(8, dtype=np.float64)
    dx = np.clip(-0.5 * (cols - 3), -0.5, 0.5)
    d_f = np.stack([np.zeros((8, 8)), np.broadcast_to(dx, (8, 8))])
    dump_dir = tmp_path / 'band'
    write_dump(dump_dir, 9, {'neck.dcn': ({}, same_for_all_taps(d_f))}, ori_shape=(64, 64),
               img_path='9.png')
    anns = [dict(image_id=9, bbox=[12, 0, 24, 64])]
    if with_second_box:
        anns.append(dict(image_id=9, bbox=[44, 8, 16, 16], segmentation=segmentation or []))
    return str(dump_dir), write_coco(tmp_path / 'band.json', [(9, '9.png', 64, 64)], anns)


def test_negative_divergence_mask_matches_objects(tmp_path):
    mask = analyze_offsets(*band_dump(tmp_path, False))['layers']['neck.dcn']['negative_divergence_mask']
    assert (mask['iou'], mask['precision'], mask['recall']) == (1.0, 1.0, 1.0)
    assert mask['pixels']['predicted'] == 24 * 64 and mask['ground_truth'] == 'boxes'

    mask = analyze_offsets(*band_dump(tmp_path, True))['layers']['neck.dcn']['negative_divergence_mask']
    assert mask['precision'] == 1.0
    assert mask['recall'] == pytest.approx(1536 / (1536 + 256)) and mask['iou'] == pytest.approx(mask['recall'])

    triangle = [[44, 8, 60, 8, 44, 24]]               # half of the second box, as a polygon mask
    mask = analyze_offsets(*band_dump(tmp_path, True, triangle))['layers']['neck.dcn']['negative_divergence_mask']
    assert mask['ground_truth'] == 'boxes+masks'
    assert 1536 / (1536 + 256) < mask['recall'] < 1.0


def test_report_is_json_and_markdown(object_dump):
    report = analyze_offsets(*object_dump, settings=AnalysisSettings(size_thresholds=(32, 96)))
    json.dumps(report, allow_nan=False)
    assert report['settings']['offsets'] == 'used' and report['settings']['remove_global_shift'] is True
    assert 'dimensionless' in report['units']['divergence']
    text = format_markdown(report)
    assert '| backbone.layer2.0.conv2 | 1.20 ± 0.00 (4) |' in text
    assert '## Inward d_f' in text and '3/3 inward, p = 0.12' in text     # the counts travel with the numbers
    assert '| backbone.layer3.0.conv2 | 4 | n/a (n/a) |' in text        # a layer without d_k has no rho


def test_any_number_of_workers_gives_the_same_report(tmp_path):
    dk, df = object_fields()
    ids = list(range(1, 6))
    for i in ids:   # different fields per image, so that the merge order matters
        write_dump(tmp_path / 'dumps', i, {'backbone.layer2.0.conv2': ({}, dk * (1 + 0.1 * i)),
                                           'backbone.layer3.0.conv2': ({}, df * (0.5 + 0.3 * i))},
                   ori_shape=ORI, img_path=f'{i}.png')
    anns = [dict(image_id=i, bbox=list(b[0])) for i in ids for b in BOXES.values()]
    ann = write_coco(tmp_path / 'ann.json', [(i, f'{i}.png', *ORI) for i in ids], anns)
    one = analyze_offsets(str(tmp_path / 'dumps'), ann)
    two = analyze_offsets(str(tmp_path / 'dumps'), ann, workers=2)
    assert json.dumps(one, allow_nan=False) == json.dumps(two, allow_nan=False)   # bit for bit
    assert one['layers']['backbone.layer3.0.conv2']['inward_df']['objects']['count'] == 15
    with pytest.raises(ValueError, match='workers must be at least 1'):
        analyze_offsets(str(tmp_path / 'dumps'), ann, workers=0)


def test_headline_and_figures(object_dump, tmp_path):
    report = analyze_offsets(*object_dump, settings=AnalysisSettings(remove_global_shift=False),
                             figure_dir=str(tmp_path / 'figures'))
    assert [os.path.basename(p) for p in report['figures']] == ['effective_dilation.png', 'extent_vs_size.png',
                                                                 'inward_df.png']
    for path in report['figures']:
        with Image.open(path) as im:
            assert im.size[0] == 975 and np.asarray(im.convert('L')).std() > 10    # 6.5 in at 150 dpi
    numbers = headline(report)
    assert numbers['layer'] == 'backbone.layer3.0.conv2' and numbers['num_layers'] == 2
    assert numbers['inward_df_count'] == 3 and numbers['inward_df_fraction'] == 1.0
    assert numbers['inward_df_p'] == pytest.approx(1 / 8)
    assert numbers['dk_size_rho'] is None and numbers['dk_size_count'] == 4
    assert headline(report, 'backbone.layer2.0.conv2')['dk_size_rho'] == pytest.approx(1.0)
    assert numbers['effective_dilation_objects'] == pytest.approx(1.0)
    # one layer tested for each claim: p = 1/24 for d_k (< 0.05), 1/8 for d_f (3 wide objects)
    assert numbers['layers_dk_grows_with_size'] == 1 and numbers['layers_inward_df'] == 0
    with pytest.raises(LayerNotFoundError, match='no layer'):
        headline(report, 'neck')


def test_missing_layer_names_the_available_ones(object_dump):
    with pytest.raises(LayerNotFoundError, match=r"\['layer9'\].*backbone.layer2.0.conv2"):
        analyze_offsets(*object_dump, layers=['layer9'])


def test_annotation_file_of_other_images(object_dump, tmp_path):
    dump_dir, _ = object_dump
    other = write_coco(tmp_path / 'other.json', [(100, '100.png', 160, 192)], [])
    with pytest.raises(OffsetInputError, match=r'not in .*other.json.*another split'):
        analyze_offsets(dump_dir, other)
    same_id = write_coco(tmp_path / 'same_id.json', [(5, 'elsewhere.png', 480, 640)], [])
    with pytest.raises(OffsetInputError, match=r'160x192.*480x640'):
        analyze_offsets(dump_dir, same_id)


def test_dump_without_metadata(tmp_path, object_dump):
    bad = tmp_path / 'bad'
    bad.mkdir()
    np.savez(bad / '5.npz', **{'backbone.layer2.0.conv2/offset': np.zeros((1, 9, 2, 2, 2))})
    with pytest.raises(OffsetDumpError, match=r'5.npz.*__meta__'):
        analyze_offsets(str(bad), object_dump[1])
    with pytest.raises(FileNotFoundError, match='does not exist'):
        analyze_offsets(str(tmp_path / 'nowhere'), object_dump[1])
    with pytest.raises(FileNotFoundError, match='annotation file'):
        analyze_offsets(object_dump[0], str(tmp_path / 'missing.json'))
