"""One self-contained HTML page per dump: browse images, layers and locations in a browser.

:func:`write_offset_browser` turns a dump directory into a single HTML file (data, script and
styles inline; nothing is fetched, so it opens from disk and in a notebook's IFrame). The page
draws what Python computed with the code of the PNG figures (:mod:`.figures`) and of the analysis
(:class:`~deform_viz.analysis.LayerOffsets`, :func:`~deform_viz.analysis.fields.stacked_sampling_positions`);
it never recomputes geometry. Per image and layer it embeds, all in original-image pixels:

* d_f arrows at subsampled cells (Fig. 2) and the negative-divergence mask painted at image
  resolution by :meth:`FeatureGeometry.to_image_resolution` (a 1-bit PNG);
* d_k extent circles (Fig. 3) at the arrows' cells: radius / rigid radius, and the drawn radius of
  a rigid kernel;
* per-tap offset fields (Fig. 1's content, on the image): each tap's offset at subsampled cells;
* pickable locations (a subsampled grid): their rigid taps and their sampling positions composed
  through 1..``levels`` stacked deformable layers (the DCN paper's Fig. 5/6);
* with annotations: boxes, sizes, and the owner of every pixel as the analysis assigns it;
* deformable attention layers (Deformable DETR, DINO; :mod:`.browser_attention`): the decoder
  query's sampling points of each of the best detections, and every stored encoder query's.

Numbers are quantised to 16 bits over each array's own range (the error is at most half a step,
``(max - min) / 131070``), base64-encoded and decoded by the page. Each image lives in its own
``<script type="application/json">`` block, parsed only when shown, so a page of many images opens
quickly; the page is streamed to disk one image at a time and published atomically.
"""
import base64
import html
import io
import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

from ..analysis import AnalysisSettings, CocoGroundTruth, analyze_offsets, format_markdown
from ..analysis.annotations import IGNORED, SIZE_CLASSES, size_class
from ..analysis.fields import LayerOffsets, dump_files, feeding_layers, layer_offsets, stacked_sampling_positions
from ..dump import LayerNotFoundError, load_offset_dump
from ..fileio import write_atomically
from ..ops.offset_fields import rigid_grid
from .browser_attention import DETECTIONS, attention_entry, attention_names, attention_view
from .figures import RIGID_FRACTION, fit_arrow_scale, subsample_grid
from .image import ImageNotFoundError, image_file

__all__ = ['BrowserPage', 'write_offset_browser', 'layer_view', 'image_view', 'image_path', 'quantised',
           'dequantised', 'markdown_to_html']

TEMPLATE = 'browser_template.html'
DATA_MARKER = '<!-- deform-viz data -->'
EXIF_ORIENTATION = 0x0112
QUANT_LEVELS = 65535   # 16-bit steps over each array's range
#: defaults of the page's sampling: pickable locations and arrows per side, stacked levels
POINTS_PER_SIDE = 12
ARROWS_PER_SIDE = 32
TAP_ARROWS_PER_SIDE = 16
LEVELS = 2
MAX_LEVELS = 4   # (K*K)^4 = 6561 points per location for 3x3 kernels: beyond that a page explodes


@dataclass
class BrowserPage:
    """What :func:`write_offset_browser` wrote: the page, its size and the bytes each image takes
    (``image_bytes``: the embedded image file; ``data_bytes``: everything else of that image)."""
    path: Path
    size: int
    image_ids: List
    image_bytes: List[int]
    data_bytes: List[int]

    def summary(self) -> str:
        n = len(self.image_ids)
        per_image = (sum(self.image_bytes) + sum(self.data_bytes)) / max(n, 1)
        return (f'{self.path}: {self.size / 1e6:.2f} MB, {n} image(s), {per_image / 1e3:.0f} kB per image '
                f'({sum(self.data_bytes) / max(n, 1) / 1e3:.0f} kB offset data + '
                f'{sum(self.image_bytes) / max(n, 1) / 1e3:.0f} kB image file)')


