"""Figures render from dumps to non-empty files of the expected size, deterministically."""

import numpy as np
import pytest
from PIL import Image

from deform_viz.analysis import LayerOffsets
from deform_viz.dump import load_offset_dump
from deform_viz.visualization import (FIGURES, ImageNotFoundError, figure_to_array, load_image, plot_df_divergence,
                                      plot_sampling_locations, render_dump, render_layer, save_figure)
from analysis.synthetic_dumps import scaled_kernel_field, write_dump, write_image

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


def test_image_of_another_size_is_rejected(tmp_path):
    image = write_image(str(tmp_path / 'small.png'), (10, 10))
    path = write_dump(tmp_path, 4, {NAME: ({}, random_offsets((3, 3)))}, ori_shape=(24, 24), img_path=image)
    with pytest.raises(ValueError, match=r'10x10.*24x24'):
        load_image(load_offset_dump(path).meta)


def test_fig2_paints_exactly_the_negative_divergence_cells(tmp_path):
    """Sink at the centre of a 5 x 5 grid: divergence < 0 everywhere; a source: nowhere."""
    rows, cols = np.mgrid[0:5, 0:5].astype(np.float64)
    d_f = np.stack([2.0 - rows, 2.0 - cols]) * 0.5
    for sign, painted in ((1, True), (-1, False)):
        offset = np.repeat((sign * d_f)[None, None], 9, axis=1).astype(np.float32)
        path = write_dump(tmp_path, 1, {NAME: ({}, offset)}, ori_shape=(40, 40))
        layer = LayerOffsets.from_dump(load_offset_dump(path), NAME)
        fig = plot_df_divergence(layer, None, dpi=50, width=3.0, max_per_side=1)
        rgb = figure_to_array(fig).astype(int)
        reddish = (rgb[..., 0] - rgb[..., 1] > 60) & (rgb[..., 0] - rgb[..., 2] > 60)
        assert (reddish.sum() > 500) == painted


def test_sampling_points_and_groups(tmp_path):
    path = write_dump(tmp_path, 1, {NAME: ({}, scaled_kernel_field(np.full((4, 4), 2.0)))}, ori_shape=(32, 32))
    layer = LayerOffsets.from_dump(load_offset_dump(path), NAME)
    fig = plot_sampling_locations(layer, points=[(8, 8), (24, 16)], dpi=50, width=3.0)
    legends = fig.legends or [fig.axes[0].get_legend()]
    assert 'cell (1, 1)' in ''.join(t.get_text() for t in legends[0].get_texts())
    with pytest.raises(ValueError, match='outside the feature grid'):
        plot_sampling_locations(layer, points=[(500, 8)])
    with pytest.raises(ValueError, match='group 3 does not exist'):
        plot_sampling_locations(layer, group=3)


def test_bad_options_and_layers(dump):
    from deform_viz.analysis import LayerNotFoundError
    with pytest.raises(TypeError, match="'arrows'"):
        next(render_dump(dump, blank=True, arrows=3))
    with pytest.raises(LayerNotFoundError, match=NAME):
        next(render_dump(dump, layers=['layer4'], blank=True))
    with pytest.raises(ValueError, match='unknown figure kind'):
        next(render_dump(dump, kinds=['fig9']))
