"""Geometry on hand-built offset fields with known answers, and the feature-grid <-> image map."""
import numpy as np
import pytest

from deform_viz.analysis import FeatureGeometry, GeometryError, LayerOffsets
from deform_viz.analysis.fields import feeding_layers, stacked_sampling_positions
from deform_viz.dump import load_offset_dump
import sampling_reference
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


@pytest.mark.parametrize('flip', ['vertical', 'diagonal'])
def test_vertical_and_diagonal_flips_by_hand(flip):
    """A 9 x 11 grid, input stride 8, on a 72 x 88 network image resized from 144 x 88 (only y
    scaled by 0.5): every map undoes the flip, then the resize, each along its own axis."""
    geom = FeatureGeometry(grid_shape=(H, W), input_stride=(8, 8), output_stride=(8, 8), img_shape=(72, 88),
                           ori_shape=(144, 88), scale_factor=(1.0, 0.5), flip_direction=flip)
    offset = np.zeros((1, 9, 2, H, W))
    offset[0, :, 0], offset[0, :, 1] = 0.5, 1.0            # every tap moves (0.5, 1.0) input px
    layer = LayerOffsets.from_fields(offset, geom)
    mirrored_x = flip == 'diagonal'
    # cell (2, 3): network (16.5, 24.5), mirrored to (72 - 16.5, 88 - 24.5 if diagonal)
    ys, xs = layer.cell_centres_image
    assert (ys[2, 3], xs[2, 3]) == pytest.approx((55.5 / 0.5, 63.5 if mirrored_x else 24.5))
    # d_f (0.5, 1.0) input px = (4, 8) network px, pointing up (and left) on the original image
    assert tuple(layer.d_f_image[0, :, 2, 3]) == pytest.approx((-4 / 0.5, -8.0 if mirrored_x else 8.0))
    # the centre tap samples input (2.5, 4.0) = network (20.5, 32.5)
    assert tuple(layer.sampling_image[0, 4, :, 2, 3]) == pytest.approx((51.5 / 0.5, 55.5 if mirrored_x else 32.5))
    # the rigid kernel spans 2 input px: 32 image px along y, 16 along x, whatever the flip
    assert layer.rigid_radius_image == pytest.approx(np.sqrt(32 * 16))
    assert geom.cell_size_on_image == (16.0, 8.0)
    # back to the grid, and painting: image row 0 is the network's last row (grid row 8)
    rows, cols, inside = geom.image_to_grid(np.array([111.0, 0.5]), np.array([63.5 if mirrored_x else 24.5, 0.5]))
    assert rows.tolist() == [2, 8] and cols.tolist() == [3, 10 if mirrored_x else 0] and inside.all()
    painted = geom.to_image_resolution(np.arange(H * W).reshape(H, W))
    assert painted[111, 63 if mirrored_x else 24] == 2 * W + 3
    assert painted[0, 0] == 8 * W + (10 if mirrored_x else 0)


def test_anisotropic_kernel_extent_and_dilation():
    """A 3 x 5 kernel with dilation (2, 1), stretched by 0.5 along y and 1.5 along x: width and
    height differ, and 12 horizontal pairs weigh against 10 vertical ones."""
    kernel, dilation = (3, 5), (2, 1)
    geom = FeatureGeometry(grid_shape=(4, 6), input_stride=(8, 8), output_stride=(8, 8), img_shape=(32, 48),
                           ori_shape=(64, 48), scale_factor=(1.0, 0.5), kernel_size=kernel, dilation=dilation)
    ky, kx = np.meshgrid((np.arange(3) - 1) * 2.0, (np.arange(5) - 2) * 1.0, indexing='ij')   # rigid taps
    stretch = np.stack([(0.5 - 1) * ky.ravel(), (1.5 - 1) * kx.ravel()], axis=1)          # (15, 2)
    offset = np.broadcast_to(stretch[None, :, :, None, None], (1, 15, 2, 4, 6)).copy()
    layer = LayerOffsets.from_fields(offset, geom)
    width, height = layer.extent
    np.testing.assert_allclose(width, 1.5 * 4, rtol=1e-12)      # columns -2..2 at gap 1, stretched 1.5
    np.testing.assert_allclose(height, 0.5 * 4, rtol=1e-12)     # rows -1..1 at gap 2, stretched 0.5
    np.testing.assert_allclose(layer.effective_dilation, (12 * 1.5 + 10 * 1.0) / 22, rtol=1e-12)
    # in image px: x keeps the input stride 8, y doubles it (the network saw half the height)
    np.testing.assert_allclose(layer.radius_image, np.sqrt(6 * 8 * 2 * 16), rtol=1e-12)
    assert geom.lengths_to_image(2.0, 6.0) == pytest.approx((2 * 16, 6 * 8))   # (height, width) in image px
    rigid = LayerOffsets.from_fields(np.zeros_like(offset), geom)
    np.testing.assert_allclose(rigid.extent[0], 4.0)
    np.testing.assert_allclose(rigid.extent[1], 4.0)
    np.testing.assert_allclose(rigid.effective_dilation, (12 * 1 + 10 * 2) / 22, rtol=1e-12)
    assert rigid.rigid_radius_image == pytest.approx(np.sqrt(4 * 8 * 4 * 16))
    # the sampling positions: tap (0, 2) (row 0, last column) at (-2 * 0.5, 2 * 1.5) from the centre
    assert tuple(layer.sampling_offsets[0, 4, :, 1, 1]) == pytest.approx((-1.0, 3.0))


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
    # every cell paints one block: cell centres sit on original pixels 32r + 1 (rows) and, mirrored,
    # 255 - 32c (columns); a pixel takes its nearest centre, the last cells also everything beyond
    row_of = np.repeat(np.arange(6), [17, 32, 32, 32, 32, 47])
    col_of = np.repeat(np.arange(8)[::-1], [47, 32, 32, 32, 32, 32, 32, 17])
    np.testing.assert_array_equal(painted, values[row_of][:, col_of])
    assert geom.cell_size_on_image == (32.0, 32.0)
    # far outside points are flagged
    assert not geom.image_to_grid(np.array([-100.0]), np.array([10.0]))[2][0]


