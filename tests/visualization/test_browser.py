"""The offset browser page: what it embeds, its errors, and the page itself in headless Chromium.

The browser tests drive Debian's ``chromium`` through ``chromedriver``'s W3C WebDriver HTTP
interface with the standard library (:class:`Browser`): load the page from disk, select a layer
and a number of stacked layers, click a location with a real pointer, and compare the points
the page drew with :func:`stacked_sampling_positions`. Without Chromium they skip, unless
``CI=true``, where they fail.
"""
import base64
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

from analysis.synthetic_dumps import scaled_kernel_field, write_coco, write_dump, write_image
from conftest import REPO, import_tool
from deform_viz.analysis import OffsetInputError
from deform_viz.analysis.fields import LayerOffsets, feeding_layers, stacked_sampling_positions
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


def check_sampling_in_browser(browser, page, dump_path, layer: str, levels: int, pick: int = None):
    """Select ``layer`` and ``levels``, click a pickable location, compare the drawn points with
    the Python geometry (to the page's quantisation) and return the clicked cell."""
    browser.open(page)
    browser.click(f'#layer option[value="{layer}"]')
    browser.click(f'#levels option[value="{levels}"]')
    view = page_data(page)[0]['layers'][layer]
    cells = view['picks']['cells']
    row, col = cells[len(cells) // 2 if pick is None else pick]
    dump = load_offset_dump(dump_path)
    top = LayerOffsets.from_dump(dump, layer)
    y, x = top.geometry.grid_to_image(row, col)
    click_location(browser, float(x), float(y))
    assert browser.run('return document.getElementById("location").dataset.cell') == f'{row},{col}'

    below = feeding_layers(dump, layer, levels - 1)
    assert len(below) == levels - 1, f'{layer} has only {len(below)} dumped layer(s) feeding it'
    expected = stacked_sampling_positions(top, below, row, col)
    drawn = drawn_points(browser)
    assert sorted(drawn) == list(range(1, levels + 1))
    for depth, points_yx in enumerate(expected):
        half_step = view['picks']['levels'][depth]['step'] / 2
        np.testing.assert_allclose(drawn[depth + 1], points_yx[:, ::-1], rtol=0, atol=half_step + 1e-9)
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
    top = LayerOffsets.from_dump(dump, LAYERS[1])
    view = data[1]['layers'][LAYERS[1]]
    assert view['picks']['through'] == [LAYERS[0]]
    for k, (row, col) in enumerate(view['picks']['cells']):
        levels = stacked_sampling_positions(top, [LayerOffsets.from_dump(dump, LAYERS[0])], row, col)
        for depth, block in enumerate(view['picks']['levels']):
            np.testing.assert_allclose(dequantised(block)[k], levels[depth][:, ::-1], atol=block['step'] / 2 + 1e-9)
    # the lowest layer has nothing below it: one level only
    assert len(data[1]['layers'][LAYERS[0]]['picks']['levels']) == 1
    np.testing.assert_allclose(view['numbers']['radius'], (top.radius_image / top.rigid_radius_image).mean())
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
    row, col = check_sampling_in_browser(browser, page, dumps / '3.npz', LAYERS[1], levels=2)
    assert browser.run('return document.querySelectorAll("#sampling circle.point").length') == 9 + 81
    assert location_text(browser).startswith(f'pinned · cell ({row}, {col})')

    # a click on the pinned location releases it; then the pointer shows what it hovers
    geometry = LayerOffsets.from_dump(load_offset_dump(dumps / '3.npz'), LAYERS[1]).geometry
    y, x = geometry.grid_to_image(row, col)
    click_location(browser, float(x), float(y))
    assert location_text(browser).startswith(f'hover · cell ({row}, {col})')
    corner = page_data(page)[0]['layers'][LAYERS[1]]['picks']['cells'][0]
    y, x = geometry.grid_to_image(*corner)
    click_location(browser, float(x), float(y), click=False)
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
    check_sampling_in_browser(browser, page.path, first, 'backbone.layer3.2.conv2', levels=3, pick=0)
    browser.click('#show-taps')
    assert browser.run('return document.getElementById("tap-field").getAttribute("d").length') > 0
    assert_quiet_console(browser)
