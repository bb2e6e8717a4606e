"""Attention figures (Deformable DETR Fig. 6, the encoder at pixels) from real dumps of the tiny
Deformable DETR and DINO: what the matplotlib artists hold, read back and compared with the dump's
raw arrays (reference + offsets, mirrored by hand for a flipped input), the weight-to-area rule and
the level colours; named errors on bad input; tools/visualize_attention.py end to end."""
import json
import os
import runpy
import sys

import numpy as np
import pytest
from matplotlib.colors import to_rgba
from PIL import Image

from analysis.synthetic_dumps import write_dump
from attention_dumps import attention_dump
from conftest import REPO, import_tool
from deform_viz.dump import LayerNotFoundError, load_offset_dump, offset_dump_paths, write_offset_dump
from deform_viz.visualization import (AttentionInputError, detection_points, pixel_points, plot_detection_attention,
                                      plot_pixel_attention)
from deform_viz.visualization.attention_points import LEVEL_COLOURS, weight_areas

DECODER = ['decoder.layers.0.cross_attn', 'decoder.layers.1.cross_attn']
ENCODER = ['encoder.layers.0.self_attn', 'encoder.layers.1.self_attn']
WIDTH = HEIGHT = 160   # the generated images; the network saw them at 136 px


@pytest.fixture(scope='module')
def dumps(synthetic_data_root, tmp_path_factory):
    """Dump directories: plain Deformable DETR (2-d references, full encoder field), DINO (4-d
    reference boxes), and DINO on diagonally flipped inputs."""
    root = tmp_path_factory.mktemp('attention_figures')
    return {'plain': attention_dump('plain', synthetic_data_root, root, options=('encoder_stride=1',)),
            'dino': attention_dump('dino', synthetic_data_root, root),
            'flipped': attention_dump('dino', synthetic_data_root, root, flip='diagonal')}


def first_dump(directory):
    return load_offset_dump(offset_dump_paths(directory)[0])


def raw(dump) -> dict:
    """The dump's arrays as numpy reads them, float64."""
    with np.load(dump.path) as npz:
        return {k: npz[k].astype(np.float64) for k in npz.files if k != '__meta__'}


def artist(ax, gid):
    found = [a for a in ax.get_children() if a.get_gid() == gid]
    assert len(found) == 1, f'{len(found)} artists with gid {gid!r}'
    return found[0]


def axes_by_gid(fig) -> dict:
    return {ax.get_gid(): ax for ax in fig.axes if ax.get_gid()}


def expected_points(arrays, layer, query):
    """(xy (M, L, P, 2), weights (M, L, P), reference (2 | 4,)) of ``query`` from the raw arrays."""
    row = int(np.flatnonzero(arrays[f'{layer}/queries'] == query)[0])
    reference = arrays[f'{layer}/reference'][row]
    return reference[:2] + arrays[f'{layer}/offsets'][row], arrays[f'{layer}/weights'][row], reference


def mirror(xy, flip):
    xy = np.array(xy, np.float64)
    if flip in ('horizontal', 'diagonal'):
        xy[..., 0] = WIDTH - xy[..., 0]
    if flip in ('vertical', 'diagonal'):
        xy[..., 1] = HEIGHT - xy[..., 1]
    return xy


@pytest.mark.slow
@pytest.mark.parametrize('kind', ['plain', 'dino', 'flipped'])
def test_detection_panels_are_reference_plus_offsets(dumps, kind):
    """Top 3 detections x both decoder layers: points at reference + offsets (mirrored back when
    the network saw the image flipped), area 16 x weight x levels x points, colour by level,
    reference point and box, detection box."""
    dump = first_dump(dumps[kind])
    flip = dump.meta['flip_direction'] if dump.meta['flip'] else None
    assert (flip == 'diagonal') == (kind == 'flipped') and dump.meta['scale_factor'] == [0.85, 0.85]
    arrays = raw(dump)
    scores = arrays['__detections__/scores']
    top = list(np.argsort(-scores, kind='stable')[:3])
    fig = plot_detection_attention(dump, detections=3, layers='decoder', dpi=50)
    axes = axes_by_gid(fig)
    assert list(axes) == [f'{d}:{layer}' for d in top for layer in DECODER]
    levels_colours = [to_rgba(c) for c in LEVEL_COLOURS[:4]]
    for d in top:
        query = int(arrays['__detections__/queries'][d])
        for layer in DECODER:
            ax = axes[f'{d}:{layer}']
            xy, weights, reference = expected_points(arrays, layer, query)
            m, levels, points = weights.shape
            drawn = artist(ax, 'sampling-points')
            np.testing.assert_allclose(drawn.get_offsets(), mirror(xy, flip).reshape(-1, 2), atol=1e-4)
            np.testing.assert_allclose(drawn.get_sizes(), np.maximum(16 * weights * levels * points, 1).ravel(),
                                       rtol=1e-5)
            level_of = np.broadcast_to(np.arange(levels)[None, :, None], weights.shape).ravel()
            np.testing.assert_allclose(drawn.get_facecolors()[:, :3],
                                       np.array(levels_colours)[level_of][:, :3], atol=1e-6)
            np.testing.assert_allclose(artist(ax, 'reference').get_offsets()[0], mirror(reference[:2], flip),
                                       atol=1e-4)
            box = mirror(arrays['__detections__/bboxes'][d].reshape(2, 2), flip)
            rect = artist(ax, 'detection-box')
            np.testing.assert_allclose([rect.get_x(), rect.get_y(), rect.get_x() + rect.get_width(),
                                        rect.get_y() + rect.get_height()],
                                       [*box.min(0), *box.max(0)], atol=1e-4)
            if kind == 'plain':
                assert reference.shape == (2, ) and not [a for a in ax.get_children()
                                                          if a.get_gid() == 'reference-box']
            else:
                cx, cy, w, h = reference
                corners = mirror([[cx - w / 2, cy - h / 2], [cx + w / 2, cy + h / 2]], flip)
                rect = artist(ax, 'reference-box')
                np.testing.assert_allclose([rect.get_x(), rect.get_y(), rect.get_width(), rect.get_height()],
                                           [*corners.min(0), w, h], atol=1e-4)


