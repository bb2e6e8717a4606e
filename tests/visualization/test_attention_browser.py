"""Attention layers in the offset browser page, on real dumps of the tiny DINO and Deformable DETR:
what the page embeds, its errors, and the page in headless Chromium (a detection selected, heads
and levels filtered, an encoder pixel clicked), against the dumps' raw arrays: reference + offsets,
mirrored by hand for a flipped input."""
import re

import numpy as np
import pytest

from analysis.synthetic_dumps import write_dump, write_image
from attention_dumps import attention_dump
from conftest import import_tool
from deform_viz.dump import LayerNotFoundError, load_offset_dump, offset_dump_paths
from deform_viz.visualization import AttentionInputError
from deform_viz.visualization.attention_points import LEVEL_COLOURS
from deform_viz.visualization.browser import dequantised, write_offset_browser
from test_browser import assert_quiet_console, browser, click_location, location_text, page_data  # noqa: F401

DECODER = ['decoder.layers.0.cross_attn', 'decoder.layers.1.cross_attn']
ENCODER = ['encoder.layers.0.self_attn', 'encoder.layers.1.self_attn']
SIZE = 160


@pytest.fixture(scope='module')
def dumps(synthetic_data_root, tmp_path_factory):
    root = tmp_path_factory.mktemp('attention_browser')
    return {'dino': attention_dump('dino', synthetic_data_root, root),
            'plain': attention_dump('plain', synthetic_data_root, root, flip='horizontal',
                                    options=('encoder_stride=2',))}


def raw(path) -> dict:
    with np.load(path) as npz:
        return {k: npz[k].astype(np.float64) for k in npz.files if k != '__meta__'}


def query_points(arrays, layer, query):
    """(xy (M * L * P, 2), weights (M * L * P,), reference (2 | 4,)) of ``query`` from the raw arrays."""
    row = int(np.flatnonzero(arrays[f'{layer}/queries'] == query)[0])
    reference = arrays[f'{layer}/reference'][row]
    return (reference[:2] + arrays[f'{layer}/offsets'][row]).reshape(-1, 2), \
        arrays[f'{layer}/weights'][row].ravel(), reference


def mirror_x(xy, flipped):
    xy = np.array(xy, np.float64)
    if flipped:
        xy[..., 0] = SIZE - xy[..., 0]
    return xy


def drawn(session) -> np.ndarray:
    """(N, 6) cx, cy, r, head, level, point of the attention points the page drew."""
    return np.array(session.run(
        'return Array.from(document.querySelectorAll("#attention circle.point"), c => ["cx", "cy", "r", '
        '"data-head", "data-level", "data-point"].map(n => +c.getAttribute(n)));'), dtype=np.float64).reshape(-1, 6)


def half_step(page, layer: str, array: str = 'xy', image: int = 0) -> float:
    """The page's quantisation error bound for ``array`` of ``layer`` in ``image`` (px)."""
    return page_data(page)[image]['attention']['layers'][layer][array]['step'] / 2 + 1e-6


def select(session, css_select: str, value) -> None:
    session.click(f'{css_select} option[value="{value}"]')


