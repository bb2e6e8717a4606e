"""Known answers of the offset statistics on hand-built in-memory fields (no dump files).

Layers here have input stride 8 on an image the network saw unresized, so cell (r, c) of a
stride-8 output grid is centred on image pixel (8r + 0.5, 8c + 0.5). A box spanning cells
r0..r1 x c0..c1 is ``cell_box`` of them; with an odd number of cells per side its centre is a
cell centre, and the cells around it are symmetric.
"""
import numpy as np
import pytest

from deform_viz.analysis import (AnalysisSettings, FeatureGeometry, ImageObjects, LayerAnalysis, LayerOffsets,
                                 measure_layer)
from synthetic_dumps import same_for_all_taps, scaled_kernel_field

NO_SHIFT = AnalysisSettings(remove_global_shift=False)


def geometry(grid, s_in=8, s_out=8):
    h, w = grid
    return FeatureGeometry(grid, (s_in, s_in), (s_out, s_out), (h * s_out, w * s_out), (h * s_out, w * s_out),
                           (1.0, 1.0))


def cell_box(r0, c0, r1, c1, stride=8):
    """x0, y0, x1, y1 of the box whose cell centres are rows r0..r1 and columns c0..c1."""
    return [stride * c0 - stride / 2 + 0.5, stride * r0 - stride / 2 + 0.5,
            stride * c1 + stride / 2 + 0.5, stride * r1 + stride / 2 + 0.5]


def radial_d_f(grid, boxes, speed):
    """d_f (2, H, W) of length ``speed`` towards the centre cell of each box (cells), 0 elsewhere."""
    d_f = np.zeros((2,) + grid)
    for r0, c0, r1, c1 in boxes:
        rows, cols = np.mgrid[r0:r1 + 1, c0:c1 + 1]
        dy, dx = (r0 + r1) / 2 - rows, (c0 + c1) / 2 - cols
        norm = np.maximum(np.hypot(dy, dx), 1e-12)
        d_f[0, r0:r1 + 1, c0:c1 + 1] = speed * dy / norm
        d_f[1, r0:r1 + 1, c0:c1 + 1] = speed * dx / norm
    return d_f


GRID = (24, 32)
CELL_BOXES = [(2, 2, 6, 6), (2, 12, 8, 18), (12, 4, 20, 12), (14, 20, 18, 24), (3, 24, 5, 28)]  # odd sides


def converging_images(speed, shift=(0.0, 0.0)):
    """Two images, each with the five boxes and d_f = ``speed`` towards their centres + ``shift``."""
    d_f = radial_d_f(GRID, CELL_BOXES, speed) + np.asarray(shift)[:, None, None]
    objects = ImageObjects(GRID[0] * 8, GRID[1] * 8, [cell_box(*b) for b in CELL_BOXES])
    layer = LayerOffsets.from_fields(same_for_all_taps(d_f), geometry(GRID))
    return [(layer, objects)] * 2


def analyse(images, settings=AnalysisSettings()):
    analysis = LayerAnalysis('layer', settings=settings)
    for layer, objects in images:
        analysis.add(measure_layer(layer, objects, settings))
    return analysis.result()


@pytest.mark.parametrize('settings', [NO_SHIFT, AnalysisSettings()], ids=['raw', 'shift-removed'])
def test_converging_field_points_inwards_significantly(settings):
    inward = analyse(converging_images(0.5, shift=(0.3, -0.2)), settings)['inward_df']
    objects = inward['objects']
    # every cell moves 0.5 input px towards its box centre; the shift cancels over symmetric cells
    assert objects['count'] == 10 and objects['mean'] == pytest.approx(0.5)
    assert objects['sign_test']['positive'] == 10 and objects['sign_test']['p_greater'] == pytest.approx(2 ** -10)
    assert objects['by_size']['medium']['count'] == 8 and objects['by_size']['small']['count'] == 2   # 24x40 px
    assert objects['cells'] == 2 * sum((r1 - r0 + 1) * (c1 - c0 + 1) - 1 for r0, c0, r1, c1 in CELL_BOXES)
    assert inward['narrow_objects'] == 0 and inward['global_shift_removed'] == settings.remove_global_shift