def test_padding_other_than_same_shifts_the_cells():
    """A 3x3 conv with dilation 2 and padding 1 (same padding would be 2) at stride 2: output cell
    (r, c) is centred on input pixel (2r + 1, 2c + 1) (-padding + (K - 1) / 2 * dilation = 1)."""
    geom = FeatureGeometry(grid_shape=(5, 6), input_stride=(4, 4), output_stride=(8, 8), img_shape=(48, 56),
                           ori_shape=(48, 56), scale_factor=(1.0, 1.0), dilation=(2, 2), padding=(1, 1))
    np.testing.assert_allclose(geom.grid_to_input(np.array([0, 2]), np.array([0, 3])), [[1, 5], [1, 7]])
    ys, xs = geom.cell_centres()
    assert (ys[2, 3], xs[2, 3]) == pytest.approx((5 * 4 + 0.5, 7 * 4 + 0.5))
    rows, cols, inside = geom.image_to_grid(ys.ravel(), xs.ravel())
    assert inside.all() and (rows.reshape(5, 6) == np.arange(5)[:, None]).all()
    assert (cols.reshape(5, 6) == np.arange(6)[None]).all()
    assert geom.placement is geom
    # centres at x = 4.5, 12.5, ...: pixel 8 (centre 8.5, a tie) and the 7 after it are cell 1's
    painted = geom.to_image_resolution(np.arange(30).reshape(5, 6))
    assert painted[0, :8].tolist() == [0] * 8 and painted[0, 8:16].tolist() == [1] * 8


def test_geometry_rejects_bad_metadata():
    with pytest.raises(GeometryError, match='flip_direction'):
        FeatureGeometry((2, 2), (4, 4), (8, 8), (16, 16), (16, 16), (1, 1), flip_direction='sideways')
    with pytest.raises(GeometryError, match="no 'input_stride'"):
        FeatureGeometry.from_meta(dict(img_shape=[8, 8], ori_shape=[8, 8]), dict(name='x', output_stride=8), (1, 1))


def test_feeding_layers_and_stacking_errors(tmp_path):
    zero = np.zeros((1, 9, 2, 4, 4), np.float32)
    layers = {'stage3.a': (dict(s_in=8, s_out=16), zero),
              'stage4.b': (dict(s_in=16, s_out=16), zero),
              'stage4.c': (dict(s_in=16, s_out=16), zero)}
    first = load_offset_dump(write_dump(tmp_path, 1, layers, ori_shape=(64, 64)))
    assert [lo.name for lo in feeding_layers(first, 'stage4.c', 5)] == ['stage4.b', 'stage3.a']
    assert [lo.name for lo in feeding_layers(first, 'stage4.c', 1)] == ['stage4.b']
    assert feeding_layers(first, 'stage3.a', 2) == []
    with pytest.raises(ValueError, match='does not produce the map'):
        stacked_sampling_positions(LayerOffsets.from_dump(first, 'stage3.a'),
                                   [LayerOffsets.from_dump(first, 'stage4.b')], 0, 0)
    other = load_offset_dump(write_dump(tmp_path, 2, layers, ori_shape=(64, 64)))
    with pytest.raises(ValueError, match='from image 1'):
        stacked_sampling_positions(LayerOffsets.from_dump(other, 'stage4.c'),
                                   [LayerOffsets.from_dump(first, 'stage4.b')], 0, 0)


def linear_field(grid, taps, per_tap, d_row, d_col):
    """Offsets (1, taps, 2, H, W) linear in the cell: tap n gets per_tap[c] * n + d_row[c] * r + d_col[c] * col
    for c in (dy, dx), so that bilinear interpolation between cells is exact."""
    rows, cols = np.mgrid[0:grid[0], 0:grid[1]].astype(np.float64)
    out = np.zeros((1, taps, 2) + grid)
    for n in range(taps):
        for c in range(2):
            out[0, n, c] = per_tap[c][0] + per_tap[c][1] * n + d_row[c] * rows + d_col[c] * cols
    return out