# ---------------------------------------------------------------------- encoding
def quantised(values) -> dict:
    """A float array as 16-bit steps over its range: ``value = lo + step * q`` (see the page's decode)."""
    values = np.asarray(values, dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError('cannot embed non-finite values (NaN or inf in the fields)')
    lo = float(values.min()) if values.size else 0.0
    hi = float(values.max()) if values.size else 0.0
    step = (hi - lo) / QUANT_LEVELS if hi > lo else 1.0
    q = np.rint((values - lo) / step).astype('<u2')
    return {'lo': lo, 'step': step, 'shape': list(values.shape), 'b64': base64.b64encode(q.tobytes()).decode()}


def dequantised(block: dict) -> np.ndarray:
    """The inverse of :func:`quantised` (what the page decodes)."""
    q = np.frombuffer(base64.b64decode(block['b64']), dtype='<u2')
    return (block['lo'] + block['step'] * q.astype(np.float64)).reshape(block['shape'])


def _png_data_uri(indices: np.ndarray, palette: Sequence[Sequence[int]]) -> str:
    """A palette PNG of (h, w) colour indices; index 0 is transparent."""
    im = Image.fromarray(indices.astype(np.uint8), mode='P')
    flat = [c for rgb in palette for c in rgb]
    im.putpalette(flat + [0] * (768 - len(flat)))
    buffer = io.BytesIO()
    im.save(buffer, 'PNG', optimize=True, transparency=0, bits=max(1, math.ceil(math.log2(max(len(palette), 2)))))
    return 'data:image/png;base64,' + base64.b64encode(buffer.getvalue()).decode()


def image_path(meta: dict, img_root: Optional[str]) -> str:
    """The dumped image's file, checked: it exists and has the dump's ``ori_shape``."""
    if not meta.get('img_path'):
        raise ImageNotFoundError(f'dump of image {meta.get("img_id")} records no img_path; the page embeds '
                                 f'the images, so it needs them')
    path = image_file(meta, img_root)
    if not os.path.isfile(path):
        where = f'in img_root {img_root!r} (--img-root)' if img_root else \
            'at the dumped img_path; point img_root= (--img-root) to the folder holding the images'
        raise ImageNotFoundError(f'image file {path!r} of dumped image {meta.get("img_id")} is not there: '
                                 f'looked {where}')
    with Image.open(path) as im:
        size = im.size
        if im.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8):   # rotated by 90 degrees when shown,
            size = size[::-1]                                        # by mmcv's reader and by browsers
    ori = meta.get('ori_shape')
    if ori and (size[1], size[0]) != (int(ori[0]), int(ori[1])):
        raise ValueError(f'image file {path!r} is {size[1]}x{size[0]} (h x w) but the dump was made on a '
                         f'{int(ori[0])}x{int(ori[1])} image: not the same picture (check img_root / --img-root)')
    return path


def _image_data_uri(path: str) -> str:
    with Image.open(path) as im:
        mime = Image.MIME.get(im.format, 'application/octet-stream')
    return f'data:{mime};base64,' + base64.b64encode(Path(path).read_bytes()).decode()


# ---------------------------------------------------------------------- per layer
def _xy(y, x) -> np.ndarray:
    """(..., 2) as (x, y): the page's order."""
    return np.stack([np.asarray(x), np.asarray(y)], axis=-1)


