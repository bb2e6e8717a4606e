"""The segmentation finding's null: each negative-divergence region scored on another image's objects.

Known answers: a hand-computed pair, fixed images alone in their placement, uniform p-values for
regions drawn independently of the objects, and through analyze_offsets a field that converges
exactly on its object in every image (significant) against one whose band is elsewhere.
"""
import numpy as np
import pytest
from scipy import stats

from deform_viz.analysis import analyze_offsets
from deform_viz.analysis.statistics import random_derangements, swapped_region_iou
from synthetic_dumps import same_for_all_taps, write_coco, write_dump

ONES = np.ones(4, np.int64)


def test_two_images_swapped_by_hand():
    # A's region is exactly A's object, B's exactly B's; the only derangement swaps them
    negative = [np.array([1, 1, 0, 0], bool), np.array([0, 0, 1, 1], bool)]
    on_objects = [np.array([1, 1, 0, 0]), np.array([0, 0, 1, 1])]
    out = swapped_region_iou(negative, [ONES, ONES], on_objects, [2, 2], strata=[0, 0], permutations=9)
    assert out['iou'] == 1.0 and out['exchangeable'] == 2
    # swapped: intersection 0, predicted 2 + 2, truth 2 + 2 -> IoU 0 in every permutation
    assert out['null_mean'] == 0.0 and out['null_p95'] == 0.0
    assert out['p_greater'] == pytest.approx(1 / 10) and out['p_less'] == 1.0


def test_an_image_alone_in_its_placement_keeps_its_own_objects():
    negative = [np.array([1, 1, 0, 0], bool), np.array([0, 0, 1, 1], bool), np.array([1, 0], bool)]
    on_objects = [np.array([1, 1, 0, 0]), np.array([0, 0, 1, 1]), np.array([3, 0])]
    valid = [ONES, ONES, np.array([4, 4])]
    out = swapped_region_iou(negative, valid, on_objects, [2, 2, 5], strata=['a', 'a', 'b'], permutations=5)
    # observed: (2 + 2 + 3) / (2 + 2 + 4 + 9 - 7); null: C fixed, A and B swapped: 3 / (8 + 9 - 3)
    assert out['iou'] == pytest.approx(7 / 10) and out['exchangeable'] == 2
    assert out['null_mean'] == pytest.approx(3 / 14)


def test_nothing_to_move_or_nothing_predicted_gives_no_null():
    alone = swapped_region_iou([np.array([1, 0], bool)], [np.ones(2)], [np.ones(2)], [2], strata=[0])
    assert alone['iou'] == pytest.approx(0.5) and alone['null_mean'] is None and alone['p_greater'] is None
    empty = swapped_region_iou([np.zeros(2, bool)] * 2, [np.ones(2)] * 2, [np.zeros(2)] * 2, [0, 0], strata=[0, 0])
    assert empty['iou'] is None and empty['null_mean'] is None


def test_regions_of_different_sizes_in_one_stratum_are_refused():
    with pytest.raises(ValueError, match='different sizes'):
        swapped_region_iou([np.ones(2, bool), np.ones(3, bool)], [np.ones(2), np.ones(3)],
                           [np.ones(2), np.ones(3)], [2, 3], strata=[0, 0])


def test_derangements_move_every_image_of_a_stratum_uniformly():
    rng = np.random.default_rng(0)
    maps = random_derangements([0, 0, 0, 1, 2, 2], 3000, rng)
    assert (maps[:, 3] == 3).all()                                    # alone: stays
    assert not (maps[:, [0, 1, 2, 4, 5]] == [0, 1, 2, 4, 5]).any()    # no one else keeps its place
    assert set(maps[:, 0]) == {1, 2} and (maps[:, 4] == 5).all()
    # the two derangements of three items, equally often
    assert abs((maps[:, 0] == 1).mean() - 0.5) < 0.03


