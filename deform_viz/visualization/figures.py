"""Offset-field figures: the "revisiting" paper's Fig. 1-3 and DCN-style sampling locations.

Every function takes a :class:`deform_viz.analysis.LayerOffsets` (one layer of one dump) and
returns a matplotlib ``Figure`` built without pyplot, so it works headless, in scripts and in
notebooks (a returned Figure displays inline). Figures 2, 3 and the sampling plot are drawn in
original-image coordinates on top of the image file (see :func:`.image.load_image`), or on a
blank canvas when ``image`` is None; they also accept an ``ax`` to draw into an existing figure.

The default width (6.5 in) is a paper's text width and fonts are 7-9 pt, so a figure stays
legible when printed at that size. Nothing is random: the same dump gives the same pixels.
"""
import math
from typing import Optional, Sequence, Tuple

import matplotlib
import numpy as np
from matplotlib import colors
from matplotlib.cm import ScalarMappable
from matplotlib.collections import PatchCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Circle, Patch

from ..analysis.fields import LayerOffsets, stacked_sampling_positions
from ..ops.offset_fields import rigid_grid

PAPER_WIDTH = 6.5   # inches
DEFAULT_DPI = 150
#: Fig. 3: a rigid kernel's circle has this fraction of the circle spacing as its radius
RIGID_FRACTION = 0.3
STYLE = {
    'font.size': 8, 'axes.titlesize': 8, 'axes.labelsize': 8, 'xtick.labelsize': 7,
    'ytick.labelsize': 7, 'legend.fontsize': 7, 'figure.titlesize': 9,
    'image.interpolation': 'nearest', 'savefig.facecolor': 'white', 'figure.facecolor': 'white',
}
BLANK_GREY = 235
NEGATIVE_DIV_RGB = (0.85, 0.0, 0.0)


# ---------------------------------------------------------------------- small helpers
def new_figure(width: float, height: float, dpi: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=dpi)
    if hasattr(fig, 'set_layout_engine'):
        fig.set_layout_engine('constrained')
    else:  # matplotlib < 3.6
        fig.set_constrained_layout(True)
    return fig


def panel_grid(fig: Figure, count: int, columns: int) -> list:
    """``count`` axes on a grid of ``columns`` columns (row-major); the grid's unused cells are hidden."""
    axes = fig.subplots(math.ceil(count / columns), columns, squeeze=False).ravel()
    for ax in axes[count:]:
        ax.set_visible(False)
    return list(axes[:count])


def _reserve_bottom(fig: Figure, fraction: float) -> None:
    """Keep the bottom ``fraction`` of the figure free of axes (for keys placed in figure coords)."""
    engine = fig.get_layout_engine() if hasattr(fig, 'get_layout_engine') else None
    if engine is not None and hasattr(engine, 'set'):
        engine.set(rect=(0, fraction, 1, 1 - fraction))
    else:  # matplotlib < 3.6: give up constrained layout for a fixed margin
        fig.set_constrained_layout(False)
        fig.subplots_adjust(bottom=fraction + 0.06, top=0.86)


def _fmt_stride(s: Tuple[float, float]) -> str:
    return f'{s[0]:g}' if s[0] == s[1] else f'{s[0]:g}x{s[1]:g}'


def layer_caption(layer: LayerOffsets, group: Optional[int] = None) -> str:
    """'image 42 · backbone.layer3.0.conv2 (dcn) · stride 8→16' (+ the deform group shown)."""
    g = layer.geometry
    variant = layer.info.get('variant') or layer.info.get('type', '')
    text = (f'image {layer.image_id} · {layer.name} ({variant}) · '
            f'stride {_fmt_stride(g.input_stride)}→{_fmt_stride(g.output_stride)}')
    if layer.num_groups > 1:
        text += f' · {"mean of %d groups" % layer.num_groups if group is None else "group %d" % group}'
    if layer.component == 'offset_used':
        text += ' · offsets used'
    return text


def _by_group(array: np.ndarray, group: Optional[int], num_groups: int) -> np.ndarray:
    if group is None:
        return array.mean(0)
    if not 0 <= group < num_groups:
        raise ValueError(f'group {group} does not exist; the layer has {num_groups} deform group(s)')
    return array[group]


