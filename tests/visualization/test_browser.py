"""The offset browser page: what it embeds, its errors, and the page itself in headless Chromium.

The browser tests drive Debian's ``chromium`` through ``chromedriver``'s W3C WebDriver HTTP
interface with the standard library (:class:`Browser`): load the page from disk, select a layer
and a number of stacked layers, click a location with a real pointer, and compare what the page
drew (arrows, masks, circles, boxes, sampling points, the image list) with positions computed by
hand or by the scalar reference of ``tests/analysis/sampling_reference.py``, never by the
package's own geometry. Without Chromium they skip, unless ``CI=true``, where they fail.
"""
import base64
import io
import json
import os
import re
import runpy
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image, ImageOps

from analysis import sampling_reference
from analysis.synthetic_dumps import scaled_kernel_field, write_coco, write_dump, write_image, write_rotated_jpeg
from conftest import REPO, import_tool
from deform_viz.analysis import OffsetInputError
from deform_viz.analysis.fields import LayerOffsets
from deform_viz.dump import OffsetDumpError, load_offset_dump
from deform_viz.visualization import ImageNotFoundError
from deform_viz.visualization.browser import dequantised, markdown_to_html, quantised, write_offset_browser

CHROMIUM_FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                  '--disable-background-networking', '--disable-component-update', '--disable-sync',
                  '--window-size=1400,1000']
ELEMENT = 'element-6066-11e4-a52e-4f735466cecf'   # the W3C WebDriver key of an element reference


