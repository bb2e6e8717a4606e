"""Shape outlines, the stretch-rotate-scale sampler, rendering coverage, and the pretraining crops."""
import numpy as np
import pytest

from deform_viz.datasets.crops import CROP_CLASSES, render_crops
from deform_viz.datasets.render import coverage, pixel_span
from deform_viz.datasets.shapes import (DETECTION_CLASSES, EXTRA_CLASSES, SHAPE_BUILDERS, polygon_area,
                                        sample_shape_polygon)


def mask_of(polygon: np.ndarray, size: int) -> np.ndarray:
    """(size, size) coverage of ``polygon`` on the pixel grid starting at (0, 0)."""
    return coverage(polygon, np.zeros(2, dtype=int), np.array([size, size]))


def test_detection_classes_come_first_and_extras_are_disjoint():
    assert CROP_CLASSES[:len(DETECTION_CLASSES)] == DETECTION_CLASSES
    assert set(DETECTION_CLASSES).isdisjoint(EXTRA_CLASSES)
    assert tuple(SHAPE_BUILDERS) == CROP_CLASSES


@pytest.mark.parametrize('name', CROP_CLASSES)
def test_sampler_keeps_area_and_box_at_origin(name):
    rng = np.random.default_rng(1)
    for sqrt_area, aspect in ((10.0, 1.0), (30.0, 3.0), (30.0, 1 / 3), (50.0, 2.0)):
        polygon = sample_shape_polygon(name, rng, sqrt_area, aspect, max_extent=1000)
        assert polygon_area(polygon) == pytest.approx(sqrt_area ** 2, rel=1e-9)
        np.testing.assert_allclose(polygon.min(axis=0), 0, atol=1e-9)


def test_stretch_is_applied_before_rotation():
    """A stretched square stays a rectangle with side ratio = aspect, whatever the rotation."""
    rng = np.random.default_rng(2)
    for aspect in (1.0, 1.7, 3.0, 0.4):
        corners = sample_shape_polygon('rectangle', rng, 20.0, aspect, max_extent=1000)
        sides = np.roll(corners, -1, axis=0) - corners
        lengths = np.linalg.norm(sides, axis=1)
        assert np.dot(sides[0], sides[1]) == pytest.approx(0, abs=1e-9)
        assert lengths[0] / lengths[1] == pytest.approx(aspect, rel=1e-9)


def test_stretch_gives_way_to_fit_the_box_and_the_area_never_changes():
    rng = np.random.default_rng(3)
    polygon = sample_shape_polygon('rectangle', rng, 40.0, 3.0, max_extent=60.0)  # 69 x 23 unrotated
    assert polygon.max() <= 60.0 + 1e-9
    assert polygon_area(polygon) == pytest.approx(1600.0, rel=1e-9)
    shrunk = sample_shape_polygon('star', rng, 100.0, 1.0, max_extent=60.0)  # too big even unstretched
    assert shrunk.max() == pytest.approx(60.0, rel=1e-9)


def test_ring_has_a_hole_and_crescent_a_bite():
    rng = np.random.default_rng(4)
    ring = SHAPE_BUILDERS['ring'](rng) * 20 + 24  # outer radius 20 about (24, 24)
    mask = mask_of(ring, 48)
    assert mask[24, 24] == 0 and mask[24, 41] == 1 and mask[24, 6] == 1 and mask[24, 46] == 0
    inner = np.linalg.norm(ring[-2] - 24) / 20  # the inner circle's radius ratio
    assert 0.45 <= inner <= 0.65
    assert polygon_area(ring) == pytest.approx(np.pi * 400 * (1 - inner ** 2), rel=0.01)
    crescent = SHAPE_BUILDERS['crescent'](rng) * 20 + 24  # the unit disc minus a disc about (c, 0), c > 0
    mask = mask_of(crescent, 48)
    assert mask[24, 24] == 0 and mask[24, 6] == 1 and mask[24, 41] == 0


def test_coverage_is_the_covered_fraction_of_each_pixel():
    square = np.array([[1.0, 1.0], [3.5, 1.0], [3.5, 3.0], [1.0, 3.0]])  # x in [1, 3.5), y in [1, 3)
    first, last = pixel_span(square)
    np.testing.assert_array_equal(first, [1, 1])
    np.testing.assert_array_equal(last, [3, 2])
    alpha = coverage(square, first, last - first + 1)
    np.testing.assert_allclose(alpha, [[1, 1, 0.5], [1, 1, 0.5]], atol=1 / 255)


def test_crops_depend_only_on_seed_split_and_index():
    images, labels = render_crops(0, 'train', 0, 12, 32, 0.8)
    assert images.shape == (12, 32, 32, 3) and images.dtype == np.uint8 and labels.dtype == np.int64
    middle, middle_labels = render_crops(0, 'train', 5, 3, 32, 0.8)
    np.testing.assert_array_equal(middle, images[5:8])
    np.testing.assert_array_equal(middle_labels, labels[5:8])
    val, _ = render_crops(0, 'val', 0, 12, 32, 0.8)
    other_seed, _ = render_crops(1, 'train', 0, 12, 32, 0.8)
    assert all((val[k] != images[k]).any() and (other_seed[k] != images[k]).any() for k in range(12))


def test_crops_draw_every_class_about_equally_often():
    _, labels = render_crops(0, 'val', 0, 600, 32, 0.8)
    counts = np.bincount(labels, minlength=len(CROP_CLASSES))
    assert counts.min() >= 35 and counts.max() <= 85  # 60 expected per class


def test_crops_bad_split_fails():
    with pytest.raises(ValueError, match=r"split must be one of \('train', 'val'\), got 'test'"):
        render_crops(0, 'test', 0, 1, 32, 0.8)
