"""Figures of deformable attention (mmcv's ``MultiScaleDeformableAttention``) from offset dumps.

* :func:`plot_detection_attention`: Deformable DETR's Fig. 6 for the top-N detections of one image.
  Per detection, the sampling points of the decoder query that produced it, coloured by feature
  level, marker area proportional to the attention weight, with the reference point (and the
  reference box of 4-d references) and the detection box. One column per chosen decoder layer
  (default: the last), so layers side by side show how refinement moves the points.
* :func:`plot_pixel_attention`: for chosen pixels, the sampling points of the stored encoder query
  whose reference point (its feature-map cell centre) is nearest to the pixel.

The geometry is :mod:`.attention_points`'s, shared with the browser page. Figures are drawn in
original-image pixels on the image file, without pyplot, as those of :mod:`.figures`.
"""
import math
import sys
from typing import List, Optional, Sequence, Tuple

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from ..analysis.fields import dump_files
from ..dump import load_offset_dump
from .attention_points import (AttentionInputError, QueryPoints, attention_layer_names, check_pixel,
                               detection_points, level_colours, linked_detections, pixel_points, to_display,
                               weight_areas)
from .figures import DEFAULT_DPI, PAPER_WIDTH, STYLE, new_figure, panel_grid
from .image import load_image

__all__ = ['draw_query_points', 'plot_detection_attention', 'plot_pixel_attention', 'write_attention_figures']

PANELS_PER_ROW = 3


# ---------------------------------------------------------------------- drawing
def _background(ax, meta: dict, image: Optional[np.ndarray]) -> None:
    h, w = (int(v) for v in meta['ori_shape'])
    if image is None:
        image = np.full((h, w, 3), 235, dtype=np.uint8)
    elif tuple(image.shape[:2]) != (h, w):
        raise ValueError(f'image is {image.shape[0]}x{image.shape[1]} but dumped image {meta.get("img_id")} was '
                         f'{h}x{w} (h x w); pass the original image (load_image) or None for a blank canvas')
    ax.imshow(image, extent=(0, w, h, 0), interpolation='bilinear' if h > 300 else 'nearest')
    ax.set_xticks([])
    ax.set_yticks([])


def _limits(ax, meta: dict, xy: np.ndarray, zoom: bool) -> None:
    """The whole image, widened to every point; with ``zoom`` the points' bounding square only."""
    h, w = (float(v) for v in meta['ori_shape'])
    if zoom:
        lo, hi = xy.min(0), xy.max(0)
        half = max(float((hi - lo).max()) * 0.55, 0.04 * max(h, w))
        cx, cy = (lo + hi) / 2
        ax.set_xlim(cx - half, cx + half)
        ax.set_ylim(cy + half, cy - half)
        return
    margin = 0.02 * max(h, w)
    ax.set_xlim(min(0.0, float(xy[:, 0].min()) - margin), max(w, float(xy[:, 0].max()) + margin))
    ax.set_ylim(max(h, float(xy[:, 1].max()) + margin), min(0.0, float(xy[:, 1].min()) - margin))


def draw_query_points(ax, points: QueryPoints, heads=None, levels=None) -> np.ndarray:
    """Draw one query's points (gid 'sampling-points', (head, level, point) order), its reference
    point (gid 'reference') and reference box (gid 'reference-box'); returns the drawn (K, 2) xy."""
    xy, weights, level, _ = points.selected(heads, levels)
    _, num_levels, num_points = points.shape
    colours = np.array(level_colours(num_levels))[level]
    scatter = ax.scatter(xy[:, 0], xy[:, 1], s=weight_areas(weights, num_levels, num_points), c=list(colours),
                         edgecolors='black', linewidths=0.3, alpha=0.85, zorder=3)
    scatter.set_gid('sampling-points')
    if points.reference_box is not None:
        x0, y0, x1, y1 = points.reference_box
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ls='--', lw=0.9, ec='#00e5ff',
                               zorder=2.5, gid='reference-box'))
    ref = ax.scatter([points.reference[0]], [points.reference[1]], marker='*', s=90, c='white',
                     edgecolors='black', linewidths=0.6, zorder=4)
    ref.set_gid('reference')
    return xy


def _layout(rows: int, columns: int, width: float, dpi: float) -> Figure:
    return new_figure(width, min(width / columns * rows + 1.1, 11.0), dpi)


def _key(fig, num_levels: int, strides, extra: Sequence) -> None:
    handles = [Line2D([], [], marker='o', ls='', color=c, mec='black', mew=0.3,
                      label=f'level {k} (stride {strides[k][1]:.3g})' if strides else f'level {k}')
               for k, c in enumerate(level_colours(num_levels))]
    handles += list(extra)
    try:
        fig.legend(handles=handles, loc='outside lower center', ncols=min(len(handles), 4), frameon=False)
    except (TypeError, ValueError):  # matplotlib < 3.7
        fig.legend(handles=handles, loc='lower center', ncol=min(len(handles), 4), frameon=False)