@pytest.mark.slow
def test_page_embeds_the_detections_queries(dumps, tmp_path):
    page = write_offset_browser(dumps['dino'], tmp_path / 'page.html', detections=4)
    data = page_data(page.path)
    paths = offset_dump_paths(dumps['dino'])
    assert page.image_ids == [load_offset_dump(p).img_id for p in paths]
    for i, path in enumerate(paths):
        arrays, view = raw(path), data[i]['attention']
        order = list(np.argsort(-arrays['__detections__/scores'], kind='stable')[:4])
        assert view['detections']['index'] == order
        assert view['detections']['queries'] == [int(arrays['__detections__/queries'][d]) for d in order]
        np.testing.assert_allclose(view['detections']['boxes'], arrays['__detections__/bboxes'][order], atol=1e-4)
        for layer in DECODER:
            block = view['layers'][layer]
            assert block['count'] == 4 and block['shape'] == [8, 4, 2]
            for k, query in enumerate(view['detections']['queries']):
                xy, weights, reference = query_points(arrays, layer, query)
                np.testing.assert_allclose(dequantised(block['xy'])[k].reshape(-1, 2), xy,
                                           atol=block['xy']['step'] / 2 + 1e-6)
                np.testing.assert_allclose(dequantised(block['area'])[k].ravel(),
                                           np.maximum(16 * weights * 8, 1), atol=block['area']['step'] / 2 + 1e-6)
                cx, cy, w, h = reference
                np.testing.assert_allclose(dequantised(block['reference_box'])[k], [cx - w / 2, cy - h / 2,
                                                                                    cx + w / 2, cy + h / 2],
                                           atol=block['reference_box']['step'] / 2 + 1e-6)
        encoder = view['layers'][ENCODER[0]]
        assert encoder['queries'] == arrays[f'{ENCODER[0]}/queries'].astype(int).tolist()
        assert encoder['reference_box'] is None and len(encoder['cells']) == encoder['count']
    meta = re.search(r'<script type="application/json" id="page-data">(.*?)</script>',
                     page.path.read_text()).group(1)
    assert '"attention":[{"name":"encoder.layers.0.self_attn","role":"encoder"' in meta
    assert '"layers":[]' in meta                                  # no conv layer in a DETR dump


@pytest.mark.slow
def test_bad_input_is_named(dumps, tmp_path):
    out = tmp_path / 'page.html'
    with pytest.raises(LayerNotFoundError, match="'layers.7' matches no attention layer"):
        write_offset_browser(dumps['dino'], out, attention_layers=['layers.7'])
    with pytest.raises(ValueError, match='detections must be at least 1'):
        write_offset_browser(dumps['dino'], out, detections=0)
    image = write_image(str(tmp_path / 'images' / '3.png'), (32, 40))
    write_dump(tmp_path / 'conv', 3, {'backbone.layer3.0.conv2': ({}, np.zeros((1, 9, 2, 4, 5), np.float32))},
               ori_shape=(32, 40), img_path=image)
    with pytest.raises(AttentionInputError, match='holds no attention layers'):
        write_offset_browser(tmp_path / 'conv', out, attention_layers=['decoder'])
    assert not out.exists()
    # a conv dump keeps its page as before: no attention entries
    page = write_offset_browser(tmp_path / 'conv', out)
    assert '"attention":[]' in page.path.read_text() and 'attention' not in page_data(out)[0]