def layer_view(layer: LayerOffsets, below: Sequence[LayerOffsets], points_per_side: int = POINTS_PER_SIDE,
               arrows_per_side: int = ARROWS_PER_SIDE, div_threshold: float = 0.0) -> dict:
    """Everything the page draws for one layer of one image, in original-image pixels (x, y).

    ``below``: the deformable layers feeding ``layer``, nearest first (``feeding_layers``); the
    locations' sampling points are composed through them. Deform groups: fields are averaged over
    groups as the figures do; sampling positions and taps are those of group 0.
    """
    geom = layer.geometry
    ys, xs = layer.cell_centres_image
    spacing_of = lambda step: step * min(geom.cell_size_on_image)   # noqa: E731

    # d_f arrows and the negative-divergence mask (Fig. 2)
    rows, cols, step = subsample_grid(layer.grid_shape, arrows_per_side)
    d_f = layer.d_f_image.mean(0)[:, rows][:, :, cols]                   # (2, h', w') dy, dx
    df_scale, df_key = fit_arrow_scale(np.hypot(d_f[0], d_f[1]).ravel(), spacing_of(step))
    negative = layer.divergence.mean(0) < div_threshold
    painted = geom.to_image_resolution(negative, fill=False)

    # d_k extent circles (Fig. 3)
    radius = layer.radius_image.mean(0)
    rigid = layer.rigid_radius_image
    ratio = radius / rigid if rigid > 0 else np.ones_like(radius)

    # per-tap offset fields (Fig. 1's arrows, on the image)
    t_rows, t_cols, t_step = subsample_grid(layer.grid_shape, TAP_ARROWS_PER_SIDE)
    taps = layer.fields.mean(0)[:, :, t_rows][:, :, :, t_cols]           # (K*K, 2, h', w') input px
    tap_dy, tap_dx = geom.vectors_to_image(taps[:, 0], taps[:, 1])
    tap_scale, tap_key = fit_arrow_scale(np.hypot(tap_dy, tap_dx).ravel(), spacing_of(t_step))

    # pickable locations: rigid taps and the sampling points through the stack
    p_rows, p_cols, _ = subsample_grid(layer.grid_shape, points_per_side)
    cells = [(int(r), int(c)) for r in p_rows for c in p_cols]
    grid = rigid_grid(layer.kernel_size, layer.dilation).double().numpy()   # (K*K, 2) input px
    rigid_taps, levels = [], [[] for _ in range(len(below) + 1)]
    for r, c in cells:
        cy, cx = geom.grid_to_input(r, c)
        rigid_taps.append(_xy(*geom.input_to_image(grid[:, 0] + cy, grid[:, 1] + cx)))
        for depth, points in enumerate(stacked_sampling_positions(layer, below, r, c, group=0)):
            levels[depth].append(points[:, ::-1])
    p_ys, p_xs = geom.grid_to_image(np.array([r for r, _ in cells]), np.array([c for _, c in cells]))

    return {
        'arrows': {'xy': quantised(_xy(ys[rows][:, cols], xs[rows][:, cols]).reshape(-1, 2)),
                   'uv': quantised(_xy(d_f[0], d_f[1]).reshape(-1, 2)), 'scale': df_scale, 'key': df_key},
        'negative': {'png': _png_data_uri(painted, [(0, 0, 0), (217, 0, 0)]), 'cells': int(negative.sum()),
                     'total': int(negative.size), 'threshold': div_threshold},
        'circles': {'ratio': quantised(ratio[rows][:, cols].ravel()), 'rigid_radius': rigid,   # at arrows.xy
                    'base': RIGID_FRACTION * spacing_of(step)},
        'taps': {'xy': quantised(_xy(ys[t_rows][:, t_cols], xs[t_rows][:, t_cols]).reshape(-1, 2)),
                 'uv': quantised(_xy(tap_dy, tap_dx).reshape(len(taps), -1, 2)), 'scale': tap_scale,
                 'key': tap_key},
        'picks': {'cells': cells, 'xy': quantised(_xy(p_ys, p_xs)), 'rigid': quantised(np.stack(rigid_taps)),
                  'levels': [quantised(np.stack(points)) for points in levels],
                  'through': [lower.name for lower in below]},
        'numbers': layer_numbers(layer, negative),
    }


def layer_numbers(layer: LayerOffsets, negative: np.ndarray) -> Dict[str, float]:
    """The per-image numbers of the image list: means over the layer's locations."""
    rigid = layer.rigid_radius_image
    return {'df': float(np.hypot(*layer.d_f_image.mean(0)).mean()),
            'negative': float(negative.mean()),
            'dilation': float(layer.effective_dilation.mean()),
            'radius': float((layer.radius_image / rigid).mean()) if rigid > 0 else 1.0}


# ---------------------------------------------------------------------- per image
OBJECT_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
                  (140, 86, 75), (227, 119, 194), (188, 189, 34), (23, 190, 207)]


def objects_view(ground_truth: CocoGroundTruth, meta: dict, thresholds) -> dict:
    """Boxes with their size class, and the pixels each object owns as the analysis assigns them
    (mask, or box without one; overlaps to the smallest; crowd and off-mask box pixels: ignored)."""
    objects = ground_truth.objects(meta['img_id'], masks=True)
    h, w = objects.height, objects.width
    yy, xx = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing='ij')
    owner = objects.assign(yy, xx, use_masks=True)
    indices = np.where(owner >= 0, 2 + owner % len(OBJECT_COLOURS), 0)   # 0: background, transparent
    indices[owner == IGNORED] = 1
    classes = size_class(objects.sqrt_areas, thresholds)
    return {'boxes': objects.boxes.tolist(), 'sqrt_area': objects.sqrt_areas.tolist(),
            'size': [SIZE_CLASSES[k] for k in classes],
            'colours': [OBJECT_COLOURS[i % len(OBJECT_COLOURS)] for i in range(objects.num_objects)],
            'png': _png_data_uri(indices, [(0, 0, 0), (128, 128, 128)] + OBJECT_COLOURS)}


