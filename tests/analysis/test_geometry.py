"""Geometry on hand-built offset fields with known answers, and the feature-grid <-> image map."""
import numpy as np
import pytest

from deform_viz.analysis import FeatureGeometry, GeometryError, LayerOffsets
from deform_viz.dump import load_offset_dump
from synthetic_dumps import same_for_all_taps, scaled_kernel_field, write_dump

H, W = 9, 11


def load_layer(tmp_path, offset, name='backbone.layer3.0.conv2', **kwargs):
    layer_kwargs = kwargs.pop('layer_kwargs', {})
    path = write_dump(tmp_path, 1, {name: (layer_kwargs, offset)}, **kwargs)
    return LayerOffsets.from_dump(load_offset_dump(path), name)


def test_converging_field_has_negative_divergence_at_its_sink(tmp_path):
    rows, cols = np.mgrid[0:H, 0:W].astype(np.float64)
    k, sink = 0.4, (4, 6)
    d_f = np.stack([-k * (rows - sink[0]), -k * (cols - sink[1])])   # every arrow points at the sink
    layer = load_layer(tmp_path, same_for_all_taps(d_f), ori_shape=(H * 8, W * 8))
    div = layer.divergence[0]
    assert div[sink] < 0
    np.testing.assert_allclose(div, -2 * k, atol=1e-6)        # linear field: exact, borders included
    np.testing.assert_allclose(layer.d_f[0], d_f, atol=1e-6)
    np.testing.assert_allclose(layer.d_k, 0, atol=1e-6)
    # and a diverging field is positive
    layer = load_layer(tmp_path, same_for_all_taps(-d_f), ori_shape=(H * 8, W * 8))
    assert layer.divergence[0][sink] > 0


@pytest.mark.parametrize('dilation', [1, 2])
@pytest.mark.parametrize('scale', [0.5, 1.0, 2.5])
def test_scaled_kernel_extent_and_dilation(tmp_path, scale, dilation):
    offset = scaled_kernel_field(np.full((H, W), scale), dilation=dilation)
    layer = load_layer(tmp_path, offset, layer_kwargs=dict(dilation=dilation), ori_shape=(H * 8, W * 8))
    width, height = layer.extent
    rigid_extent = 2 * dilation                       # (K - 1) * dilation for K = 3
    np.testing.assert_allclose(width, scale * rigid_extent, rtol=1e-6)
    np.testing.assert_allclose(height, scale * rigid_extent, rtol=1e-6)
    np.testing.assert_allclose(layer.effective_dilation, scale * dilation, rtol=1e-6)
    # radius in image pixels: input stride 8, no resize
    assert layer.rigid_radius_image == pytest.approx(rigid_extent * 8)
    np.testing.assert_allclose(layer.radius_image, scale * rigid_extent * 8, rtol=1e-6)
    np.testing.assert_allclose(layer.d_f, 0, atol=1e-6)       # scaling is all d_k


def test_zero_offsets_effective_dilation_equals_dilation(tmp_path):
    for dilation in (1, 2, 3):
        layer = load_layer(tmp_path, np.zeros((1, 9, 2, H, W), np.float32),
                           layer_kwargs=dict(dilation=dilation), ori_shape=(H * 8, W * 8))
        np.testing.assert_allclose(layer.effective_dilation, dilation)


def test_sampling_positions_on_image_follow_stride_scale_and_flip(tmp_path):
    offset = np.zeros((1, 9, 2, H, W), np.float32)
    offset[0, :, 1] = 1.0                             # every tap moves one input pixel to the right
    # image 2x the network input, input stride 4, conv stride 2 (output stride 8)
    ori, net = (H * 16, W * 16), (H * 8, W * 8)
    layer = load_layer(tmp_path, offset, layer_kwargs=dict(s_in=4, s_out=8), ori_shape=ori, img_shape=net)
    ys, xs = layer.cell_centres_image
    assert (ys[2, 3], xs[2, 3]) == pytest.approx(((8 * 2 + 0.5) * 2, (8 * 3 + 0.5) * 2))
    centre_tap = layer.sampling_image[0, 4, :, 2, 3]  # tap (0, 0): the centre plus one input px right
    assert tuple(centre_tap) == pytest.approx((ys[2, 3], xs[2, 3] + 4 * 2))
    np.testing.assert_allclose(layer.d_f_image[0, 1], 8.0)     # 1 input px = 4 net px = 8 image px

    flipped = load_layer(tmp_path, offset, layer_kwargs=dict(s_in=4, s_out=8), ori_shape=ori, img_shape=net,
                         flip=True)
    fys, fxs = flipped.cell_centres_image
    np.testing.assert_allclose(fxs, ori[1] - xs)      # mirrored on the original image
    np.testing.assert_allclose(fys, ys)
    np.testing.assert_allclose(flipped.d_f_image[0, 1], -8.0)  # a rightward offset points left
    assert flipped.radius_image == pytest.approx(layer.radius_image)