def test_global_shift_is_reported_and_removed():
    """Background carries only the shift: its inward component is the shift's, or 0 once removed."""
    images = converging_images(0.5, shift=(0.3, -0.2))
    raw, removed = analyse(images, NO_SHIFT), analyse(images)
    for result in (raw, removed):
        shift = result['global_shift']
        assert shift['dy']['mean'] == pytest.approx(0.3) and shift['dx']['mean'] == pytest.approx(-0.2)
        assert shift['magnitude'] == pytest.approx({'mean': np.hypot(0.3, 0.2), 'std': 0.0, 'count': 2})
    assert removed['inward_df']['background']['mean'] == pytest.approx(0.0, abs=1e-7)   # float32 offsets
    assert raw['inward_df']['background']['mean'] != pytest.approx(0.0, abs=1e-3)
    assert removed['inward_df']['objects_minus_background']['mean'] == pytest.approx(0.5)


def test_diverging_field_points_outwards():
    objects = analyse(converging_images(-0.25))['inward_df']['objects']
    assert objects['mean'] == pytest.approx(-0.25)
    assert objects['sign_test']['positive'] == 0 and objects['sign_test']['p_less'] == pytest.approx(2 ** -10)


def test_inward_cells_follow_the_masks():
    """Inwards on a mask covering a box's left half, outwards on its right: the mask decides."""
    r0, c0, r1, c1 = 4, 4, 12, 12
    d_f = radial_d_f(GRID, [(r0, c0, r1, c1)], 0.5)
    d_f[:, :, 9:] *= -1                                              # right of the centre column: outwards
    box = cell_box(r0, c0, r1, c1)
    mask = np.zeros((GRID[0] * 8, GRID[1] * 8), dtype=bool)
    mask[int(box[1]):int(box[3]), int(box[0]):8 * 8 + 4] = True      # cell columns 4..8 (centres x <= 64.5)
    layer = LayerOffsets.from_fields(same_for_all_taps(d_f), geometry(GRID))
    with_mask = ImageObjects(mask.shape[0], mask.shape[1], [box], masks=[mask])
    without = ImageObjects(mask.shape[0], mask.shape[1], [box])
    assert with_mask.mask_source == 'masks' and without.mask_source == 'boxes'
    rows = measure_layer(layer, with_mask, NO_SHIFT).boxes
    # left half and the centre column, less the centre cell; the centre column's cells have d_f along y
    assert rows['inward_cells'][0] == 9 * 5 - 1
    assert rows['inward_df'][0] == pytest.approx(0.5)
    box_rows = measure_layer(layer, without, NO_SHIFT).boxes
    assert box_rows['inward_cells'][0] == 81 - 1
    assert box_rows['inward_df'][0] == pytest.approx(0.5 * 8 / 80, abs=1e-12)   # only the centre column is left


def test_narrow_objects_are_left_out_of_the_inward_test():
    boxes = [(2, 2, 3, 20), (10, 10, 14, 14)]                      # 2 cells high: too narrow for 3 cells
    d_f = radial_d_f(GRID, boxes, 0.5)
    objects = ImageObjects(GRID[0] * 8, GRID[1] * 8, [cell_box(*b) for b in boxes])
    result = analyse([(LayerOffsets.from_fields(same_for_all_taps(d_f), geometry(GRID)), objects)])
    assert result['inward_df']['narrow_objects'] == 1 and result['inward_df']['objects']['count'] == 1
    relaxed = analyse([(LayerOffsets.from_fields(same_for_all_taps(d_f), geometry(GRID)), objects)],
                      AnalysisSettings(min_object_cells=2))
    assert relaxed['inward_df']['objects']['count'] == 2