def image_view(dump, names: Sequence[str], img_root: Optional[str], levels: int, points_per_side: int,
               arrows_per_side: int, div_threshold: float, source: str,
               ground_truth: Optional[CocoGroundTruth], thresholds, attention: Sequence[str] = (),
               detections: int = DETECTIONS) -> dict:
    """The data block of one image (see the module docstring); ``attention``: attention layer names."""
    missing = [n for n in names if n not in dump.layers]
    if missing:
        raise LayerNotFoundError(f'{dump.path} lacks layer(s) {", ".join(missing)} that the first dump has; '
                                 f'were the dumps made by different models?')
    view = {'id': dump.img_id, 'file': os.path.basename(dump.meta.get('img_path') or ''),
            'height': int(dump.meta['ori_shape'][0]), 'width': int(dump.meta['ori_shape'][1]),
            'image': _image_data_uri(image_path(dump.meta, img_root)), 'layers': {}}
    if ground_truth is not None:
        ground_truth.check_images([dump.meta])
        view['objects'] = objects_view(ground_truth, dump.meta, thresholds)
    for name in names:
        layer = LayerOffsets.from_dump(dump, name, source)
        below = feeding_layers(dump, name, levels - 1, source)
        view['layers'][name] = layer_view(layer, below, points_per_side, arrows_per_side, div_threshold)
    if attention:
        view['attention'] = attention_view(dump, attention, detections, quantised)
    return view


# ---------------------------------------------------------------------- the page
def _json(value) -> str:
    """JSON safe inside a <script> element."""
    return json.dumps(value, allow_nan=False, separators=(',', ':')).replace('</', '<\\/')


def markdown_to_html(text: str) -> str:
    """The subset :func:`~deform_viz.analysis.format_markdown` writes: ``##`` headings, pipe tables
    and paragraphs."""
    out, table = [], []

    def flush_table():
        if table:
            head, body = table[0], table[2:]
            cells = lambda row, tag: ''.join(f'<{tag}>{html.escape(c.strip())}</{tag}>'   # noqa: E731
                                             for c in row.strip().strip('|').split('|'))
            out.append('<table><thead><tr>' + cells(head, 'th') + '</tr></thead><tbody>'
                       + ''.join('<tr>' + cells(row, 'td') + '</tr>' for row in body) + '</tbody></table>')
            table.clear()

    for line in text.splitlines():
        if line.startswith('|'):
            table.append(line)
            continue
        flush_table()
        if line.startswith('## '):
            out.append(f'<h3>{html.escape(line[3:])}</h3>')
        elif line.strip():
            out.append(f'<p>{html.escape(line)}</p>')
    flush_table()
    return '\n'.join(out)


def analysis_view(dump: str, ann_file: str, names: Sequence[str], max_images: Optional[int],
                  settings: AnalysisSettings, source: str) -> dict:
    """The analysis report of the page's images as HTML tables, with its figures as data URIs."""
    with tempfile.TemporaryDirectory(prefix='deform-viz-browser-') as figure_dir:
        report = analyze_offsets(dump, ann_file, layers=list(names), settings=settings, source=source,
                                 max_images=max_images, figure_dir=figure_dir)
        figures = ['data:image/png;base64,' + base64.b64encode(Path(p).read_bytes()).decode()
                   for p in report.get('figures', [])]
    report.pop('figures', None)
    return {'html': markdown_to_html(format_markdown(report)), 'figures': figures}


def _template() -> str:
    text = resources.files(__package__).joinpath(TEMPLATE).read_text(encoding='utf-8')
    if text.count(DATA_MARKER) != 1:
        raise RuntimeError(f'{TEMPLATE} must contain {DATA_MARKER!r} exactly once')
    return text


def _layer_entry(layer: LayerOffsets) -> dict:
    """What the layer selector and the caption show of a layer."""
    g = layer.geometry
    return {'name': layer.name, 'variant': layer.info.get('variant') or layer.info.get('type', ''),
            'input_stride': list(g.input_stride), 'output_stride': list(g.output_stride),
            'kernel_size': list(layer.kernel_size), 'component': layer.component, 'groups': layer.num_groups}


def _index_entry(view: dict) -> dict:
    """What the image list shows of an image (its block is parsed only when it is selected)."""
    objects = view.get('objects')
    return {'id': view['id'], 'file': view['file'], 'width': view['width'], 'height': view['height'],
            'objects': None if objects is None else len(objects['boxes']),
            'detections': view['attention']['detections']['count'] if 'attention' in view else None,
            'numbers': {name: layer['numbers'] for name, layer in view['layers'].items()}}