class Browser:
    """Headless Chromium through chromedriver's WebDriver HTTP API (no selenium needed)."""

    def __init__(self, chromium: str, chromedriver: str, profile: str):
        with socket.socket() as s:
            s.bind(('127.0.0.1', 0))
            port = s.getsockname()[1]
        self.driver = subprocess.Popen([chromedriver, f'--port={port}'], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
        self.base = f'http://127.0.0.1:{port}'
        deadline = time.monotonic() + 30
        while True:
            try:
                self._call('GET', '/status')
                break
            except OSError:
                if time.monotonic() > deadline or self.driver.poll() is not None:
                    self.driver.kill()
                    raise RuntimeError(f'{chromedriver} did not start on port {port}')
                time.sleep(0.1)
        options = {'binary': chromium, 'args': CHROMIUM_FLAGS + [f'--user-data-dir={profile}']}
        session = self._call('POST', '/session', {'capabilities': {'alwaysMatch': {
            'browserName': 'chrome', 'goog:chromeOptions': options, 'goog:loggingPrefs': {'browser': 'ALL'}}}})
        self.session = f'/session/{session["sessionId"]}'

    def _call(self, method: str, path: str, body=None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={'Content-Type': 'application/json'})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return json.load(response)['value']
        except urllib.error.HTTPError as e:
            raise RuntimeError(f'WebDriver {method} {path}: {json.load(e)["value"].get("message")}') from None

    def call(self, method: str, path: str, body=None):
        return self._call(method, self.session + path, body)

    def open(self, path) -> None:
        self.call('POST', '/url', {'url': f'file://{os.path.abspath(path)}'})

    def run(self, script: str, *args):
        return self.call('POST', '/execute/sync', {'script': script, 'args': list(args)})

    def click(self, css: str) -> None:
        element = self.call('POST', '/element', {'using': 'css selector', 'value': css})[ELEMENT]
        self.call('POST', f'/element/{element}/click', {})

    def click_at(self, x: float, y: float, click: bool = True) -> None:
        """A real pointer moved to viewport pixel (x, y) and clicked there (or only moved)."""
        pointer = [{'type': 'pointerMove', 'duration': 0, 'origin': 'viewport', 'x': round(x), 'y': round(y)}]
        if click:
            pointer += [{'type': 'pointerDown', 'button': 0}, {'type': 'pointerUp', 'button': 0}]
        self.call('POST', '/actions', {'actions': [{'type': 'pointer', 'id': 'mouse',
                                                    'parameters': {'pointerType': 'mouse'}, 'actions': pointer}]})
        self.call('DELETE', '/actions')

    def console(self) -> list:
        """Console messages and uncaught errors since the last call."""
        return self.call('POST', '/se/log', {'type': 'browser'})

    def screenshot(self, path) -> None:
        with open(path, 'wb') as f:
            f.write(base64.b64decode(self.call('GET', '/screenshot')))

    def close(self) -> None:
        try:
            self.call('DELETE', '')
        finally:
            self.driver.terminate()
            self.driver.wait(10)


@pytest.fixture(scope='module')
def browser(tmp_path_factory):
    chromium = shutil.which('chromium') or shutil.which('chromium-browser')
    chromedriver = shutil.which('chromedriver')
    if not (chromium and chromedriver):
        reason = ("headless-browser tests need Debian's chromium and chromium-driver on PATH "
                  '(tools/bootstrap.sh installs them)')
        if os.environ.get('CI', '').lower() == 'true':
            pytest.fail(f'{reason}; CI=true does not allow skipping them')
        pytest.skip(reason)
    session = Browser(chromium, chromedriver, str(tmp_path_factory.mktemp('chromium-profile')))
    yield session
    session.close()


def page_data(path) -> dict:
    """The image data blocks of a written page, as the page's script reads them."""
    text = open(path, encoding='utf-8').read()
    return {int(i): json.loads(block) for i, block in
            re.findall(r'<script type="application/json" class="image-data" id="image-(\d+)">(.*?)</script>', text)}


def click_location(browser, x: float, y: float, click: bool = True) -> None:
    """Click (or hover) the page's image at original-image pixel (x, y)."""
    client = browser.run('const svg = document.getElementById("stage"), p = svg.createSVGPoint();'
                         'p.x = arguments[0]; p.y = arguments[1];'
                         'const q = p.matrixTransform(svg.getScreenCTM()); return [q.x, q.y];', x, y)
    browser.click_at(*client, click=click)


def location_text(browser) -> str:
    return browser.run('return document.getElementById("location").textContent')


def drawn_points(browser) -> dict:
    """level -> (N, 2) (x, y) of the sampling points the page drew, in drawing order."""
    points = browser.run('return Array.from(document.querySelectorAll("#sampling circle.point"), c => '
                         '[+c.dataset.level, +c.getAttribute("cx"), +c.getAttribute("cy")]);')
    levels = {}
    for level, x, y in points:
        levels.setdefault(int(level), []).append((x, y))
    return {level: np.array(xy) for level, xy in levels.items()}


def check_sampling_in_browser(browser, page, dump_path, layers, levels: int, pick: int = None):
    """Select ``layers[0]`` and ``levels``, click a pickable location, compare the drawn points with
    the scalar reference composed through ``layers`` (the top, then the layers feeding it, nearest
    first), to the page's quantisation, and return the clicked cell."""
    layer = layers[0]
    browser.open(page)
    browser.click(f'#layer option[value="{layer}"]')
    browser.click(f'#levels option[value="{levels}"]')
    view = page_data(page)[0]['layers'][layer]
    assert view['picks']['through'][:levels - 1] == list(layers[1:levels])
    cells = view['picks']['cells']
    row, col = cells[len(cells) // 2 if pick is None else pick]
    dump = load_offset_dump(dump_path)
    stack = [LayerOffsets.from_dump(dump, name) for name in layers[:levels]]
    y, x = sampling_reference.to_image(stack[0], row * stack[0].geometry.conv_stride[0],
                                       col * stack[0].geometry.conv_stride[1])
    click_location(browser, x, y)
    assert browser.run('return document.getElementById("location").dataset.cell') == f'{row},{col}'
    expected = sampling_reference.stacked_points(stack, row, col)
    drawn = drawn_points(browser)
    assert sorted(drawn) == list(range(1, levels + 1))
    for depth, points_yx in enumerate(expected):
        half_step = view['picks']['levels'][depth]['step'] / 2
        np.testing.assert_allclose(drawn[depth + 1], np.array(points_yx)[:, ::-1], rtol=0, atol=half_step + 1e-9)
    return row, col


def assert_quiet_console(browser):
    noisy = [entry for entry in browser.console() if entry['level'] in ('SEVERE', 'WARNING')]
    assert not noisy, f'the page logged: {noisy}'


# ---------------------------------------------------------------------- a synthetic dump
LAYERS = ('backbone.layer3.0.conv2', 'backbone.layer3.1.conv2')


@pytest.fixture
def synthetic(tmp_path):
    """Two images whose two stacked layers scale each kernel by a known field; COCO boxes."""
    shape = (48, 64)
    for img_id in (3, 7):
        image = write_image(str(tmp_path / 'images' / f'{img_id}.png'), shape, seed=img_id)
        scale = np.linspace(0.5, 2, 6 * 8).reshape(6, 8) + 0.1 * img_id
        write_dump(tmp_path / 'dumps', img_id, {LAYERS[0]: ({}, scaled_kernel_field(scale)),
                                                LAYERS[1]: ({}, scaled_kernel_field(scale[::-1].copy()))},
                   ori_shape=shape, img_path=image)
    ann = write_coco(tmp_path / 'ann.json', [(3, '3.png', *shape), (7, '7.png', *shape)],
                     [dict(image_id=3, bbox=[8, 8, 24, 20]), dict(image_id=7, bbox=[30, 10, 20, 30]),
                      dict(image_id=7, bbox=[2, 2, 10, 10])])
    return tmp_path / 'dumps', ann


def test_quantised_is_within_half_a_step():
    values = np.random.default_rng(0).normal(0, 300, size=(7, 9, 2))
    block = quantised(values)
    assert block['shape'] == [7, 9, 2] and len(base64.b64decode(block['b64'])) == 2 * values.size
    error = np.abs(dequantised(block) - values).max()
    assert error <= block['step'] / 2 + 1e-9 and block['step'] == pytest.approx(np.ptp(values) / 65535)
    np.testing.assert_array_equal(dequantised(quantised(np.full(4, 2.5))), np.full(4, 2.5))
    with pytest.raises(ValueError, match='non-finite'):
        quantised([1.0, np.nan])


def test_markdown_tables_become_html():
    text = '## Title\n\nSome words.\n\n| layer | a |\n|---|---|\n| x<y | 1 |\n'
    assert markdown_to_html(text) == (
        '<h3>Title</h3>\n<p>Some words.</p>\n<table><thead><tr><th>layer</th><th>a</th></tr></thead>'
        '<tbody><tr><td>x&lt;y</td><td>1</td></tr></tbody></table>')


def test_page_embeds_the_python_geometry(synthetic, tmp_path):
    dumps, ann = synthetic
    page = write_offset_browser(dumps, tmp_path / 'page.html', ann_file=ann, levels=2, points_per_side=4)
    assert page.image_ids == [3, 7] and page.size == os.path.getsize(tmp_path / 'page.html')
    text = open(tmp_path / 'page.html').read()
    assert 'https://' not in text and 'http://' not in text.replace('http://www.w3.org/2000/svg', '')
    data = page_data(tmp_path / 'page.html')
    dump = load_offset_dump(dumps / '7.npz')
    stack = [LayerOffsets.from_dump(dump, LAYERS[1]), LayerOffsets.from_dump(dump, LAYERS[0])]
    view = data[1]['layers'][LAYERS[1]]
    assert view['picks']['through'] == [LAYERS[0]]
    # 4 pickable locations per side of the 6 x 8 grid: every other row and column from 1
    assert view['picks']['cells'] == [[r, c] for r in (1, 3, 5) for c in (1, 3, 5, 7)]
    for k, (row, col) in enumerate(view['picks']['cells']):
        levels = sampling_reference.stacked_points(stack, row, col)
        for depth, block in enumerate(view['picks']['levels']):
            np.testing.assert_allclose(dequantised(block)[k], np.array(levels[depth])[:, ::-1],
                                       atol=block['step'] / 2 + 1e-9)
    # the lowest layer has nothing below it: one level only
    assert len(data[1]['layers'][LAYERS[0]]['picks']['levels']) == 1
    # kernels scaled by linspace(0.5, 2) + 0.7 (mean 1.95): radius ratio and effective dilation alike
    assert view['numbers']['radius'] == pytest.approx(1.95) and view['numbers']['dilation'] == pytest.approx(1.95)
    assert data[1]['objects']['boxes'] == [[30.0, 10.0, 50.0, 40.0], [2.0, 2.0, 12.0, 12.0]]
    assert data[1]['objects']['size'] == ['small', 'small']
    assert 'Effective dilation by region (2 images)' in text and text.count('data:image/png;base64,') >= 3 * 2 + 3


def test_bad_input_fails_before_writing(synthetic, tmp_path):
    dumps, ann = synthetic
    out = tmp_path / 'page.html'
    moved = tmp_path / 'elsewhere'
    shutil.move(str(tmp_path / 'images'), str(moved))
    with pytest.raises(ImageNotFoundError, match=r"3\.png.*--img-root"):
        write_offset_browser(dumps, out)
    with pytest.raises(ImageNotFoundError, match=r"in img_root .*nowhere.*--img-root"):
        write_offset_browser(dumps, out, img_root=str(tmp_path / 'nowhere'))
    assert write_offset_browser(dumps, out, img_root=str(moved)).image_ids == [3, 7]
    out.unlink()
    with pytest.raises(OffsetInputError, match='holds no offset dumps'):
        write_offset_browser(tmp_path, out, img_root=str(moved))
    with pytest.raises(ValueError, match='levels must be at most 4'):
        write_offset_browser(dumps, out, levels=5)
    with pytest.raises(FileNotFoundError, match='annotation file'):
        write_offset_browser(dumps, out, ann_file=str(tmp_path / 'missing.json'), img_root=str(moved))
    other = write_coco(tmp_path / 'other.json', [(1, '1.png', 48, 64)], [])
    with pytest.raises(OffsetInputError, match='not in'):
        write_offset_browser(dumps, out, ann_file=other, img_root=str(moved))
    with pytest.raises(FileNotFoundError, match='folder of the page'):
        write_offset_browser(dumps, tmp_path / 'no' / 'page.html', img_root=str(moved))
    (tmp_path / 'foreign').mkdir()
    (tmp_path / 'foreign' / '1.npz').write_bytes(b'not a zip')
    with pytest.raises(OffsetDumpError, match=r'1\.npz: not an offset dump'):
        write_offset_browser(tmp_path / 'foreign', out, img_root=str(moved))
    assert not out.exists() and not list(tmp_path.glob('.page.html.*'))


def test_tool_names_the_missing_images(synthetic, tmp_path, monkeypatch):
    dumps, _ = synthetic
    shutil.rmtree(tmp_path / 'images')
    monkeypatch.setattr(sys, 'argv', ['browse_offsets.py', str(dumps)])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(os.path.join(REPO, 'tools', 'browse_offsets.py'), run_name='__main__')
    message = str(exit_info.value.code)
    assert message.startswith('browse_offsets.py: error: image file') and '--img-root' in message
    assert not (tmp_path / 'dumps.html').exists()


def test_tool(synthetic, tmp_path, capsys):
    dumps, _ = synthetic
    tool = import_tool('browse_offsets')
    page = tool.main([str(dumps), '--max-images', '1', '--layer', 'layer3.1'])
    assert page.path == tmp_path / 'dumps.html' and page.image_ids == [3]
    assert re.search(r'wrote .*dumps\.html: 0\.\d\d MB, 1 image\(s\), \d+ kB per image', capsys.readouterr().out)
    with pytest.raises(SystemExit):
        tool.parse_args([str(dumps), '--levels', '0'])
    assert '--levels must be at least 1' in capsys.readouterr().err


def test_synthetic_page_in_browser(browser, synthetic, tmp_path):
    dumps, ann = synthetic
    page = write_offset_browser(dumps, tmp_path / 'page.html', ann_file=ann, levels=2, points_per_side=4).path
    row, col = check_sampling_in_browser(browser, page, dumps / '3.npz', LAYERS[::-1], levels=2)
    assert browser.run('return document.querySelectorAll("#sampling circle.point").length') == 9 + 81
    assert location_text(browser).startswith(f'pinned · cell ({row}, {col})')

    # a click on the pinned location releases it; then the pointer shows what it hovers
    click_location(browser, 8 * col + 0.5, 8 * row + 0.5)      # cell centres: stride 8, no resize
    assert location_text(browser).startswith(f'hover · cell ({row}, {col})')
    corner = page_data(page)[0]['layers'][LAYERS[1]]['picks']['cells'][0]
    click_location(browser, 8 * corner[1] + 0.5, 8 * corner[0] + 0.5, click=False)
    assert location_text(browser).startswith(f'hover · cell ({corner[0]}, {corner[1]})') and corner != [row, col]

    # overlays: one circle per embedded location, the boxes of the image, the analysis tables
    browser.click('#show-circles')
    view = page_data(page)[0]['layers'][LAYERS[1]]
    assert browser.run('return document.querySelectorAll("#circles circle").length') == \
        view['circles']['ratio']['shape'][0]
    assert browser.run('return document.querySelectorAll("#objects rect").length') == 1
    browser.click('#images tr.image:nth-child(2)')
    assert browser.run('return document.querySelectorAll("#objects rect").length') == 2
    assert browser.run('return document.querySelectorAll("#analysis table").length') == 4
    assert_quiet_console(browser)

    # inside an IFrame, as a notebook shows it (IPython.display.IFrame)
    (tmp_path / 'notebook.html').write_text('<iframe src="page.html" width="100%" height="800"></iframe>')
    browser.open(tmp_path / 'notebook.html')
    browser.call('POST', '/frame', {'id': 0})
    assert browser.run('return document.querySelectorAll("#stage image").length') >= 2
    assert_quiet_console(browser)


# ---------------------------------------------------------------------- a real dump
@pytest.mark.slow
def test_real_dump_page_in_browser(browser, tiny_checkpoint, tmp_path):
    from deform_viz.engine import evaluate
    from test_real_dump import eval_config
    dump_dir = tmp_path / 'dumps'
    evaluate(eval_config(tiny_checkpoint, tmp_path), tiny_checkpoint.checkpoint, dump_offsets=str(dump_dir),
             dump_options=dict(max_images=2))
    ann = os.path.join(tiny_checkpoint.data_root, 'annotations', 'instances_val.json')
    page = import_tool('browse_offsets').main([str(dump_dir), '--ann', ann, '--levels', '3',
                                               '--out', str(tmp_path / 'page.html')])
    first = sorted(dump_dir.glob('*.npz'), key=lambda p: int(p.stem))[0]
    stack = [f'backbone.layer3.{block}.conv2' for block in (2, 1, 0)]   # layer3.0: stride 8 -> 16
    check_sampling_in_browser(browser, page.path, first, stack, levels=3, pick=0)
    browser.click('#show-taps')
    assert browser.run('return document.getElementById("tap-field").getAttribute("d").length') > 0
    assert_quiet_console(browser)


# ---------------------------------------------------------------------- drawn content, by hand
# A 64 x 96 image, both layers at input and output stride 8 (a 8 x 12 grid, cell (r, c) centred on
# image pixel (8r + 0.5, 8c + 0.5)), no resize. SHIFT: tap n of every cell moves by TAP_SHIFT[n]
# (input px), so d_f = (0.5, -0.25) everywhere. BAND (fed by SHIFT): d_f along x is +0.5 left of
# column 5, 0 there and -0.5 right of it, so div d_f is -0.25, -0.5, -0.25 on columns 4-6 and 0
# elsewhere; its kernels are scaled by BAND_SCALE.
SHIFT, BAND = 'backbone.layer3.0.conv2', 'backbone.layer3.1.conv2'
CONTENT_GRID = (8, 12)
TAP_SHIFT = np.array([(0.5 + 0.05 * (n - 4), -0.25 + 0.1 * (n - 4)) for n in range(9)])
RIGID = np.array([(i - 1, j - 1) for i in range(3) for j in range(3)], dtype=np.float64)
CONTENT_BOXES = [[8, 4, 24, 20], [50, 30, 40, 28]]   # COCO x, y, w, h


def band_scale(shift: float = 0.0) -> np.ndarray:
    rows, cols = np.mgrid[0:CONTENT_GRID[0], 0:CONTENT_GRID[1]]
    return 0.8125 + 0.0625 * rows + 0.03125 * cols + shift   # dyadic: d_f is exactly the band in float32


def content_fields(img_id: int):
    """(SHIFT offsets, BAND offsets), each (1, 9, 2, 8, 12); image 7 shifts twice as far."""
    shift = np.broadcast_to(TAP_SHIFT[None, :, :, None, None] * (2 if img_id == 7 else 1),
                            (1, 9, 2) + CONTENT_GRID).astype(np.float32)
    dx = np.clip(-0.5 * (np.arange(CONTENT_GRID[1]) - 5.0), -0.5, 0.5)
    band = scaled_kernel_field(band_scale()).astype(np.float64)
    band[:, :, 1] += dx
    return shift, band.astype(np.float32)


@pytest.fixture
def content(tmp_path):
    """Images 3 and 7 of the fields above; the COCO boxes on image 3."""
    shape = (64, 96)
    for img_id in (3, 7):
        image = write_image(str(tmp_path / 'images' / f'{img_id}.png'), shape, seed=img_id)
        shift, band = content_fields(img_id)
        write_dump(tmp_path / 'dumps', img_id, {SHIFT: ({}, shift), BAND: ({}, band)}, ori_shape=shape,
                   img_path=image)
    ann = write_coco(tmp_path / 'ann.json', [(3, '3.png', *shape), (7, '7.png', *shape)],
                     [dict(image_id=3, bbox=box) for box in CONTENT_BOXES])
    page = write_offset_browser(tmp_path / 'dumps', tmp_path / 'page.html', ann_file=ann, levels=2,
                                points_per_side=4)
    return page.path, tmp_path / 'dumps'


def arrow_shafts(browser, element_id: str) -> np.ndarray:
    """(N, 4) x0, y0, x1, y1 of the arrows of a path drawn by the page (shaft, then two head strokes)."""
    d = browser.run(f'return document.getElementById("{element_id}").getAttribute("d")')
    number = r'(-?[\d.]+(?:e[-+]?\d+)?)'
    moves = re.findall(rf'M{number} {number}L{number} {number}', d)
    return np.array(moves[::2], dtype=np.float64)   # every other move starts a head stroke


def attributes(browser, css: str, names) -> np.ndarray:
    """The numeric attributes ``names`` of every element matching ``css``, (N, len(names))."""
    return np.array(browser.run('return Array.from(document.querySelectorAll(arguments[0]), '
                                'e => arguments[1].map(n => +e.getAttribute(n)));', css, list(names)))


def image_list(browser) -> list:
    return browser.run('return Array.from(document.querySelectorAll("#images tbody tr"), '
                       'r => Array.from(r.cells, c => c.textContent));')


def centres(rows, cols) -> np.ndarray:
    """(N, 2) image x, y of the cells rows x cols, row by row."""
    return np.array([(8 * c + 0.5, 8 * r + 0.5) for r in rows for c in cols])


def test_negative_divergence_png_is_the_band(content):
    page, _ = content
    negative = page_data(page)[0]['layers'][BAND]['negative']
    with Image.open(io.BytesIO(base64.b64decode(negative['png'].split(',', 1)[1]))) as im:
        assert im.mode == 'P' and im.size == (96, 64)
        painted = np.asarray(im) == 1
        assert im.getpalette()[3:6] == [217, 0, 0]
    # columns 4-6 are painted: pixel k belongs to column round(k / 8), so x in [28, 52)
    expected = np.zeros((64, 96), dtype=bool)
    expected[:, 28:52] = True
    np.testing.assert_array_equal(painted, expected)
    assert (negative['cells'], negative['total']) == (3 * 8, 96)
    shift = page_data(page)[0]['layers'][SHIFT]['negative']
    assert shift['cells'] == 0


def test_drawn_content_matches_the_fields(browser, content):
    page, _ = content
    browser.open(page)
    data = page_data(page)
    hx = 8 * TAP_SHIFT[:, ::-1]                      # tap shifts as image (dx, dy): input stride 8

    # the image list: per image, the chosen layer's means: BAND's |d_f| is 0.5 x 8 px on 11 of 12 columns,
    # its dilation and radius ratio the mean scale; SHIFT's by hand from TAP_SHIFT
    df = np.hypot(*TAP_SHIFT.mean(0)) * 8
    gaps = [np.hypot(*(RIGID[n + 1] + TAP_SHIFT[n + 1] - RIGID[n] - TAP_SHIFT[n])) for n in (0, 1, 3, 4, 6, 7)]
    gaps += [np.hypot(*(RIGID[n + 3] + TAP_SHIFT[n + 3] - RIGID[n] - TAP_SHIFT[n])) for n in range(6)]
    extent = np.sqrt((2 + TAP_SHIFT[[2, 5, 8], 1].mean() - TAP_SHIFT[[0, 3, 6], 1].mean())
                     * (2 + TAP_SHIFT[[6, 7, 8], 0].mean() - TAP_SHIFT[[0, 1, 2], 0].mean())) / 2
    assert band_scale().mean() == 1.203125
    assert image_list(browser) == [['1', '3', '64×96', '2', '3.67', '25 %', '1.20', '1.20'],
                                   ['2', '7', '64×96', '0', '3.67', '25 %', '1.20', '1.20']]
    browser.click(f'#layer option[value="{SHIFT}"]')
    gaps2 = [np.hypot(*(RIGID[n + 1] + 2 * TAP_SHIFT[n + 1] - RIGID[n] - 2 * TAP_SHIFT[n])) for n in (0, 1, 3, 4, 6, 7)]
    gaps2 += [np.hypot(*(RIGID[n + 3] + 2 * TAP_SHIFT[n + 3] - RIGID[n] - 2 * TAP_SHIFT[n])) for n in range(6)]
    extent2 = np.sqrt((2 + 2 * (TAP_SHIFT[[2, 5, 8], 1].mean() - TAP_SHIFT[[0, 3, 6], 1].mean()))
                      * (2 + 2 * (TAP_SHIFT[[6, 7, 8], 0].mean() - TAP_SHIFT[[0, 1, 2], 0].mean()))) / 2
    assert image_list(browser) == [
        ['1', '3', '64×96', '2', f'{df:.2f}', '0 %', f'{np.mean(gaps):.2f}', f'{extent:.2f}'],
        ['2', '7', '64×96', '0', f'{2 * df:.2f}', '0 %', f'{np.mean(gaps2):.2f}', f'{extent2:.2f}']]

    # SHIFT's d_f arrows: one per cell (32 per side fits the grid), all (dx, dy) = (-2, 4) image px,
    # drawn 0.9 of the 8 px arrow spacing long
    shafts = arrow_shafts(browser, 'arrows')
    np.testing.assert_allclose(shafts[:, :2], centres(range(8), range(12)), atol=1e-3)
    direction = np.array([-2.0, 4.0]) / np.hypot(2, 4)
    np.testing.assert_allclose(shafts[:, 2:] - shafts[:, :2], np.broadcast_to(0.9 * 8 * direction, (96, 2)),
                               atol=1e-3)

    # per-tap arrows: tap 7 (row +1, column 0) selected; lengths share one scale, the 95th percentile
    # of every tap's length spanning 0.9 of the spacing
    browser.click('#show-taps')
    browser.click('#tap option[value="7"]')
    assert browser.run('return document.getElementById("tap").selectedOptions[0].textContent') == '(1, 0)'
    lengths = np.repeat(np.hypot(hx[:, 0], hx[:, 1]), 96)
    scale = np.percentile(lengths, 95) / (0.9 * 8)
    taps = arrow_shafts(browser, 'tap-field')
    np.testing.assert_allclose(taps[:, :2], centres(range(8), range(12)), atol=1e-3)
    np.testing.assert_allclose(taps[:, 2:] - taps[:, :2], np.broadcast_to(hx[7] / scale, (96, 2)), atol=1e-3)
    browser.click('#tap option[value="0"]')
    taps = arrow_shafts(browser, 'tap-field')
    np.testing.assert_allclose(taps[:, 2:] - taps[:, :2], np.broadcast_to(hx[0] / scale, (96, 2)), atol=1e-3)

    # BAND's circles: radius 0.3 x the 8 px spacing x the kernel's scale, at every cell centre
    browser.click(f'#layer option[value="{BAND}"]')
    browser.click('#show-circles')
    circles = attributes(browser, '#circles circle', ['cx', 'cy', 'r'])
    np.testing.assert_allclose(circles[:, :2], centres(range(8), range(12)), atol=1e-3)
    np.testing.assert_allclose(circles[:, 2], 0.3 * 8 * band_scale().ravel(), atol=1e-4)
    # its d_f arrows: 0.9 x 8 px rightwards left of column 5, leftwards right of it; column 5's d_f = 0
    # comes back from the 16-bit quantisation within half a step of 8 px / 65535
    shafts = arrow_shafts(browser, 'arrows')
    np.testing.assert_allclose(shafts[:, :2], centres(range(8), range(12)), atol=1e-3)
    along_x = np.sign(5 - np.arange(12)) * 0.9 * 8
    np.testing.assert_allclose(shafts[:, 2] - shafts[:, 0], np.tile(along_x, 8), atol=1e-3)
    np.testing.assert_allclose(shafts[:, 3], shafts[:, 1], atol=1e-3)

    # the mask is the PNG the page embeds, laid over the whole image
    negative = browser.run('const e = document.getElementById("negative"); '
                           'return ["href", "x", "y", "width", "height"].map(n => e.getAttribute(n));')
    assert negative == [data[0]['layers'][BAND]['negative']['png'], '0', '0', '96', '64']
    browser.click('#show-negative')
    assert browser.run('return document.getElementById("negative")') is None

    # ground truth: each rectangle is its box; the owner image paints the pixels whose centre is inside
    rects = attributes(browser, '#objects rect', ['x', 'y', 'width', 'height'])
    np.testing.assert_array_equal(rects, CONTENT_BOXES)
    owner_png = data[0]['objects']['png']
    with Image.open(io.BytesIO(base64.b64decode(owner_png.split(',', 1)[1]))) as im:
        owner = np.asarray(im)
    expected = np.zeros((64, 96), np.uint8)
    expected[4:24, 8:32] = 2
    expected[30:58, 50:90] = 3
    np.testing.assert_array_equal(owner, expected)
    browser.click('#images tr.image:nth-child(2)')
    assert browser.run('return document.querySelectorAll("#objects rect").length') == 0
    assert_quiet_console(browser)


def test_levels_selector_and_nearest_location(browser, content):
    page, dumps = content
    browser.open(page)
    dump = load_offset_dump(dumps / '3.npz')
    stack = [LayerOffsets.from_dump(dump, BAND), LayerOffsets.from_dump(dump, SHIFT)]
    # 4 pickable locations per side of 8 x 12 cells: rows 1, 4, 7, columns 1, 4, 7, 10 (every third)
    assert page_data(page)[0]['layers'][BAND]['picks']['cells'] == [[r, c] for r in (1, 4, 7) for c in (1, 4, 7, 10)]
    # between cell centres: (42, 20) is nearest to cell (1, 4) at (32.5, 8.5), (46, 22) to (4, 7) at (56.5, 32.5)
    for (x, y), cell in (((42, 20), (1, 4)), ((46, 22), (4, 7))):
        click_location(browser, x, y)
        assert location_text(browser).startswith(f'pinned · cell ({cell[0]}, {cell[1]}) at x {8 * cell[1] + 0.5:.1f}')
        drawn = drawn_points(browser)
        expected = sampling_reference.stacked_points(stack, *cell)
        assert sorted(drawn) == [1, 2] and len(drawn[2]) == 81
        for level in (1, 2):
            np.testing.assert_allclose(drawn[level], np.array(expected[level - 1])[:, ::-1], atol=2e-3)
        rigid = attributes(browser, '#sampling path.rigid', [])
        assert len(rigid) == 9
    # level 0 of the top layer alone: the rigid taps are 1 input px = 8 image px apart, scaled by BAND
    browser.click('#levels option[value="1"]')
    drawn = drawn_points(browser)
    assert sorted(drawn) == [1]
    s = band_scale()[4, 7]
    np.testing.assert_allclose(drawn[1], [(56.5 + 8 * s * j + 8 * (-0.5), 32.5 + 8 * s * i) for i, j in RIGID],
                               atol=2e-3)
    assert location_text(browser).endswith('9 points through 1 layer(s)')
    # the lowest layer has nothing below it: one level on offer
    browser.click(f'#layer option[value="{SHIFT}"]')
    assert browser.run('return document.getElementById("levels").options.length') == 1
    assert_quiet_console(browser)


@pytest.mark.parametrize('flip', ['vertical', 'diagonal'])
def test_flipped_dump_is_drawn_unflipped(browser, tmp_path, flip):
    """The network saw the image mirrored: cell (r, c) sits on (8c + 0.5, 63.5 - 8r) (and x mirrored
    to 95.5 - 8c when diagonal); SHIFT's d_f (0.5, -0.25) input px points up (and right) on the file."""
    image = write_image(str(tmp_path / 'images' / '3.png'), (64, 96))
    shift, _ = content_fields(3)
    write_dump(tmp_path / 'dumps', 3, {SHIFT: ({}, shift)}, ori_shape=(64, 96), img_path=image, flip=True,
               flip_direction=flip)
    page = write_offset_browser(tmp_path / 'dumps', tmp_path / 'page.html', points_per_side=4).path
    browser.open(page)
    mirror_x = flip == 'diagonal'
    cells = [(8 * c + 0.5, 8 * r + 0.5) for r in range(8) for c in range(12)]
    unflipped = np.array([(96 - x if mirror_x else x, 64 - y) for x, y in cells])
    shafts = arrow_shafts(browser, 'arrows')
    np.testing.assert_allclose(shafts[:, :2], unflipped, atol=1e-3)
    direction = np.array([2.0 if mirror_x else -2.0, -4.0]) / np.hypot(2, 4)
    np.testing.assert_allclose(shafts[:, 2:] - shafts[:, :2], np.broadcast_to(0.9 * 8 * direction, (96, 2)),
                               atol=1e-3)
    # tap 0's field, mirrored alike
    browser.click('#show-taps')
    hx = 8 * TAP_SHIFT[:, ::-1] * [(-1 if mirror_x else 1), -1]
    scale = np.percentile(np.repeat(np.hypot(hx[:, 0], hx[:, 1]), 96), 95) / (0.9 * 8)
    taps = arrow_shafts(browser, 'tap-field')
    np.testing.assert_allclose(taps[:, :2], unflipped, atol=1e-3)
    np.testing.assert_allclose(taps[:, 2:] - taps[:, :2], np.broadcast_to(hx[0] / scale, (96, 2)), atol=1e-3)
    # a click on the file's position of cell (4, 7) finds that cell; its taps, mirrored too
    x, y = 8 * 7 + 0.5, 8 * 4 + 0.5
    click_location(browser, 96 - x if mirror_x else x, 64 - y)
    assert browser.run('return document.getElementById("location").dataset.cell') == '4,7'
    taps = [(x + 8 * (j + dx), y + 8 * (i + dy)) for (i, j), (dy, dx) in zip(RIGID, TAP_SHIFT)]
    expected = np.array([(96 - tx if mirror_x else tx, 64 - ty) for tx, ty in taps])
    np.testing.assert_allclose(drawn_points(browser)[1], expected, atol=2e-3)
    assert_quiet_console(browser)


def screen_colour(browser, shot, x: float, y: float) -> np.ndarray:
    """The RGB the screenshot ``shot`` shows at original-image pixel (x, y) of the page's image."""
    client = browser.run('const svg = document.getElementById("stage"), p = svg.createSVGPoint();'
                         'p.x = arguments[0]; p.y = arguments[1];'
                         'const q = p.matrixTransform(svg.getScreenCTM());'
                         'return [q.x * devicePixelRatio, q.y * devicePixelRatio];', x, y)
    return shot[int(round(client[1])), int(round(client[0]))].astype(int)


def test_exif_rotated_image_is_shown_upright(browser, tmp_path):
    """A JPEG stored 96 high and 64 wide with EXIF orientation 6: the dump's 64 x 96 frame is the
    turned picture, whose quadrants are red, green (top) and blue, yellow (bottom); the page must
    show it so."""
    path = tmp_path / 'images' / '3.jpg'
    upright = write_rotated_jpeg(path)
    with Image.open(path) as im:
        shown = np.asarray(ImageOps.exif_transpose(im)).astype(int)
    np.testing.assert_allclose(shown[8:24, 8:40], upright[8:24, 8:40].astype(int), atol=40)   # PIL agrees
    write_dump(tmp_path / 'dumps', 3, {SHIFT: ({}, content_fields(3)[0])}, ori_shape=(64, 96), img_path=str(path))
    page = write_offset_browser(tmp_path / 'dumps', tmp_path / 'page.html').path
    browser.open(page)
    browser.click('#show-arrows')
    browser.click('#show-negative')
    shot_path = tmp_path / 'shot.png'
    browser.screenshot(shot_path)
    with Image.open(shot_path) as im:
        shot = np.asarray(im.convert('RGB'))
    for (x, y), colour in (((24, 16), (255, 0, 0)), ((72, 16), (0, 255, 0)), ((24, 48), (0, 0, 255)),
                           ((72, 48), (255, 255, 0))):
        np.testing.assert_allclose(screen_colour(browser, shot, x, y), colour, atol=40, err_msg=f'at {(x, y)}')
    assert_quiet_console(browser)


def test_deform_groups_arrows_average_picks_take_group_0(tmp_path):
    """Two deform groups shifting every tap by (0.5, 0) and (0, -1) input px: arrows and the image
    list show their mean, (0.25, -0.5) = (2, -4) image px; the sampling points are group 0's."""
    image = write_image(str(tmp_path / 'images' / '3.png'), (64, 96))
    offset = np.zeros((2, 9, 2) + CONTENT_GRID, np.float32)
    offset[0, :, 0], offset[1, :, 1] = 0.5, -1.0
    write_dump(tmp_path / 'dumps', 3, {SHIFT: ({}, offset)}, ori_shape=(64, 96), img_path=image)
    page = write_offset_browser(tmp_path / 'dumps', tmp_path / 'page.html', points_per_side=4).path
    view = page_data(page)[0]['layers'][SHIFT]
    np.testing.assert_allclose(dequantised(view['arrows']['uv']), np.broadcast_to([-4.0, 2.0], (96, 2)))
    assert view['numbers']['df'] == pytest.approx(np.hypot(2, 4))
    for k, (r, c) in enumerate(view['picks']['cells']):
        expected = [(8 * (c + j) + 0.5, 8 * (r + i + 0.5) + 0.5) for i, j in RIGID]
        np.testing.assert_allclose(dequantised(view['picks']['levels'][0])[k], expected,
                                   atol=view['picks']['levels'][0]['step'])