def test_geometry_round_trip_and_painting():
    geom = FeatureGeometry(grid_shape=(6, 8), input_stride=(8, 8), output_stride=(16, 16), img_shape=(96, 128),
                           ori_shape=(192, 256), scale_factor=(0.5, 0.5), flip_direction='horizontal')
    rows, cols = np.mgrid[0:6, 0:8]
    y, x = geom.grid_to_image(rows, cols)
    back_r, back_c, inside = geom.image_to_grid(y, x)
    assert inside.all() and (back_r == rows).all() and (back_c == cols).all()
    values = np.arange(48).reshape(6, 8)
    painted = geom.to_image_resolution(values)
    assert painted.shape == (192, 256)
    # every cell shows up, each in a block of about (cell size)^2 pixels
    counts = np.bincount(painted.ravel(), minlength=48)
    assert counts.min() > 0 and counts.sum() == 192 * 256
    assert geom.cell_size_on_image == (32.0, 32.0)
    # far outside points are flagged
    assert not geom.image_to_grid(np.array([-100.0]), np.array([10.0]))[2][0]


def test_geometry_rejects_bad_metadata():
    with pytest.raises(GeometryError, match='flip_direction'):
        FeatureGeometry((2, 2), (4, 4), (8, 8), (16, 16), (16, 16), (1, 1), flip_direction='sideways')
    with pytest.raises(GeometryError, match="no 'input_stride'"):
        FeatureGeometry.from_meta(dict(img_shape=[8, 8], ori_shape=[8, 8]), dict(name='x', output_stride=8), (1, 1))


def test_stacked_sampling_composes_layers(tmp_path):
    from deform_viz.analysis.fields import feeding_layers, stacked_sampling_positions
    zero = np.zeros((1, 9, 2, 8, 8), np.float32)
    shifted = zero.copy()
    shifted[0, :, 1] = 1.0                         # the lower layer samples one input px to the right
    layers = {'stage3.a': (dict(s_in=8, s_out=16), np.zeros((1, 9, 2, 4, 4), np.float32)),
              'stage4.b': (dict(s_in=16, s_out=16), zero[..., :4, :4]),
              'stage4.c': (dict(s_in=16, s_out=16), zero[..., :4, :4])}
    dump = load_offset_dump(write_dump(tmp_path, 1, layers, ori_shape=(64, 64)))
    assert [lo.name for lo in feeding_layers(dump, 'stage4.c', 5)] == ['stage4.b', 'stage3.a']
    assert feeding_layers(dump, 'stage3.a', 2) == []

    dump = load_offset_dump(write_dump(tmp_path, 2, {'low': (dict(s_in=8, s_out=8), shifted),
                                                     'top': (dict(s_in=8, s_out=8), zero)}, ori_shape=(64, 64)))
    top = LayerOffsets.from_dump(dump, 'top')
    below = feeding_layers(dump, 'top', 1)
    level0, level1 = stacked_sampling_positions(top, below, 4, 4)
    assert level0.shape == (9, 2) and level1.shape == (81, 2)
    # rigid 3x3 of a rigid 3x3: offsets -2..2 cells (8 image px each) around (4, 4), the lower layer's
    # shift adds one input px = 8 image px to every x
    dy = np.round((level1[:, 0] - (4 * 8 + 0.5)) / 8).astype(int)
    dx = np.round((level1[:, 1] - (4 * 8 + 0.5) - 8) / 8).astype(int)
    counts = {}
    for pair in zip(dy, dx):
        counts[pair] = counts.get(pair, 0) + 1
    assert counts[(0, 0)] == 9 and counts[(2, 2)] == 1 and set(dy) == set(dx) == {-2, -1, 0, 1, 2}
    first = load_offset_dump(tmp_path / '1.npz')
    with pytest.raises(ValueError, match='does not produce the map'):
        stacked_sampling_positions(LayerOffsets.from_dump(first, 'stage3.a'),
                                   [LayerOffsets.from_dump(first, 'stage4.b')], 0, 0)
    with pytest.raises(ValueError, match='from image 1'):
        stacked_sampling_positions(top, [LayerOffsets.from_dump(first, 'stage4.b')], 0, 0)


@pytest.mark.parametrize('grid', [(5, 7), (3, 4)], ids=['whole', 'cropped'])
@pytest.mark.parametrize('flip', [None, 'horizontal', 'vertical', 'diagonal'])
def test_sum_over_cells_is_the_transpose_of_painting(flip, grid):
    """Summing per-pixel values over the pixels each cell paints, checked pixel by pixel (a
    cropped grid leaves pixels outside it)."""
    geom = FeatureGeometry(grid_shape=grid, input_stride=(8, 8), output_stride=(16, 16), img_shape=(75, 110),
                           ori_shape=(50, 73), scale_factor=(110 / 73, 1.5), flip_direction=flip)
    values = np.random.default_rng(0).integers(0, 5, size=(50, 73))
    rows, cols, inside = geom.pixel_cells()
    expected = np.zeros(grid, dtype=np.int64)
    np.add.at(expected, (rows[inside], cols[inside]), values[inside])
    np.testing.assert_array_equal(geom.sum_over_cells(values), expected)
    assert (expected > 0).all() and inside.all() == (grid == (5, 7))
    with pytest.raises(GeometryError, match='do not match the image'):
        geom.sum_over_cells(values[:10])