def write_offset_browser(dump, out, ann_file: Optional[str] = None, img_root: Optional[str] = None,
                         max_images: Optional[int] = 20, layers=None, levels: int = LEVELS,
                         points_per_side: int = POINTS_PER_SIDE, arrows_per_side: int = ARROWS_PER_SIDE,
                         div_threshold: float = 0.0, source: str = 'used',
                         settings: Optional[AnalysisSettings] = None, attention_layers=None,
                         detections: int = DETECTIONS, progress: bool = False) -> BrowserPage:
    """Write the browser page of the dumps at ``dump`` (a directory or one ``.npz``) to ``out``.

    Args:
        ann_file: COCO annotations of the dumped images: boxes and masks on the page, and the
            analysis tables and figures of :func:`~deform_viz.analysis.analyze_offsets`.
        img_root: folder holding the images when they are not at the dumped ``img_path``.
        max_images: the first N dumps in image-id order (None: all).
        layers: conv layer patterns (:func:`~deform_viz.dump.match_layer_names`); None: every
            layer with data offsets (none for a dump that has only attention layers).
        levels: the page offers sampling points composed through 1..``levels`` stacked layers;
            each level multiplies a location's points by K*K.
        points_per_side / arrows_per_side: pickable locations / d_f arrows and circles, at most
            this many per side of each layer's grid.
        div_threshold: the negative-divergence mask is where div(d_f) < this.
        source: 'used' or 'predicted' offsets of d_f-/d_k-only layers.
        settings: of the analysis (its ``div_threshold`` is replaced by ``div_threshold``).
        attention_layers: attention layer patterns; None: every attention layer of the dump.
        detections: per image, the decoder queries of this many best detections (those linked
            to a query) are embedded.

    Bad input fails before any work (no dumps, a layer, annotation or image problem of the first
    dump); later images are checked as they come. Nothing is written unless the whole page is.
    """
    checks = {'levels': levels, 'points_per_side': points_per_side, 'arrows_per_side': arrows_per_side,
              'max_images': 1 if max_images is None else max_images, 'detections': detections}
    for name, value in checks.items():
        if value < 1:
            raise ValueError(f'{name} must be at least 1, got {value}')
    if levels > MAX_LEVELS:
        raise ValueError(f'levels must be at most {MAX_LEVELS}, got {levels}: a location has (K*K)^levels points')
    files = dump_files(dump, max_images=max_images)
    out = Path(out)
    if not out.parent.is_dir():
        raise FileNotFoundError(f'the folder of the page, {str(out.parent)!r}, does not exist')
    settings = replace(settings or AnalysisSettings(), div_threshold=div_threshold)
    ground_truth = CocoGroundTruth(ann_file) if ann_file else None
    first = load_offset_dump(files[0])
    attention = attention_names(first, attention_layers)
    if first.layers or layers is not None or not attention:
        chosen = layer_offsets(first, layers, source=source, skip_without_offsets=layers is None)
    else:
        chosen = []
    names = [layer.name for layer in chosen]
    if ground_truth is not None:
        ground_truth.check_images([first.meta])
    image_path(first.meta, img_root)
    head, tail = _template().split(DATA_MARKER)
    written = BrowserPage(out, 0, [], [], [])

    def write(f):
        f.write(head)
        index = []
        if progress:
            from tqdm import tqdm
            paths = tqdm(files, desc='page', unit='image', file=sys.stderr)
        else:
            paths = files
        for i, path in enumerate(paths):
            view = image_view(first if i == 0 else load_offset_dump(path), names, img_root, levels, points_per_side,
                              arrows_per_side, div_threshold, source, ground_truth, settings.size_thresholds,
                              attention, detections)
            block = _json(view)
            f.write(f'<script type="application/json" class="image-data" id="image-{i}">{block}</script>\n')
            written.image_ids.append(view['id'])
            written.image_bytes.append(len(view['image']))
            written.data_bytes.append(len(block) - len(view['image']))
            index.append(_index_entry(view))
        page = {'dump': os.path.abspath(dump), 'annotations': ann_file and os.path.abspath(ann_file),
                'layers': [_layer_entry(layer) for layer in chosen], 'images': index, 'levels': levels,
                'attention': [attention_entry(first, name) for name in attention]}
        if ground_truth is not None and names:
            page['analysis'] = analysis_view(dump, ann_file, names, max_images, settings, source)
        f.write(f'<script type="application/json" id="page-data">{_json(page)}</script>\n')
        f.write(tail)

    written.size = write_atomically(out, write, text=True)
    return written