def subsample_grid(shape, max_per_side: int):
    """Regularly spaced (rows, cols) index vectors with at most ``max_per_side`` per axis."""
    h, w = shape
    step = max(1, math.ceil(max(h, w) / max(1, max_per_side)))
    return np.arange(step // 2, h, step), np.arange(step // 2, w, step), step


def _nice(value: float) -> float:
    """A round number (1, 2, 5 x 10^k) close to ``value``."""
    if value <= 0 or not np.isfinite(value):
        return 1.0
    exp = math.floor(math.log10(value))
    base = value / 10 ** exp
    return (1 if base < 1.5 else 2 if base < 3.5 else 5 if base < 7.5 else 10) * 10 ** exp


def fit_arrow_scale(lengths: np.ndarray, spacing: float) -> Tuple[float, float]:
    """quiver ``scale`` (vector units per data unit) so the 95th percentile arrow spans ~0.9
    of the arrow spacing, and a round reference length for the key."""
    nonzero = lengths[lengths > 0]
    ref = float(np.percentile(nonzero, 95)) if nonzero.size else 0.0
    if ref == 0:
        return 1.0, 1.0
    return ref / (0.9 * spacing), _nice(ref)


def _draw_image(ax, layer: LayerOffsets, image: Optional[np.ndarray]):
    h, w = layer.geometry.ori_shape
    if image is None:
        image = np.full((h, w, 3), BLANK_GREY, dtype=np.uint8)
    elif tuple(image.shape[:2]) != (h, w):
        raise ValueError(f'image is {image.shape[0]}x{image.shape[1]} but dumped image {layer.image_id} was '
                         f'{h}x{w} (h x w); pass the original image (load_image) or None for a blank canvas')
    ax.imshow(image, extent=(0, w, h, 0), interpolation='bilinear' if image.shape[0] > 300 else 'nearest')
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_xlabel('x (image px)')
    ax.set_ylabel('y (image px)')


def _image_axes(layer, ax, width, dpi, extra_height=1.0):
    if ax is not None:
        return ax.figure, ax
    h, w = layer.geometry.ori_shape
    fig = new_figure(width, min(max(width * 0.8 * h / w + extra_height, 2.5), 10.0), dpi)
    return fig, fig.add_subplot()


def _legend(fig, ax, handles, own_figure: bool) -> None:
    """Legend below the image when the figure is ours (so it hides nothing), else inside the axes."""
    try:
        if own_figure:
            fig.legend(handles=handles, loc='outside lower center', ncols=2, frameon=False)
            return
    except (TypeError, ValueError):  # matplotlib < 3.7 has no 'outside' placement
        pass
    ax.legend(handles=handles, loc='lower left', framealpha=0.85)


def _set_title(fig, ax, what: str, layer: LayerOffsets, group, own_figure: bool):
    caption = layer_caption(layer, group)
    if own_figure:
        fig.suptitle(f'{what}\n{caption}')
    else:
        ax.set_title(f'{what}\n{caption}')


# ---------------------------------------------------------------------- Fig. 1
@matplotlib.rc_context(STYLE)
def plot_kernel_point_fields(layer: LayerOffsets, group: Optional[int] = None, max_per_side: int = 12,
                             image: Optional[np.ndarray] = None, width: float = PAPER_WIDTH,
                             dpi: float = DEFAULT_DPI, cmap: str = 'viridis') -> Figure:
    """Fig. 1: one panel per kernel point (tap) with its offset field on the feature grid.

    Small arrows: the tap's offset at regularly subsampled locations (at most ``max_per_side``
    per side), coloured by length; thick arrow at the panel centre: the tap's mean offset over
    all locations (all thick arrows share one scale, so taps compare). Axes are output-grid
    cells, in the frame the network saw (mirrored if the dumped image was flipped); arrows are
    drawn in that frame (offset / conv stride) and labelled in input-map pixels. ``image``
    (original coordinates, e.g. from :func:`load_image`) is shown faintly underneath when given.
    """
    kh, kw = layer.kernel_size
    h, w = layer.grid_shape
    taps = _by_group(layer.fields, group, layer.num_groups)           # (K*K, 2, H, W), input px
    cy, cx = layer.geometry.conv_stride
    rows, cols, step = subsample_grid((h, w), max_per_side)
    sub = taps[:, :, rows][:, :, :, cols]                               # (K*K, 2, h', w')
    u, v = sub[:, 1] / cx, sub[:, 0] / cy                               # grid units
    lengths_in = np.hypot(sub[:, 0], sub[:, 1])
    scale, _ = fit_arrow_scale(np.hypot(u, v).ravel(), step)
    moving = lengths_in[lengths_in > 0]
    key = _nice(float(np.percentile(moving, 95)) if moving.size else 1.0)   # input px
    norm = colors.Normalize(0, max(float(lengths_in.max()), 1e-6))
    means = taps.mean(axis=(-2, -1))                                    # (K*K, 2) input px
    mean_len = np.hypot(means[:, 0] / cy, means[:, 1] / cx)
    mean_scale = (0.38 * min(h, w) / mean_len.max()) if mean_len.max() > 0 else 0.0

    panel = width / kw * 0.85
    fig = new_figure(width, min(panel * h / w * kh + 1.0, 11.0), dpi)
    axes = fig.subplots(kh, kw, sharex=True, sharey=True, squeeze=False)
    X, Y = np.meshgrid(cols, rows)
    extent = None
    if image is not None:
        ih, iw = layer.geometry.ori_shape
        (r0, r1), (c0, c1) = layer.geometry.image_to_grid_coords(np.array([0.0, ih]), np.array([0.0, iw]))
        extent = (c0, c1, r1, r0)
    for n in range(kh * kw):
        i, j = divmod(n, kw)
        ax = axes[i, j]
        if extent is not None:
            ax.imshow(image, extent=extent, alpha=0.45, interpolation='bilinear')
        q = ax.quiver(X, Y, u[n], v[n], lengths_in[n], cmap=cmap, norm=norm, angles='xy', scale_units='xy',
                      scale=scale, width=0.006, headwidth=4, headlength=4.5, pivot='tail')
        centre = np.array([(w - 1) / 2, (h - 1) / 2])
        tip = centre + mean_scale * np.array([means[n, 1] / cx, means[n, 0] / cy])
        if mean_scale > 0 and mean_len[n] > 0:
            ax.annotate('', xy=tip, xytext=centre, arrowprops=dict(
                arrowstyle='-|>,head_width=0.5,head_length=0.8', lw=3.2, color='#b2182b', shrinkA=0, shrinkB=0))
        ax.plot(*centre, 'o', color='#b2182b', ms=3)
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
        ax.set_aspect('equal')
        ki, kj = i - (kh - 1) / 2, j - (kw - 1) / 2
        ax.set_title(f'tap ({ki:+g}, {kj:+g})\nmean (dy, dx) = ({means[n, 0]:+.2f}, {means[n, 1]:+.2f})',
                     fontsize=7)
        if i == kh - 1:
            ax.set_xlabel('column')
        if j == 0:
            ax.set_ylabel('row')
    _reserve_bottom(fig, 0.28 / fig.get_size_inches()[1])
    axes[0, 0].quiverkey(q, 0.04, 0.1 / fig.get_size_inches()[1], key / cx,
                         f'small arrows: {key:g} input px', labelpos='E', coordinates='figure',
                         fontproperties={'size': 7})
    fig.colorbar(ScalarMappable(norm, cmap), ax=axes, shrink=0.85, label='|offset| (input px)')
    fig.suptitle(f'Fig. 1 · per-tap offset fields · thick arrows: mean over all locations, drawn '
                 f'{mean_scale * scale:.3g}× longer\n{layer_caption(layer, group)}')
    return fig


# ---------------------------------------------------------------------- Fig. 2
@matplotlib.rc_context(STYLE)
def plot_df_divergence(layer: LayerOffsets, image: Optional[np.ndarray] = None, ax=None,
                       group: Optional[int] = None, max_per_side: int = 32, div_threshold: float = 0.0,
                       arrow_scale: Optional[float] = None, mask_alpha: float = 0.4,
                       width: float = PAPER_WIDTH, dpi: float = DEFAULT_DPI, cmap: str = 'viridis') -> Figure:
    """Fig. 2: d_f arrows over the image and the negative-divergence region as a red mask.

    Arrows start at (subsampled) cell centres and show d_f mapped to original-image pixels
    (input stride, resize and flip undone); by default they are scaled so the 95th percentile
    arrow spans 0.9 of the arrow spacing (``arrow_scale`` = image px per drawn px fixes it
    instead; 1 draws true length), with a key giving the length in image px. Cells whose
    divergence (mean over deform groups unless ``group``) is below ``div_threshold`` are
    painted translucent red, cell by cell.
    """
    own = ax is None
    fig, ax = _image_axes(layer, ax, width, dpi)
    _draw_image(ax, layer, image)
    geom = layer.geometry
    div = _by_group(layer.divergence, group, layer.num_groups)
    negative = div < div_threshold
    painted = geom.to_image_resolution(negative, fill=False)
    overlay = np.zeros(painted.shape + (4,), dtype=np.float32)
    overlay[painted] = (*NEGATIVE_DIV_RGB, mask_alpha)
    ih, iw = geom.ori_shape
    ax.imshow(overlay, extent=(0, iw, ih, 0), interpolation='nearest')

    rows, cols, step = subsample_grid(layer.grid_shape, max_per_side)
    ys, xs = layer.cell_centres_image
    vec = _by_group(layer.d_f_image, group, layer.num_groups)[:, rows][:, :, cols]   # (2, h', w') image px
    lengths = np.hypot(vec[0], vec[1])
    spacing = step * min(geom.cell_size_on_image)
    if arrow_scale is None:
        scale, key = fit_arrow_scale(lengths.ravel(), spacing)
    else:
        scale, key = float(arrow_scale), _nice(float(np.percentile(lengths, 95)) if lengths.size else 1.0)
    norm = colors.Normalize(0, max(float(lengths.max()), 1e-6))
    q = ax.quiver(xs[rows][:, cols], ys[rows][:, cols], vec[1], vec[0], lengths, cmap=cmap, norm=norm,
                  angles='xy', scale_units='xy', scale=scale, width=0.0035, headwidth=3.5, headlength=4,
                  edgecolor='white', linewidth=0.3, pivot='tail')
    ax.quiverkey(q, 0.86, 1.015, key, f'{key:g} px', labelpos='E', coordinates='axes',
                 fontproperties={'size': 7})
    handles = [Patch(facecolor=(*NEGATIVE_DIV_RGB, mask_alpha), edgecolor='none',
                     label=f'div d_f < {div_threshold:g}: {int(negative.sum())} of {negative.size} cells '
                           f'(div from {float(div.min()):.2g} to {float(div.max()):.2g})'),
               Line2D([], [], color='none', label=f'{lengths.size} of {div.size} arrows shown')]
    _legend(fig, ax, handles, own)
    fig.colorbar(ScalarMappable(norm, cmap), ax=ax, shrink=0.8, label='|d_f| (image px)')
    _set_title(fig, ax, 'Fig. 2 · feature-map displacement d_f and its negative divergence', layer, group, own)
    return fig


# ---------------------------------------------------------------------- Fig. 3
@matplotlib.rc_context(STYLE)
def plot_dk_extent(layer: LayerOffsets, image: Optional[np.ndarray] = None, ax=None,
                   group: Optional[int] = None, max_per_side: int = 32, rigid_fraction: float = RIGID_FRACTION,
                   width: float = PAPER_WIDTH, dpi: float = DEFAULT_DPI, cmap: str = 'coolwarm') -> Figure:
    """Fig. 3: one circle per (subsampled) location, radius ∝ sqrt(width × height) of its kernel.

    The radius is the deformed kernel's extent relative to the rigid kernel of the layer; a
    rigid kernel is drawn with radius ``rigid_fraction`` of the circle spacing, so circles of
    different images, layers and epochs compare. Colour: the same ratio (blue: the kernel
    shrank, red: it expanded; 0 where it folded over).
    """
    own = ax is None
    fig, ax = _image_axes(layer, ax, width, dpi)
    _draw_image(ax, layer, image)
    geom = layer.geometry
    rows, cols, step = subsample_grid(layer.grid_shape, max_per_side)
    ys, xs = layer.cell_centres_image
    radius = _by_group(layer.radius_image, group, layer.num_groups)
    rigid = layer.rigid_radius_image
    ratio = (radius / rigid)[rows][:, cols] if rigid > 0 else np.ones((len(rows), len(cols)))
    base = rigid_fraction * step * min(geom.cell_size_on_image)
    norm = colors.TwoSlopeNorm(1.0, vmin=min(0.5, float(ratio.min())), vmax=max(1.5, float(ratio.max())))
    mapper = ScalarMappable(norm, cmap)
    face = mapper.to_rgba(ratio.ravel(), alpha=0.45)
    edge = mapper.to_rgba(ratio.ravel(), alpha=0.95)
    circles = [Circle((x, y), r) for x, y, r in zip(xs[rows][:, cols].ravel(), ys[rows][:, cols].ravel(),
                                                     (base * ratio).ravel())]
    ax.add_collection(PatchCollection(circles, facecolors=face, edgecolors=edge, linewidths=0.6))
    handles = [Line2D([], [], marker='o', ls='', mfc='none', mec='k',
                      label=f'rigid kernel: r = {rigid:.3g} px (drawn {base:.3g} px)'),
               Line2D([], [], color='none', label=f'{ratio.size} of {radius.size} locations · '
                                                  f'ratio {float(ratio.min()):.2f}-{float(ratio.max()):.2f}')]
    _legend(fig, ax, handles, own)
    fig.colorbar(mapper, ax=ax, shrink=0.8, label='kernel extent radius / rigid radius')
    _set_title(fig, ax, 'Fig. 3 · kernel-space displacement d_k: circle radius ∝ √(width × height)',
               layer, group, own)
    return fig


# ---------------------------------------------------------------------- sampling locations
def _include_points(ax, xy: np.ndarray, shape) -> None:
    """Widen the image limits just enough to show every (x, y) in ``xy`` (2, N)."""
    h, w = shape
    margin = 0.02 * max(h, w)
    x0, x1 = min(0.0, float(xy[0].min()) - margin), max(float(w), float(xy[0].max()) + margin)
    y0, y1 = min(0.0, float(xy[1].min()) - margin), max(float(h), float(xy[1].max()) + margin)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y1, y0)