@pytest.mark.slow
def test_heads_and_levels_selection(dumps):
    dump = first_dump(dumps['dino'])
    points = detection_points(dump, DECODER[1], 0)
    fig = plot_detection_attention(dump, detections=[0], heads=[1, 5], levels=[0, 2], dpi=50)
    drawn = artist(fig.axes[0], 'sampling-points')
    expected = points.xy[[1, 5]][:, [0, 2]].reshape(-1, 2)
    np.testing.assert_allclose(drawn.get_offsets(), expected, atol=1e-6)
    colours = {tuple(np.round(c[:3], 4)) for c in drawn.get_facecolors()}
    assert colours == {tuple(np.round(to_rgba(LEVEL_COLOURS[k])[:3], 4)) for k in (0, 2)}
    assert 'heads 1,5, levels 0,2' in fig.get_suptitle()


@pytest.mark.slow
@pytest.mark.parametrize('kind', ['plain', 'flipped'])
def test_pixel_panels_take_the_nearest_cell_centre(dumps, kind):
    """Encoder query of level l, cell (r, c) has its reference at the cell centre, ((c + 0.5) * 160 / W_l,
    (r + 0.5) * 160 / H_l) on the unflipped image; a pixel there draws that query's points."""
    dump = first_dump(dumps[kind])
    flip = dump.meta['flip_direction'] if dump.meta['flip'] else None
    arrays = raw(dump)
    layer = ENCODER[1]
    shapes = dump.attention[layer].info['spatial_shapes']
    starts = np.cumsum([0] + [h * w for h, w in shapes])
    queries = arrays[f'{layer}/queries'].astype(int)
    if kind == 'plain':
        assert len(queries) == starts[-1]                         # encoder_stride=1: every cell
    # a level-1 cell stored in the dump: its index in the level-concatenated sequence
    level_1 = queries[(queries >= starts[1]) & (queries < starts[2])]
    q = int(level_1[len(level_1) // 2])
    r, c = divmod(q - starts[1], shapes[1][1])
    centre_network = ((c + 0.5) * WIDTH / shapes[1][1], (r + 0.5) * HEIGHT / shapes[1][0])
    row = int(np.flatnonzero(queries == q)[0])
    np.testing.assert_allclose(arrays[f'{layer}/reference'][row], centre_network, atol=1e-3)
    pixel = tuple(mirror(centre_network, flip))
    points = pixel_points(dump, layer, pixel, level=1)
    assert (points.query, points.cell) == (q, (1, r, c))
    fig = plot_pixel_attention(dump, [pixel], layers=ENCODER, query_level=1, dpi=50)
    for layer_name in ENCODER:
        ax = axes_by_gid(fig)[f'0:{layer_name}']
        xy, weights, _ = expected_points(arrays, layer_name, q)
        np.testing.assert_allclose(artist(ax, 'sampling-points').get_offsets(), mirror(xy, flip).reshape(-1, 2),
                                   atol=1e-4)
        np.testing.assert_allclose(artist(ax, 'reference').get_offsets()[0], pixel, atol=1e-3)
        np.testing.assert_allclose(artist(ax, 'pixel').get_offsets()[0], pixel)
        assert len(artist(ax, 'lattice').get_offsets()) == len(level_1)
    # without a level, the nearest stored centre of any level: brute force over the raw references
    pixel = (37.0, 101.0)
    references = mirror(arrays[f'{layer}/reference'], flip)
    nearest = int(np.argmin(((references - pixel) ** 2).sum(1)))
    assert pixel_points(dump, layer, pixel).query == queries[nearest]


def test_weight_areas_and_level_colours():
    # a head's mean weight 1 / (L * P) draws 16 pt^2; area grows linearly, never under 1 pt^2
    np.testing.assert_allclose(weight_areas([1 / 8, 1 / 4, 0.0, 1.0], 4, 2), [16, 32, 1, 128])
    assert LEVEL_COLOURS[:4] == ('#e41a1c', '#377eb8', '#4daf4a', '#984ea3')


def rewrite(dump, path, edit):
    """Write ``dump`` again at ``path`` after ``edit(meta, arrays)``."""
    with np.load(dump.path) as npz:
        arrays = {k: npz[k] for k in npz.files if k != '__meta__'}
        meta = json.loads(str(npz['__meta__']))
    edit(meta, arrays)
    write_offset_dump(path, {k: v for k, v in meta.items() if k not in ('format', 'version')}, arrays)
    return load_offset_dump(path)


@pytest.mark.slow
def test_bad_input_is_named(dumps, tmp_path):
    dump = first_dump(dumps['dino'])
    count = len(dump.detections)
    with pytest.raises(AttentionInputError, match=rf'no detection {count}; it has {count}'):
        plot_detection_attention(dump, detections=[count])
    with pytest.raises(AttentionInputError, match='no detection -1'):
        detection_points(dump, DECODER[0], -1)
    with pytest.raises(AttentionInputError, match=r'pixel \(160, 20\) lies outside image .* 160 wide'):
        plot_pixel_attention(dump, [(160, 20)])
    with pytest.raises(AttentionInputError, match='has 8 heads .*no head \\[8\\]'):
        plot_detection_attention(dump, heads=[8])
    with pytest.raises(AttentionInputError, match='has 4 levels .*no level 4'):
        pixel_points(dump, ENCODER[0], (5, 5), level=4)
    with pytest.raises(AttentionInputError, match='is an encoder layer; detections come from decoder queries'):
        detection_points(dump, ENCODER[0], 0)
    with pytest.raises(LayerNotFoundError, match="'layers.7' matches no decoder attention layer"):
        plot_detection_attention(dump, layers='layers.7')

    def unlink(meta, arrays):
        arrays['__detections__/queries'][:] = -1
        meta['detections']['linked'] = False
    unlinked = rewrite(dump, tmp_path / f'{dump.img_id}.npz', unlink)
    with pytest.raises(AttentionInputError, match=f'none of its {count} detections is linked to a decoder query'):
        plot_detection_attention(unlinked)
    with pytest.raises(AttentionInputError, match='detection 0 is not linked to a decoder query'):
        plot_detection_attention(unlinked, detections=[0])
    plot_pixel_attention(unlinked, [(20, 20)], dpi=40)          # the encoder needs no link

    conv = load_offset_dump(write_dump(tmp_path / 'conv', 3, {'backbone.layer3.0.conv2': (
        {}, np.zeros((1, 9, 2, 4, 5), np.float32))}, ori_shape=(32, 40)))
    with pytest.raises(AttentionInputError, match='holds no attention layers .*1 conv layer.*visualize_offsets'):
        plot_detection_attention(conv)


@pytest.mark.slow
def test_tool_end_to_end(dumps, tmp_path, capsys, monkeypatch):
    tool = import_tool('visualize_attention')
    out = tmp_path / 'figures'
    written = tool.main([dumps['dino'], '--detections', '2', '--decoder-layers', 'decoder', '--pixel', '40', '60',
                         '--pixel', '120', '30', '--encoder-layers', 'encoder', '--out', str(out), '--dpi', '40'])
    ids = sorted(os.listdir(dumps['dino']))
    assert sorted(written) == sorted(str(out / i.split('.')[0] / f'attention.{kind}.png')
                                     for i in ids for kind in ('detections', 'pixels'))
    for path in written:
        with Image.open(path) as im:
            assert im.size[0] == 260 and im.size[1] > 150             # 6.5 in at 40 dpi
    assert f'wrote 4 figures of 2 image(s) to {out}' in capsys.readouterr().out
    with pytest.raises(SystemExit):
        tool.parse_args([dumps['dino'], '--detections', '0'])
    assert 'nothing to draw' in capsys.readouterr().err

    # a pixel outside the image: the tool's one-line error, nothing written
    monkeypatch.setattr(sys, 'argv', ['visualize_attention.py', dumps['dino'], '--pixel', '500', '5',
                                      '--out', str(tmp_path / 'none')])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(os.path.join(REPO, 'tools', 'visualize_attention.py'), run_name='__main__')
    assert str(exit_info.value.code).startswith('visualize_attention.py: error: pixel (500, 5) lies outside')
    assert not (tmp_path / 'none').exists()