def _layer_label(name: str) -> str:
    parts = name.split('.')
    return f'{parts[0]} {parts[2]}' if len(parts) > 2 and parts[1] == 'layers' and parts[2].isdigit() else name


@matplotlib.rc_context(STYLE)
def plot_detection_attention(dump, image: Optional[np.ndarray] = None, detections=3, layers=None,
                             heads: Optional[Sequence[int]] = None, levels: Optional[Sequence[int]] = None,
                             zoom: bool = True, width: float = PAPER_WIDTH, dpi: float = DEFAULT_DPI) -> Figure:
    """Deformable DETR Fig. 6: the decoder query's sampling points for each of the top detections.

    ``detections``: how many of the best-scoring detections linked to a query (int), or indices
    into ``dump.detections`` (a sequence; an unlinked or missing one is an error). ``layers``:
    decoder layer patterns (default: the last decoder layer); several layers go side by side, one
    column each, a row per detection (a single layer puts up to three detections in a row).
    ``heads`` / ``levels`` keep only those (default all). ``zoom`` fits each panel to its box and
    points; otherwise the whole image is shown.
    Axes are in (detection, layer) order, each with gid ``'<detection>:<layer>'``.
    """
    names = attention_layer_names(dump, 'decoder', layers)
    if layers is None:
        names = names[-1:]
    if np.isscalar(detections):
        if int(detections) < 1:
            raise AttentionInputError(f'detections must be at least 1, got {detections}')
        chosen = linked_detections(dump, int(detections))
    else:
        chosen = [int(d) for d in detections]
        if not chosen:
            raise AttentionInputError('no detections chosen (an empty list)')
    panels = [(d, name) for d in chosen for name in names]
    columns = min(len(chosen), PANELS_PER_ROW) if len(names) == 1 else len(names)
    fig = _layout(math.ceil(len(panels) / columns), columns, width, dpi)
    axes = panel_grid(fig, len(panels), columns)
    for ax, (d, name) in zip(axes, panels):
        points = detection_points(dump, name, d)
        _background(ax, dump.meta, image)
        xy = draw_query_points(ax, points, heads, levels)
        x0, y0, x1, y1 = points.box
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=1.4, ec='#ffeb3b', zorder=2,
                               gid='detection-box'))
        extent = [xy, points.reference[None], points.box.reshape(2, 2)]
        if points.reference_box is not None:
            extent.append(points.reference_box.reshape(2, 2))
        _limits(ax, dump.meta, np.concatenate(extent), zoom)
        ax.set_gid(f'{d}:{name}')
        ax.set_title(f'det {d} · label {points.label} · {points.score:.2f} · query {points.query}\n'
                     f'{_layer_label(name)}', fontsize=7)
    first = dump.attention[names[0]].info
    extra = [Line2D([], [], marker='*', ls='', color='white', mec='black', ms=8, label='reference point'),
             Line2D([], [], color='#ffeb3b', lw=1.4, label='detection box')]
    if first['reference_dim'] == 4:
        extra.append(Line2D([], [], color='#00e5ff', ls='--', lw=0.9, label='reference box'))
    extra.append(Line2D([], [], color='none', label='area ∝ attention weight'))
    _key(fig, int(first['num_levels']), first['level_strides'], extra)
    fig.suptitle(f'Decoder sampling points of {len(chosen)} detection(s) · image {dump.img_id} · '
                 f'{_selection(heads, levels)}')
    return fig


def _selection(heads, levels) -> str:
    h = 'all heads' if heads is None else 'heads ' + ','.join(str(int(v)) for v in heads)
    lv = 'all levels' if levels is None else 'levels ' + ','.join(str(int(v)) for v in levels)
    return f'{h}, {lv}'