def _extreme_cell(values: np.ndarray, largest: bool):
    """The cell holding the extreme value; among (near-)ties the one nearest the grid centre."""
    h, w = values.shape
    best = values.max() if largest else values.min()
    ties = np.isclose(values, best, rtol=1e-3, atol=1e-6)
    rows, cols = np.nonzero(ties)
    distance = (rows - (h - 1) / 2) ** 2 + (cols - (w - 1) / 2) ** 2
    k = int(np.argmin(distance))
    return int(rows[k]), int(cols[k])


def choose_points(layer: LayerOffsets, num_points: int = 3) -> list:
    """Cells (row, col) worth showing, deterministically: the most convergent d_f (lowest
    divergence), the most expanded and the most shrunk kernel (fields that are constant offer
    no such cell), then the grid centre and evenly spread cells."""
    h, w = layer.grid_shape
    div = layer.divergence.mean(0)
    radius = layer.radius_image.mean(0)
    candidates = []
    if np.ptp(div) > 0:
        candidates.append(_extreme_cell(div, largest=False))
    if np.ptp(radius) > 0:
        candidates += [_extreme_cell(radius, largest=True), _extreme_cell(radius, largest=False)]
    candidates += [(h // 2, w // 2), (h // 4, w // 4), (3 * h // 4, 3 * w // 4), (h // 4, 3 * w // 4),
                   (3 * h // 4, w // 4)]
    chosen = []
    for rc in candidates:
        rc = (int(rc[0]), int(rc[1]))
        if rc not in chosen:
            chosen.append(rc)
    return chosen[:num_points]


@matplotlib.rc_context(STYLE)
def plot_sampling_locations(layer: LayerOffsets, points: Optional[Sequence[Tuple[float, float]]] = None,
                            image: Optional[np.ndarray] = None, ax=None, group: Optional[int] = None,
                            num_points: int = 3, below: Sequence[LayerOffsets] = (),
                            width: float = PAPER_WIDTH, dpi: float = DEFAULT_DPI) -> Figure:
    """Where each kernel point of a few locations samples the image (DCN paper, Fig. 5/6).

    ``points``: (x, y) in original-image pixels, each snapped to its nearest cell; by default
    :func:`choose_points` picks ``num_points`` cells. For each: a star at the location, crosses
    at the rigid kernel's taps, filled dots at the deformed taps (area ∝ the DCNv2 modulation
    when the dump has a mask) joined to their rigid tap. Shows deform group ``group`` (None: 0).

    ``below``: deformable layers feeding this one, nearest first (see
    :func:`~deform_viz.analysis.fields.feeding_layers`); their taps are composed under each
    shown tap and drawn as smaller dots, level by level ((K*K)^2 points for two layers, ...),
    as in the DCN paper's Fig. 6.
    """
    group = 0 if group is None else group
    own = ax is None
    fig, ax = _image_axes(layer, ax, width, dpi)
    _draw_image(ax, layer, image)
    geom = layer.geometry
    if not 0 <= group < layer.num_groups:
        raise ValueError(f'group {group} does not exist; the layer has {layer.num_groups} deform group(s)')
    if points is None:
        cells = choose_points(layer, num_points)
    else:
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        r, c, inside = geom.image_to_grid(pts[:, 1], pts[:, 0])
        if not inside.all():
            bad = ', '.join(f'({x:g}, {y:g})' for (x, y), ok in zip(pts, inside) if not ok)
            x0, y0, x1, y1 = geom.grid_extent_on_image()
            raise ValueError(f'point(s) {bad} lie outside the feature grid of {layer.name} '
                             f'(x {x0:.0f}-{x1:.0f}, y {y0:.0f}-{y1:.0f} image px)')
        cells = list(zip(r.tolist(), c.tolist()))
    grid = rigid_grid(layer.kernel_size, layer.dilation).double().numpy()   # (K*K, 2) input px
    palette = matplotlib.colormaps['tab10'] if hasattr(matplotlib, 'colormaps') else matplotlib.cm.get_cmap('tab10')
    handles, shown = [], []
    for k, (r, c) in enumerate(cells):
        colour = palette(k % 10)
        cy_in, cx_in = geom.grid_to_input(r, c)
        rigid_y, rigid_x = geom.input_to_image(grid[:, 0] + cy_in, grid[:, 1] + cx_in)
        sy, sx = layer.sampling_image[group, :, 0, r, c], layer.sampling_image[group, :, 1, r, c]
        centre_y, centre_x = geom.grid_to_image(r, c)
        shown.append(np.stack([np.concatenate([rigid_x, sx]), np.concatenate([rigid_y, sy])]))
        if below:
            levels = stacked_sampling_positions(layer, below, r, c, group)
            for depth, points_yx in enumerate(levels[1:], 1):
                ax.scatter(points_yx[:, 1], points_yx[:, 0], s=max(14.0 / (depth + 1), 2.0), color=colour,
                           alpha=0.75, linewidths=0, zorder=2)
                shown.append(points_yx[:, ::-1].T)
        sizes = 22.0 if layer.mask is None else 4.0 + 36.0 * layer.mask[group, :, r, c]
        for x0, y0, x1, y1 in zip(rigid_x, rigid_y, sx, sy):
            ax.plot([x0, x1], [y0, y1], '-', color=colour, lw=0.6, alpha=0.8)
        ax.scatter(rigid_x, rigid_y, marker='x', s=14, color=colour, linewidths=0.8, alpha=0.7)
        ax.scatter(sx, sy, s=sizes, color=colour, edgecolors='black', linewidths=0.4, zorder=3)
        ax.scatter([centre_x], [centre_y], marker='*', s=110, color=colour, edgecolors='black',
                   linewidths=0.6, zorder=4)
        handles.append(Line2D([], [], marker='o', ls='', color=colour, mec='black',
                              label=f'{chr(65 + k)}: cell ({r}, {c}) at x={float(centre_x):.0f}, '
                                    f'y={float(centre_y):.0f}'))
    handles += [Line2D([], [], marker='*', ls='', color='grey', mec='black', ms=9, label='location p0'),
                Line2D([], [], marker='x', ls='', color='grey', label='rigid taps'),
                Line2D([], [], marker='o', ls='', color='grey', mec='black',
                       label='deformed taps' + (' (area ∝ mask)' if layer.mask is not None else ''))]
    for depth, lower in enumerate(below, 1):
        taps = int(np.prod(lower.kernel_size))
        handles.append(Line2D([], [], marker='o', ls='', color='grey', ms=3,
                              label=f'through {lower.name}: {len(layer.fields[0]) * taps ** depth} points'))
    _legend(fig, ax, handles, own)
    _include_points(ax, np.concatenate(shown, axis=1), geom.ori_shape)
    _set_title(fig, ax, f'sampling locations of {len(cells)} location(s) · '
                        f'{layer.kernel_size[0]}×{layer.kernel_size[1]} taps'
                        + (f' · {len(below) + 1} stacked layers' if below else ''),
               layer, group if layer.num_groups > 1 else None, own)
    return fig