def independent_p_values(pixels_per_cell, repeats=200):
    """p of regions drawn independently of the objects, 12 images of 36 cells, once per repeat."""
    rng = np.random.default_rng(1)
    p_values = []
    for _ in range(repeats):
        n, cells = 12, 36
        negative = [rng.random(cells) < rng.uniform(0.2, 0.6) for _ in range(n)]
        on_objects = [(rng.random(cells) < 0.3) * pixels_per_cell(rng, cells) for _ in range(n)]
        out = swapped_region_iou(negative, [np.full(cells, 1000)] * n, on_objects,
                                 [int(o.sum()) for o in on_objects], strata=[0] * n, permutations=199,
                                 seed=int(rng.integers(1 << 30)))
        p_values.append(out['p_greater'])
    return np.array(p_values)


def test_regions_independent_of_the_objects_give_uniform_p_values():
    # objects cover a varying part of each cell: the statistic is continuous and p uniform
    p_values = independent_p_values(lambda rng, cells: rng.integers(1, 1000, cells))
    assert stats.kstest(p_values, 'uniform').pvalue > 0.05
    assert 0.05 < np.mean(p_values < 0.1) < 0.15
    # whole cells only: ties between the observed and the null make p conservative, never liberal
    p_values = independent_p_values(lambda rng, cells: np.full(cells, 1000))
    assert np.mean(p_values < 0.1) <= 0.1 and np.mean(p_values) > 0.5


def band_images(tmp_path, object_columns, region_columns):
    """Images 64 x 64 (an 8 x 8 grid at stride 8): d_f converges onto grid columns c..c+2 (image x
    in [8c - 4, 8c + 20); c in 1..4 keeps the band off the border) and the image's one object
    covers columns o..o+2 as its box."""
    dump_dir = tmp_path / 'dumps'
    cols = np.arange(8, dtype=np.float64)
    images, anns = [], []
    for img_id, (o, c) in enumerate(zip(object_columns, region_columns), 1):
        dx = np.clip(-0.5 * (cols - (c + 1)), -0.5, 0.5)
        d_f = np.stack([np.zeros((8, 8)), np.broadcast_to(dx, (8, 8))])
        write_dump(dump_dir, img_id, {'neck.dcn': ({}, same_for_all_taps(d_f))}, ori_shape=(64, 64),
                   img_path=f'{img_id}.png')
        images.append((img_id, f'{img_id}.png', 64, 64))
        anns.append(dict(image_id=img_id, bbox=[8 * o - 4, 0, 24, 64]))
    return str(dump_dir), write_coco(tmp_path / 'ann.json', images, anns)


def test_a_field_converging_on_its_objects_beats_the_null(tmp_path):
    columns = [1 + i % 4 for i in range(10)]
    report = analyze_offsets(*band_images(tmp_path, columns, columns))
    mask = report['layers']['neck.dcn']['negative_divergence_mask']
    assert mask['iou'] == 1.0
    assert mask['null']['null_mean'] < 0.5 and mask['null']['p_greater'] < 0.01
    assert mask['null']['exchangeable'] == 10
    assert report['across_layers']['negative_divergence_segments']['supporting'] == 1


def test_a_field_converging_elsewhere_does_not(tmp_path):
    objects = [1 + i % 4 for i in range(10)]
    regions = [1 + (i + 2) % 4 for i in range(10)]   # the same columns, paired with other images
    assert not any(o == r for o, r in zip(objects, regions))
    report = analyze_offsets(*band_images(tmp_path, objects, regions))
    mask = report['layers']['neck.dcn']['negative_divergence_mask']
    assert mask['iou'] < mask['null']['null_mean']            # worse than chance: never on its object
    assert mask['null']['p_greater'] > 0.5 and mask['null']['p_less'] < 0.05
    assert report['across_layers']['negative_divergence_segments'] == {
        **report['across_layers']['negative_divergence_segments'], 'supporting': 0, 'contradicting': 1}
