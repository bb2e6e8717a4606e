"""Figures from dumps: files of the expected size, deterministic; and their content, read back from the
matplotlib artists and compared with positions, vectors and radii computed by hand."""

import numpy as np
import pytest
from PIL import Image

from deform_viz.analysis import LayerOffsets
from deform_viz.dump import load_offset_dump
from deform_viz.visualization import (FIGURES, ImageNotFoundError, choose_points, load_image, plot_df_divergence,
                                      plot_dk_extent, plot_kernel_point_fields, plot_sampling_locations, render_dump,
                                      render_layer, save_figure)
from deform_viz.visualization.figures import fit_arrow_scale
from analysis import sampling_reference
from analysis.synthetic_dumps import same_for_all_taps, scaled_kernel_field, write_dump, write_image, write_rotated_jpeg

NAME = 'backbone.layer3.0.conv2'
ORI, NET = (120, 160), (60, 80)            # the network saw the image at half size


def random_offsets(shape, groups=1, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(scale=1.5, size=(groups, 9, 2) + shape).astype(np.float32)


@pytest.fixture
def dump(tmp_path):
    """A dump of a 120 x 160 image resized to 60 x 80 and flipped, layer stride 8 -> 16 (4 x 5 grid)."""
    image = write_image(str(tmp_path / 'images' / '3.png'), ORI)
    path = write_dump(tmp_path / 'dumps', 3, {NAME: (dict(s_in=8, s_out=16), random_offsets((4, 5)))},
                      ori_shape=ORI, img_shape=NET, img_path=image, flip=True)
    return load_offset_dump(path)


@pytest.mark.parametrize('kind', list(FIGURES))
def test_every_figure_renders_to_a_png_of_the_expected_size(dump, kind, tmp_path):
    layer = LayerOffsets.from_dump(dump, NAME)
    fig = render_layer(layer, kind, load_image(dump.meta), dpi=80, width=5.0)
    path = save_figure(fig, str(tmp_path / f'{kind}.png'))
    with Image.open(path) as im:
        width, height = im.size
        pixels = np.asarray(im.convert('RGB'))
    assert (width, height) == tuple(np.round(fig.get_size_inches() * 80).astype(int))
    assert width == 400
    assert pixels.std() > 10                           # not a blank page
    # the title names image, layer and stride
    text = fig._suptitle.get_text()
    assert 'image 3' in text and NAME in text and 'stride 8→16' in text


def test_figures_are_deterministic(dump, tmp_path):
    outputs = []
    for attempt in range(2):
        files = []
        for layer, kind, fig in render_dump(dump, dpi=40, width=3.0):
            for fmt in ('png', 'pdf') if kind == 'df_divergence' else ('png',):   # pdf is slow to write
                path = tmp_path / f'{attempt}' / f'{kind}.{fmt}'
                save_figure(fig, str(path))
                files.append(path.read_bytes())
        outputs.append(files)
    assert len(outputs[0]) == len(FIGURES) + 1
    assert outputs[0] == outputs[1]


def test_missing_image_is_a_clear_error_and_blank_works(tmp_path):
    path = write_dump(tmp_path, 4, {NAME: ({}, random_offsets((3, 3)))}, ori_shape=(24, 24),
                      img_path=str(tmp_path / 'gone.png'))
    dump = load_offset_dump(path)
    with pytest.raises(ImageNotFoundError, match=r"gone.png.*does not exist.*--blank"):
        next(render_dump(dump))
    figures = list(render_dump(dump, blank=True, dpi=50))
    assert [kind for _, kind, _ in figures] == list(FIGURES)
    # Fig. 1 needs no image at all
    assert len(list(render_dump(dump, kinds=['kernel_points'], dpi=50))) == 1


def test_exif_rotated_image_is_loaded_upright(tmp_path):
    """Figures are drawn on the picture as shown (EXIF orientation applied), in the dump's frame."""
    upright = write_rotated_jpeg(tmp_path / '3.jpg')
    image = load_image(dict(img_id=3, img_path=str(tmp_path / '3.jpg'), ori_shape=[64, 96]))
    assert image.shape == (64, 96, 3)
    for y, x in ((16, 24), (16, 72), (48, 24), (48, 72)):
        np.testing.assert_allclose(image[y, x].astype(int), upright[y, x].astype(int), atol=40)


def test_image_of_another_size_is_rejected(tmp_path):
    image = write_image(str(tmp_path / 'small.png'), (10, 10))
    path = write_dump(tmp_path, 4, {NAME: ({}, random_offsets((3, 3)))}, ori_shape=(24, 24), img_path=image)
    with pytest.raises(ValueError, match=r'10x10.*24x24'):
        load_image(load_offset_dump(path).meta)


# ---------------------------------------------------------------------- content, read back from the artists
# An 8 x 12 grid at input (and output) stride 8 on a 64 x 96 network image resized from 128 x 192
# (scale 0.5): cell (r, c) is centred on original pixel (16r + 1, 16c + 1), one input px is 16 px.
CONTENT_ORI, CONTENT_NET, CONTENT_GRID = (128, 192), (64, 96), (8, 12)


def band_d_f():
    """d_f along x: +0.5 input px left of column 5, 0 on it, -0.5 right of it: div d_f is
    -0.25, -0.5, -0.25 on columns 4-6 and 0 elsewhere (central differences, stride 1)."""
    dx = np.clip(-0.5 * (np.arange(CONTENT_GRID[1]) - 5.0), -0.5, 0.5)
    return np.stack([np.zeros(CONTENT_GRID), np.broadcast_to(dx, CONTENT_GRID)])


def content_scale():
    rows, cols = np.mgrid[0:CONTENT_GRID[0], 0:CONTENT_GRID[1]]
    return 0.8125 + 0.0625 * rows + 0.03125 * cols   # dyadic: d_f stays exactly the band in float32


def content_layer(tmp_path, offset, name=NAME, **kwargs):
    path = write_dump(tmp_path, 1, {name: (kwargs, offset)}, ori_shape=CONTENT_ORI, img_shape=CONTENT_NET)
    return LayerOffsets.from_dump(load_offset_dump(path), name)


def test_fig2_red_region_is_the_band_and_arrows_are_d_f(tmp_path):
    offset = scaled_kernel_field(content_scale()) + same_for_all_taps(band_d_f())
    layer = content_layer(tmp_path, offset.astype(np.float32))
    fig = plot_df_divergence(layer, None, dpi=40, width=3.0)
    ax = fig.axes[0]
    overlay = ax.images[1]
    assert overlay.get_extent() == [0, 192, 128, 0]
    red = np.asarray(overlay.get_array())[..., 3] > 0
    # columns 4-6 own the original pixels k with 16c - 7 <= k <= 16c + 8 (nearest centre 16c + 1)
    expected = np.zeros(CONTENT_ORI, dtype=bool)
    expected[:, 4 * 16 - 7:6 * 16 + 9] = True
    np.testing.assert_array_equal(red, expected)
    np.testing.assert_allclose(np.asarray(overlay.get_array())[red][:, :3], [[0.85, 0.0, 0.0]] * int(red.sum()))
    # one arrow per cell (32 per side fit), at the cell centre, d_f in original px: 0.5 input px = 8 px
    (quiver,) = [c for c in ax.collections if type(c).__name__ == 'Quiver']
    rows, cols = np.mgrid[0:8, 0:12]
    np.testing.assert_allclose(quiver.X.ravel(), (16 * cols + 1).ravel())
    np.testing.assert_allclose(quiver.Y.ravel(), (16 * rows + 1).ravel())
    np.testing.assert_allclose(np.asarray(quiver.U).ravel(), np.tile(8.0 * np.sign(5 - np.arange(12)), 8), atol=1e-6)
    np.testing.assert_allclose(np.asarray(quiver.V), 0.0, atol=1e-6)
    # the 95th-percentile arrow (8 px) spans 0.9 of the 16 px spacing
    assert quiver.scale == pytest.approx(8 / (0.9 * 16))
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[0].startswith('div d_f < 0: 24 of 96 cells') and labels[1] == '96 of 96 arrows shown'
    # a source instead of a sink: nothing is red
    layer = content_layer(tmp_path, (scaled_kernel_field(content_scale()) - same_for_all_taps(band_d_f()))
                          .astype(np.float32))
    assert not (np.asarray(plot_df_divergence(layer, None, dpi=40, width=3.0).axes[0].images[1].get_array())
                [..., 3] > 0).any()


def test_fig3_circle_radii_follow_the_kernel_scale(tmp_path):
    layer = content_layer(tmp_path, scaled_kernel_field(content_scale()))
    fig = plot_dk_extent(layer, None, dpi=40, width=3.0)
    (circles,) = fig.axes[0].collections
    vertices = [path.vertices for path in circles.get_paths()]
    centre = np.array([(v.max(0) + v.min(0)) / 2 for v in vertices])
    radius = np.array([(v.max(0) - v.min(0)) / 2 for v in vertices])
    rows, cols = np.mgrid[0:8, 0:12]
    np.testing.assert_allclose(centre, np.stack([16 * cols + 1, 16 * rows + 1], -1).reshape(-1, 2), atol=1e-9)
    # a rigid kernel gets 0.3 of the 16 px spacing; each circle that times its kernel's scale
    np.testing.assert_allclose(radius, np.repeat(0.3 * 16 * content_scale().reshape(-1, 1), 2, 1), rtol=1e-6)
    label = [t.get_text() for t in fig.legends[0].get_texts()][0]
    assert label == 'rigid kernel: r = 32 px (drawn 4.8 px)'   # 2 input px = 32 px, squared and rooted
    # at most 4 per side: every third cell from 1 (rows 1, 4, 7; columns 1, 4, 7, 10), 48 px apart
    fig = plot_dk_extent(layer, None, max_per_side=4, dpi=40, width=3.0)
    vertices = [path.vertices for path in fig.axes[0].collections[0].get_paths()]
    centre = np.array([(v.max(0) + v.min(0)) / 2 for v in vertices])
    np.testing.assert_allclose(centre, [(16 * c + 1, 16 * r + 1) for r in (1, 4, 7) for c in (1, 4, 7, 10)])
    np.testing.assert_allclose([(v.max(0) - v.min(0))[0] / 2 for v in vertices],
                               0.3 * 48 * content_scale()[1::3, 1::3].ravel(), rtol=1e-6)


def test_fig1_panels_hold_each_taps_offsets(tmp_path):
    shifts = np.array([(0.25 * (n - 4), 0.5 - 0.125 * n) for n in range(9)])    # tap n's (dy, dx), input px
    offset = np.broadcast_to(shifts[None, :, :, None, None], (1, 9, 2) + CONTENT_GRID).astype(np.float32)
    layer = content_layer(tmp_path, offset, s_in=8, s_out=16)            # conv stride 2: arrows in cells / 2
    fig = plot_kernel_point_fields(layer, max_per_side=12)
    for n in range(9):
        ax = fig.axes[n]
        (quiver,) = [c for c in ax.collections if type(c).__name__ == 'Quiver']
        np.testing.assert_allclose(np.asarray(quiver.U), shifts[n, 1] / 2, atol=1e-6)
        np.testing.assert_allclose(np.asarray(quiver.V), shifts[n, 0] / 2, atol=1e-6)
        i, j = divmod(n, 3)
        assert ax.get_title().startswith(f'tap ({i - 1:+g}, {j - 1:+g})\nmean (dy, dx) = '
                                         f'({shifts[n, 0]:+.2f}, {shifts[n, 1]:+.2f})')


def test_sampling_figure_draws_the_stacked_points(tmp_path):
    """Two stacked layers (top stride 8 -> 8 over a stride-4 -> 8 layer) with fields linear in the
    cell: the drawn taps are the scalar reference's, level by level."""
    rows, cols = np.mgrid[0:8, 0:12].astype(np.float64)
    top = scaled_kernel_field(content_scale()).astype(np.float64)
    top[0, :, 0] += 0.25
    low = np.zeros((1, 9, 2) + CONTENT_GRID)
    for n in range(9):
        low[0, n, 0] = 0.1 * n + 0.05 * rows - 0.1 * cols
        low[0, n, 1] = -0.3 + 0.1 * rows + 0.02 * n * cols
    path = write_dump(tmp_path, 1, {'low': (dict(s_in=4, s_out=8), low.astype(np.float32)),
                                    'top': ({}, top.astype(np.float32))},
                      ori_shape=CONTENT_ORI, img_shape=CONTENT_NET)
    dump = load_offset_dump(path)
    stack = [LayerOffsets.from_dump(dump, 'top'), LayerOffsets.from_dump(dump, 'low')]
    # (x, y) = (71, 40) is nearest to cell (2, 4) at (65, 33); (190, 126) to the corner (7, 11)
    fig = plot_sampling_locations(stack[0], points=[(71, 40), (190, 126)], below=stack[1:], dpi=40, width=3.0)
    scatters = [c.get_offsets() for c in fig.axes[0].collections]
    assert len(scatters) == 2 * 4                      # per location: level 1, rigid, deformed taps, star
    for k, (r, c) in enumerate([(2, 4), (7, 11)]):
        level1, rigid, taps, star = scatters[4 * k:4 * k + 4]
        expected = sampling_reference.stacked_points(stack, r, c)
        np.testing.assert_allclose(np.asarray(taps), np.array(expected[0])[:, ::-1], atol=1e-9)
        np.testing.assert_allclose(np.asarray(level1), np.array(expected[1])[:, ::-1], atol=1e-9)
        np.testing.assert_allclose(np.asarray(star), [(16 * c + 1, 16 * r + 1)])
        np.testing.assert_allclose(np.asarray(rigid), [(16 * (c + j) + 1, 16 * (r + i) + 1)
                                                       for i in (-1, 0, 1) for j in (-1, 0, 1)])
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[0] == 'A: cell (2, 4) at x=65, y=33' and labels[1] == 'B: cell (7, 11) at x=177, y=113'
    assert 'through low: 81 points' in labels


def test_sampling_points_and_groups(tmp_path):
    path = write_dump(tmp_path, 1, {NAME: ({}, scaled_kernel_field(np.full((4, 4), 2.0)))}, ori_shape=(32, 32))
    layer = LayerOffsets.from_dump(load_offset_dump(path), NAME)
    fig = plot_sampling_locations(layer, points=[(8, 8), (24, 16)], dpi=50, width=3.0)
    legends = fig.legends or [fig.axes[0].get_legend()]
    texts = [t.get_text() for t in legends[0].get_texts()]
    assert texts[:2] == ['A: cell (1, 1) at x=8, y=8', 'B: cell (2, 3) at x=24, y=16']
    # kernels scaled by 2: the taps of cell (1, 1) lie 2 input px = 16 px apart around (8.5, 8.5)
    taps = fig.axes[0].collections[1].get_offsets()
    np.testing.assert_allclose(np.asarray(taps), [(8.5 + 16 * j, 8.5 + 16 * i) for i in (-1, 0, 1) for j in (-1, 0, 1)])
    with pytest.raises(ValueError, match='outside the feature grid'):
        plot_sampling_locations(layer, points=[(500, 8)])
    with pytest.raises(ValueError, match='group 3 does not exist'):
        plot_sampling_locations(layer, group=3)


def test_choose_points_on_known_fields(tmp_path):
    """A 7 x 9 grid: a sink at (2, 6), the largest kernel at (5, 1), the smallest at (1, 2)."""
    h, w = 7, 9
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    bump = np.exp(-((rows - 2) ** 2 + (cols - 6) ** 2) / 2)
    d_f = np.stack([-0.4 * (rows - 2) * bump, -0.4 * (cols - 6) * bump])   # converges on (2, 6) only
    scale = np.ones((h, w))
    scale[5, 1], scale[1, 2] = 1.5, 0.5
    offset = (scaled_kernel_field(scale) + same_for_all_taps(d_f)).astype(np.float32)
    layer = content_layer(tmp_path, offset)
    assert choose_points(layer, 3) == [(2, 6), (5, 1), (1, 2)]
    # then the centre (3, 4) and the quarter points, (1, 2) already taken
    assert choose_points(layer, 5) == [(2, 6), (5, 1), (1, 2), (3, 4), (5, 6)]
    # constant fields have no extreme cell: centre and quarters
    rigid = content_layer(tmp_path, np.zeros((1, 9, 2, h, w), np.float32))
    assert choose_points(rigid, 5) == [(3, 4), (1, 2), (5, 6), (1, 6), (5, 2)]
    # two equally large kernels: the one nearer the grid centre; the smallest are all the others,
    # of which the centre itself is nearest
    scale = np.ones((h, w))
    scale[0, 0] = scale[3, 5] = 1.5
    tie = content_layer(tmp_path, scaled_kernel_field(scale))
    assert choose_points(tie, 3) == [(3, 5), (3, 4), (1, 2)]


def test_fit_arrow_scale_on_known_lengths():
    # lengths 1..20 (zeros ignored): the 95th percentile is 19 + 0.05 = 19.05, spanning 0.9 of 10
    scale, key = fit_arrow_scale(np.arange(21.0), 10.0)
    assert scale == pytest.approx(19.05 / 9) and key == 20
    assert fit_arrow_scale(np.array([0.0, 0.0, 3.3]), 4.0) == (pytest.approx(3.3 / 3.6), 2)
    assert fit_arrow_scale(np.full(5, 0.07), 1.0) == (pytest.approx(0.07 / 0.9), pytest.approx(0.05))
    assert fit_arrow_scale(np.full(5, 0.8), 1.0)[1] == pytest.approx(1.0)
    assert fit_arrow_scale(np.zeros(4), 8.0) == (1.0, 1.0)


def test_bad_options_and_layers(dump):
    from deform_viz.analysis import LayerNotFoundError
    with pytest.raises(TypeError, match="'arrows'"):
        next(render_dump(dump, blank=True, arrows=3))
    with pytest.raises(LayerNotFoundError, match=NAME):
        next(render_dump(dump, layers=['layer4'], blank=True))
    with pytest.raises(ValueError, match='unknown figure kind'):
        next(render_dump(dump, kinds=['fig9']))