def random_boxes(rng, grid, count):
    """``count`` non-overlapping boxes of sqrt(area) 10 to 120 px (log-uniform) at random places."""
    taken = np.zeros(grid, dtype=bool)
    boxes = []
    while len(boxes) < count:
        side = np.exp(rng.uniform(np.log(10), np.log(120)))
        aspect = np.exp(rng.uniform(-0.4, 0.4))
        w, h = side * aspect, side / aspect
        x0, y0 = rng.uniform(0, grid[1] * 8 - w), rng.uniform(0, grid[0] * 8 - h)
        cells = (slice(int(y0 // 8), int((y0 + h) // 8) + 2), slice(int(x0 // 8), int((x0 + w) // 8) + 2))
        if not taken[cells].any():
            taken[cells] = True
            boxes.append([x0, y0, x0 + w, y0 + h])
    return np.array(boxes)


def extent_images(radius_of, seed=0, images=24, per_image=6):
    """Images whose kernel scale is ``radius_of(rng, sizes map)`` per cell: (layer, objects) pairs."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(images):
        boxes = random_boxes(rng, GRID, per_image)
        objects = ImageObjects(GRID[0] * 8, GRID[1] * 8, boxes)
        ys, xs = geometry(GRID).cell_centres()
        owner = objects.assign(ys, xs)
        scale = radius_of(rng, np.where(owner >= 0, objects.sqrt_areas[np.maximum(owner, 0)], 0.0))
        out.append((LayerOffsets.from_fields(scaled_kernel_field(scale), geometry(GRID)), objects))
    return out


def test_extent_independent_of_size_is_not_significant_for_any_statistic():
    """Kernel scales drawn independently per cell, over ten data sets: the per-box maximum grows
    with the cell count, so its plain Spearman is strongly positive every time; its stratified null
    must absorb that, and no statistic may reject more often than a 5 % test does by chance."""
    noise = lambda rng, size: rng.lognormal(0.0, 0.3, size.shape)    # noqa: E731
    settings = AnalysisSettings(permutations=199)
    results = [analyse(extent_images(noise, seed, images=12), settings)['extent_vs_size'] for seed in range(10)]
    assert all(ext['num_objects'] == 72 for ext in results)
    assert all(ext['box_max']['rho'] > 0.4 and ext['box_max']['scipy_p_value'] < 1e-3 for ext in results)  # bias
    assert all(ext['box_max']['null_rho'] > 0.3 and ext['box_max']['exchangeable'] > 30 for ext in results)
    for statistic in ('centre', 'box_max', 'box_mean'):
        rejections = sum(ext[statistic]['p_value'] < 0.05 for ext in results)
        assert rejections <= 2, (statistic, [ext[statistic]['p_value'] for ext in results])


def test_extent_that_tracks_size_is_found():
    tracks = lambda rng, size: np.where(size > 0, size / 30, 1.0) * rng.lognormal(0.0, 0.05, size.shape)  # noqa
    ext = analyse(extent_images(tracks))['extent_vs_size']
    assert ext['centre']['rho'] > 0.95 and ext['centre']['p_greater'] == pytest.approx(1 / 1000)
    assert ext['box_mean']['rho'] > 0.95 and ext['box_mean']['p_greater'] < 0.01


def test_divergence_has_one_scale_at_every_stride():
    """d_f = -k (p - p0) in input pixels has divergence -2k at conv stride 1 and 2 alike."""
    k, grid = 0.1, (6, 7)
    rows, cols = np.mgrid[0:grid[0], 0:grid[1]].astype(np.float64)
    for s_in, s_out in ((8, 8), (4, 8), (8, 16)):
        step = s_out / s_in                                   # input pixels between output cells
        d_f = np.stack([-k * step * (rows - 3), -k * step * (cols - 2)])
        layer = LayerOffsets.from_fields(same_for_all_taps(d_f), geometry(grid, s_in, s_out))
        np.testing.assert_allclose(layer.divergence, -2 * k, atol=1e-12)


def test_in_memory_fields_are_checked():
    with pytest.raises(ValueError, match=r'expected \(G, K\*K, 2, H, W\)'):
        LayerOffsets.from_fields(np.zeros((9, 2, 4, 4)), geometry((4, 4)))
    with pytest.raises(ValueError, match='grid'):
        LayerOffsets.from_fields(np.zeros((1, 9, 2, 4, 5)), geometry((4, 4)))
    with pytest.raises(ValueError, match='x1 > x0'):
        ImageObjects(32, 32, [[10, 0, 5, 8]])
    with pytest.raises(ValueError, match='2 masks for 1 boxes'):
        ImageObjects(32, 32, [[0, 0, 5, 8]], masks=[None, None])
    with pytest.raises(ValueError, match='mask of shape'):
        ImageObjects(32, 32, [[0, 0, 5, 8]], masks=[np.zeros((8, 8), bool)])
    with pytest.raises(ValueError, match='min_object_cells'):
        AnalysisSettings(min_object_cells=0)
    with pytest.raises(ValueError, match='mask_source'):
        AnalysisSettings(mask_source='polygons')