def stacked_layers(flip=None):
    """A 4 x 5 grid on a 32 x 40 network image of a 64 x 80 original (scale 0.5):
    top: input stride 8, conv stride 1; low: input stride 4, conv stride 2 (so top's input
    pixel j is low's output cell j and sits on low's input pixel 2j); bottom: input stride 4,
    conv stride 1, under low."""
    grid = (4, 5)

    def geometry(s_in, s_out):
        return FeatureGeometry(grid_shape=grid if s_out == 8 else (8, 10), input_stride=(s_in, s_in),
                               output_stride=(s_out, s_out), img_shape=(32, 40), ori_shape=(64, 80),
                               scale_factor=(0.5, 0.5), flip_direction=flip)
    # top: tap n of cell (r, c) moves by (0.3 + 0.05 n + 0.01 r, -0.4 + 0.02 n - 0.03 c)
    top = linear_field(grid, 9, ((0.3, 0.05), (-0.4, 0.02)), (0.01, 0.0), (0.0, -0.03))
    # low: tap m of cell (r, c) moves by (0.1 m + 0.5 r - 0.25 c, -0.2 + 0.125 r + 0.25 c)
    low = linear_field(grid, 9, ((0.0, 0.1), (-0.2, 0.0)), (0.5, 0.125), (-0.25, 0.25))
    bottom = linear_field((8, 10), 9, ((0.05, -0.02), (0.1, 0.01)), (-0.1, 0.05), (0.2, -0.05))
    return [LayerOffsets.from_fields(top, geometry(8, 8), 'top', image_id=1),
            LayerOffsets.from_fields(low, geometry(4, 8), 'low', image_id=1),
            LayerOffsets.from_fields(bottom, geometry(4, 4), 'bottom', image_id=1)]


def test_stacked_sampling_known_answer():
    """Cell (0, 4) of the top is a corner: some of its taps land off the lower grid, where the
    lower offsets are read at the clamped position (their rigid base is not clamped)."""
    top, low, bottom = stacked_layers()
    level0, level1 = stacked_sampling_positions(top, [low], 0, 4)
    assert level0.shape == (9, 2) and level1.shape == (81, 2)
    # by hand, tap 0 (rigid (-1, -1)): top offset (0.3, -0.4 - 0.03 * 4) -> top input (-0.7, 2.48),
    # image ((-0.7 * 8 + 0.5) / 0.5, (2.48 * 8 + 0.5) / 0.5)
    assert tuple(level0[0]) == pytest.approx((-10.2, 40.68))
    # tap 8 (rigid (1, 1)): offset (0.3 + 0.4, -0.4 + 0.16 - 0.12) -> (1.7, 4.64)
    assert tuple(level0[8]) == pytest.approx(((1.7 * 8 + 0.5) * 2, (4.64 * 8 + 0.5) * 2))
    # its first point's tap 0 in low: base 2 * (-0.7, 2.48); offsets read at the clamped cell (0, 2.48):
    # (0 + 0 - 0.25 * 2.48, -0.2 + 0 + 0.25 * 2.48) = (-0.62, 0.42); tap (-1, -1): (-3.02, 4.38) in low input
    assert tuple(level1[0]) == pytest.approx(((-3.02 * 4 + 0.5) * 2, (4.38 * 4 + 0.5) * 2))
    # tap 8 of top's tap 8: cell (1.7, 4.64) is off the grid in x only: read at (1.7, 4);
    # (0.8 + 0.85 - 1.0, -0.2 + 0.2125 + 1.0) + rigid (1, 1) + base (3.4, 9.28)
    assert tuple(level1[80]) == pytest.approx(((5.05 * 4 + 0.5) * 2, (11.2925 * 4 + 0.5) * 2))
    # every point, in order (tap by tap of each earlier point), against the scalar reference
    for cell in [(0, 4), (2, 1), (3, 0)]:
        expected = sampling_reference.stacked_points([top, low, bottom], *cell)
        got = stacked_sampling_positions(top, [low, bottom], *cell)
        assert [len(level) for level in got] == [9, 81, 729]
        for depth in range(3):
            np.testing.assert_allclose(got[depth], expected[depth], rtol=0, atol=1e-9)


@pytest.mark.parametrize('flip', ['vertical', 'diagonal'])
def test_stacked_sampling_on_a_flipped_image(flip):
    top, low, _ = stacked_layers(flip)
    level0, level1 = stacked_sampling_positions(top, [low], 0, 4)
    # tap 0 above: (-10.2, 40.68) unflipped, mirrored in the 32 x 40 network image, then resized
    y, x = (32 - (-0.7 * 8 + 0.5)) * 2, (2.48 * 8 + 0.5) * 2
    if flip == 'diagonal':
        x = (40 - (2.48 * 8 + 0.5)) * 2
    assert tuple(level0[0]) == pytest.approx((y, x))
    expected = sampling_reference.stacked_points([top, low], 0, 4)
    np.testing.assert_allclose(level1, expected[1], rtol=0, atol=1e-9)


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