@pytest.mark.slow
def test_selecting_a_detection_draws_its_query(browser, dumps, tmp_path):  # noqa: F811
    page = import_tool('browse_offsets').main([dumps['dino'], '--out', str(tmp_path / 'page.html'),
                                               '--detections', '3', '--attention-layer', 'decoder', 'encoder'])
    arrays = raw(offset_dump_paths(dumps['dino'])[0])
    detections = page_data(page.path)[0]['attention']['detections']
    queries = detections['queries']
    assert len(set(queries)) == 3
    browser.open(page.path)
    # a DETR dump has no conv layer: the page opens on the last decoder layer
    assert browser.run('return document.getElementById("layer").value') == DECODER[1]
    colours = [LEVEL_COLOURS[k] for k in range(4)]
    unit = SIZE / 600
    for layer in DECODER:
        select(browser, '#layer', layer)
        for k in (2, 0):
            select(browser, '#detection', k)
            xy, weights, reference = query_points(arrays, layer, queries[k])
            points = drawn(browser)
            assert len(points) == 8 * 4 * 2
            np.testing.assert_allclose(points[:, :2], xy, atol=half_step(page.path, layer))
            # r = 1.5 screen px per pt of the figures' area rule: 16 pt^2 at the mean weight 1/8
            np.testing.assert_allclose(points[:, 2], 1.5 * np.sqrt(np.maximum(16 * weights * 8, 1) / np.pi) * unit,
                                       rtol=1e-3)
            fills = browser.run('return Array.from(document.querySelectorAll("#attention circle.point"), '
                                'c => c.getAttribute("fill"));')
            assert fills == [colours[int(level)] for level in points[:, 4]]
            assert location_text(browser).startswith(f'detection {detections["index"][k]} · label')
            assert browser.run('return document.getElementById("location").dataset.query') == str(queries[k])
            star = browser.run('const e = document.getElementById("reference"); '
                               'return [+e.dataset.x, +e.dataset.y];')
            np.testing.assert_allclose(star, reference[:2], atol=half_step(page.path, layer, 'reference'))
    # head 3 and level 1 only: 2 points, of that head and level
    select(browser, '#head', 3)
    select(browser, '#level', 1)
    points = drawn(browser)
    assert points[:, 3:5].tolist() == [[3, 1], [3, 1]]
    xy, _, _ = query_points(arrays, DECODER[1], queries[0])
    np.testing.assert_allclose(points[:, :2], xy.reshape(8, 4, 2, 2)[3, 1], atol=half_step(page.path, DECODER[1]))
    # a click inside boxes selects the smallest box there
    select(browser, '#head', 'all')
    boxes = np.array(detections['boxes'])
    x, y = (boxes[1, :2] + boxes[1, 2:]) / 2
    inside = np.flatnonzero((boxes[:, 0] <= x) & (x <= boxes[:, 2]) & (boxes[:, 1] <= y) & (y <= boxes[:, 3]))
    smallest = inside[np.argmin(np.prod(boxes[inside, 2:] - boxes[inside, :2], 1))]
    click_location(browser, x, y)
    assert browser.run('return document.getElementById("location").dataset.query') == str(queries[smallest])
    assert_quiet_console(browser)


@pytest.mark.slow
def test_clicking_a_pixel_draws_the_nearest_encoder_query(browser, dumps, tmp_path):  # noqa: F811
    """On a horizontally flipped input: a click at a pixel picks the stored encoder query whose
    mirrored reference point is nearest, and draws its points mirrored."""
    page = write_offset_browser(dumps['plain'], tmp_path / 'page.html').path
    path = offset_dump_paths(dumps['plain'])[0]
    assert load_offset_dump(path).meta['flip_direction'] == 'horizontal'
    arrays = raw(path)
    browser.open(page)
    select(browser, '#layer', ENCODER[1])
    assert location_text(browser).startswith('click a pixel')
    queries = arrays[f'{ENCODER[1]}/queries'].astype(int)
    references = mirror_x(arrays[f'{ENCODER[1]}/reference'], True)
    for pixel in ((30.0, 100.0), (121.0, 47.0)):
        click_location(browser, *pixel)
        nearest = int(np.argmin(((references - pixel) ** 2).sum(1)))
        assert browser.run('return document.getElementById("location").dataset.query') == str(queries[nearest])
        xy, _, _ = query_points(arrays, ENCODER[1], queries[nearest])
        np.testing.assert_allclose(drawn(browser)[:, :2], mirror_x(xy, True), atol=half_step(page, ENCODER[1]))
    # only queries of level 2: the nearest of those
    select(browser, '#query-level', 2)
    shapes = load_offset_dump(path).attention[ENCODER[1]].info['spatial_shapes']
    starts = np.cumsum([0] + [h * w for h, w in shapes])
    of_level = (queries >= starts[2]) & (queries < starts[3])
    d = np.where(of_level, ((references - (121.0, 47.0)) ** 2).sum(1), np.inf)
    assert browser.run('return document.getElementById("location").dataset.query') == str(queries[np.argmin(d)])
    assert 'level 2 cell' in location_text(browser)
    # the decoder of a flipped input: points mirrored too
    select(browser, '#layer', DECODER[0])
    query = page_data(page)[0]['attention']['detections']['queries'][0]
    xy, _, _ = query_points(arrays, DECODER[0], query)
    np.testing.assert_allclose(drawn(browser)[:, :2], mirror_x(xy, True), atol=half_step(page, DECODER[0]))
    assert_quiet_console(browser)