@matplotlib.rc_context(STYLE)
def plot_pixel_attention(dump, pixels: Sequence[Tuple[float, float]], image: Optional[np.ndarray] = None,
                         layers=None, heads: Optional[Sequence[int]] = None, levels: Optional[Sequence[int]] = None,
                         query_level: Optional[int] = None, zoom: bool = False, width: float = PAPER_WIDTH,
                         dpi: float = DEFAULT_DPI) -> Figure:
    """The encoder's sampling points at chosen pixels: for each pixel (x, y, original-image pixels)
    the stored encoder query nearest to it (by reference point; ``query_level`` restricts it to one
    feature level), one column per encoder layer (default: the last), a row per pixel. The pixel is
    a cross (gid 'pixel'), the stored queries of the chosen one's level small grey dots (gid 'lattice').
    Axes are in (pixel, layer) order, each with gid ``'<pixel index>:<layer>'``.
    """
    names = attention_layer_names(dump, 'encoder', layers)
    if layers is None:
        names = names[-1:]
    pixels = [check_pixel(dump, p) for p in pixels]
    if not pixels:
        raise AttentionInputError('no pixels chosen')
    panels = [(k, name) for k in range(len(pixels)) for name in names]
    columns = min(len(pixels), PANELS_PER_ROW) if len(names) == 1 else len(names)
    fig = _layout(math.ceil(len(panels) / columns), columns, width, dpi)
    axes = panel_grid(fig, len(panels), columns)
    for ax, (k, name) in zip(axes, panels):
        points = pixel_points(dump, name, pixels[k], query_level)
        _background(ax, dump.meta, image)
        fields = dump.attention[name]
        same = fields.encoder_cells()[:, 0] == points.cell[0]
        lattice = to_display(dump.meta, fields.reference_point[same])
        ax.scatter(lattice[:, 0], lattice[:, 1], s=2, c='#9e9e9e', linewidths=0, zorder=2, gid='lattice')
        xy = draw_query_points(ax, points, heads, levels)
        ax.scatter([pixels[k][0]], [pixels[k][1]], marker='x', s=40, c='black', linewidths=1.2, zorder=5,
                   gid='pixel')
        _limits(ax, dump.meta, np.concatenate([xy, points.reference[None], np.array([pixels[k]])]), zoom)
        ax.set_gid(f'{k}:{name}')
        level, r, c = points.cell
        ax.set_title(f'({pixels[k][0]:g}, {pixels[k][1]:g}) → query {points.query}: level {level} cell ({r}, {c})'
                     f'\n{_layer_label(name)}', fontsize=7)
    first = dump.attention[names[0]].info
    extra = [Line2D([], [], marker='x', ls='', color='black', label='chosen pixel'),
             Line2D([], [], marker='*', ls='', color='white', mec='black', ms=8, label="query's cell centre"),
             Line2D([], [], marker='o', ls='', color='#9e9e9e', ms=2, label='stored queries of its level'),
             Line2D([], [], color='none', label='area ∝ attention weight')]
    _key(fig, int(first['num_levels']), first['level_strides'], extra)
    fig.suptitle(f'Encoder sampling points at {len(pixels)} pixel(s) · image {dump.img_id} · '
                 f'{_selection(heads, levels)} · stride {first["query_stride"]} lattice')
    return fig


# ---------------------------------------------------------------------- files
def write_attention_figures(dump, out_dir: str, detections: int = 3, decoder_layers=None,
                            pixels: Optional[Sequence[Tuple[float, float]]] = None, encoder_layers=None,
                            heads=None, levels=None, query_level: Optional[int] = None, zoom: bool = True,
                            fmt: str = 'png', image_ids=None, max_images: Optional[int] = None,
                            img_root: Optional[str] = None, blank: bool = False, width: float = PAPER_WIDTH,
                            dpi: float = DEFAULT_DPI, progress: bool = False) -> List[str]:
    """Draw the attention figures of the dumps at ``dump`` (a directory or one ``.npz``) into
    ``out_dir/<image id>/attention.detections.<fmt>`` (``detections`` > 0) and
    ``attention.pixels.<fmt>`` (with ``pixels``); returns the paths. The other arguments are those of
    :func:`plot_detection_attention` and :func:`plot_pixel_attention`."""
    from .render import FORMATS, figure_path, save_figure
    if fmt not in FORMATS:
        raise ValueError(f'unsupported figure format {fmt!r}; choose from {FORMATS}')
    if detections < 0:
        raise ValueError(f'detections must be 0 or more, got {detections}')
    if not detections and not pixels:
        raise AttentionInputError('nothing to draw: ask for detections (> 0) or pixels')
    files = dump_files(dump, image_ids=image_ids, max_images=max_images)
    if progress:
        from tqdm import tqdm
        files = tqdm(files, desc='figures', unit='image', file=sys.stderr)
    written = []
    for path in files:
        loaded = load_offset_dump(path)
        image = load_image(loaded.meta, img_root=img_root, blank=blank)
        figures = []
        if detections:
            figures.append(('detections', plot_detection_attention(
                loaded, image, detections, decoder_layers, heads, levels, zoom, width, dpi)))
        if pixels:
            figures.append(('pixels', plot_pixel_attention(
                loaded, pixels, image, encoder_layers, heads, levels, query_level, False, width, dpi)))
        for kind, fig in figures:
            written.append(save_figure(fig, figure_path(out_dir, loaded.img_id, 'attention', kind, fmt), fmt))
    return written
