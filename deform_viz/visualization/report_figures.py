"""Figures of an offset-analysis report (``deform_viz.analysis.analyze_offsets``), in the style of
the offset figures: effective dilation by size class per layer (the DCN paper's Table 2 as bars),
d_k radius against object size with its rank correlation, inward d_f per size class."""
import math
import os
from typing import Callable, Dict, List, Optional

import matplotlib
import numpy as np
from matplotlib import ticker
from matplotlib.figure import Figure

from ..analysis.annotations import SIZE_CLASSES
from .figures import DEFAULT_DPI, PAPER_WIDTH, STYLE, new_figure, panel_grid
from .render import save_figure

REGION_COLOURS = {'small': '#4477aa', 'medium': '#66ccee', 'large': '#228833', 'background': '#bbbbbb'}
REPORT_FIGURES = ('effective_dilation', 'extent_vs_size', 'inward_df')


def short_layer_name(name: str) -> str:
    """'backbone.layer3.0.conv2' -> 'layer3.0': what tells the layers of one backbone apart."""
    name = name[len('backbone.'):] if name.startswith('backbone.') else name
    return name[:-len('.conv2')] if name.endswith('.conv2') else name


def grouped_bars(ax, layers: List[str], groups: Dict[str, list], errors: Optional[Dict[str, list]] = None,
                 labels: Optional[Dict[str, str]] = None, colours: Optional[Dict[str, str]] = None,
                 short: Callable[[str], str] = short_layer_name, legend: bool = True) -> None:
    """Bars of each group side by side per layer (``groups``: name -> one value per layer), with
    error bars (``errors``, same shape) and a legend above the axes; missing values are left out.
    Colours from ``colours`` (default :data:`REGION_COLOURS`), tick labels ``short(layer)``."""
    width = 0.8 / len(groups)
    x = np.arange(len(layers))
    colours = colours or REGION_COLOURS
    for k, (group, values) in enumerate(groups.items()):
        have = [i for i, v in enumerate(values) if v is not None]
        yerr = None if errors is None else [errors[group][i] or 0.0 for i in have]
        ax.bar(x[have] - 0.4 + width * (k + 0.5), [values[i] for i in have], width, color=colours[group],
               label=(labels or {}).get(group, group), yerr=yerr, capsize=1.5, error_kw={'lw': 0.6})
    ax.set_xticks(x, [short(n) for n in layers], rotation=45, ha='right')
    ax.set_xlim(-0.6, len(layers) - 0.4)
    if legend:
        ax.legend(ncols=len(groups), loc='lower left', bbox_to_anchor=(0, 1), frameon=False, borderaxespad=0.2)


def images_text(report: dict) -> str:
    """'3 images' of a report's ``num_images``."""
    n = report['num_images']
    return f'{n} image' + ('' if n == 1 else 's')


@matplotlib.rc_context(STYLE)
def plot_effective_dilation(report: dict, width: float = PAPER_WIDTH, dpi: float = DEFAULT_DPI) -> Figure:
    """Mean effective dilation per layer on small / medium / large objects and background, ± std
    over locations (the DCN paper's Table 2); the dashed line is the rigid kernel's dilation."""
    layers = list(report['layers'])
    stats = [report['layers'][n]['effective_dilation'] for n in layers]
    regions = SIZE_CLASSES + ('background',)
    fig = new_figure(width, 2.8, dpi)
    ax = fig.add_subplot()
    grouped_bars(ax, layers, {g: [s[g]['mean'] for s in stats] for g in regions},
                  {g: [s[g]['std'] for s in stats] for g in regions})
    dilations = {np.mean(report['layers'][n]['layer'].get('dilation') or [1]) for n in layers}
    for d in dilations:
        ax.axhline(d, color='black', lw=0.6, ls='--')
    ax.set_ylabel('effective dilation (input px)')
    ax.set_ylim(0, None)
    fig.suptitle(f'Effective dilation by region, mean ± std over locations · {images_text(report)} '
                 f'(dashed: rigid kernel)')
    return fig


@matplotlib.rc_context(STYLE)
def plot_extent_vs_size(report: dict, boxes: Dict[str, Dict[str, np.ndarray]], width: float = PAPER_WIDTH,
                        dpi: float = DEFAULT_DPI, columns: int = 4) -> Figure:
    """One panel per layer: d_k radius at the box-centre cell against sqrt(box area), both in
    network-input pixels, with Spearman's rho and its permutation p (and the per-box maximum's rho
    against its null, which keeps each box's cell count)."""
    layers = list(report['layers'])
    columns = min(columns, max(1, len(layers)))
    rows = math.ceil(len(layers) / columns)
    fig = new_figure(width, 0.3 + 1.55 * rows, dpi)
    for ax, name in zip(panel_grid(fig, len(layers), columns), layers):
        ext = report['layers'][name]['extent_vs_size']
        size, radius = boxes[name]['sqrt_area_network'], boxes[name]['radius_centre']
        ax.scatter(size, radius, s=4, color=REGION_COLOURS['small'], alpha=0.6, linewidths=0)
        if size.size and np.all(size > 0):
            log_axis(ax.xaxis, size)
        centre, largest = ext['centre'], ext['box_max']
        ax.set_title(f'{short_layer_name(name)}: ρ {fmt_signed(centre["rho"])} (p {fmt_p(centre["p_value"])}, '
                     f'n {centre["count"]})\nbox max ρ {fmt_signed(largest["rho"])}, '
                     f'null {fmt_signed(largest["null_rho"])} (p {fmt_p(largest["p_value"])})', fontsize=5.2)
        ax.tick_params(labelsize=5.5)
    fig.supxlabel('sqrt(box area) (network-input px)', fontsize=7)
    fig.supylabel('d_k radius at box centre (px)', fontsize=7)
    fig.suptitle(f'd_k extent vs object size · {images_text(report)}')
    return fig


@matplotlib.rc_context(STYLE)
def plot_inward_df(report: dict, width: float = PAPER_WIDTH, dpi: float = DEFAULT_DPI) -> Figure:
    """Mean inward component of d_f per object, by size class, and the background control
    (all sizes), ± standard error over objects; above 0: d_f points towards the box centre."""
    layers = list(report['layers'])
    inward = [report['layers'][n]['inward_df'] for n in layers]
    groups = {g: [r['objects']['by_size'][g]['mean'] for r in inward] for g in SIZE_CLASSES}
    errors = {g: [r['objects']['by_size'][g]['sem'] for r in inward] for g in SIZE_CLASSES}
    groups['background'] = [r['background']['mean'] for r in inward]
    errors['background'] = [r['background']['sem'] for r in inward]
    fig = new_figure(width, 2.8, dpi)
    ax = fig.add_subplot()
    grouped_bars(ax, layers, groups, errors, labels={'background': 'background control'})
    ax.axhline(0, color='black', lw=0.6)
    ax.set_ylabel('inward d_f per object (input px)')
    shift = 'mean d_f of each image removed' if inward and inward[0]['global_shift_removed'] else 'raw d_f'
    fig.suptitle(f'd_f towards the box centre, mean ± s.e. over objects · {images_text(report)} · {shift}')
    return fig


def log_axis(axis, values: np.ndarray) -> None:
    """Log scale of ``axis`` (``ax.xaxis`` or ``ax.yaxis``) labelled in plain numbers at the powers
    of two that the positive ``values`` span."""
    getattr(axis.axes, f'set_{axis.axis_name}scale')('log')
    lo, hi = np.log2(values.min()), np.log2(values.max())
    ticks = 2.0 ** np.arange(np.floor(lo), np.ceil(hi) + 1)
    axis.set_major_locator(ticker.FixedLocator(ticks))
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f'{v:g}'))
    axis.set_minor_formatter(ticker.NullFormatter())


def fmt_signed(value: Optional[float]) -> str:
    """+0.12, or n/a for None."""
    return 'n/a' if value is None else f'{value:+.2f}'


def fmt_p(value: Optional[float]) -> str:
    """Two significant digits, or n/a for None."""
    return 'n/a' if value is None else f'{value:.2g}'


def write_report_figures(report: dict, boxes: Dict[str, Dict[str, np.ndarray]], out_dir: str,
                         dpi: float = DEFAULT_DPI) -> List[str]:
    """Save the three report figures as ``out_dir/<figure>.png``; returns their paths.

    ``boxes``: layer -> per-object columns (``LayerAnalysis.boxes``), for the scatter plot.
    """
    figures = {'effective_dilation': plot_effective_dilation(report, dpi=dpi),
               'extent_vs_size': plot_extent_vs_size(report, boxes, dpi=dpi),
               'inward_df': plot_inward_df(report, dpi=dpi)}
    return [save_figure(fig, os.path.join(out_dir, f'{name}.png')) for name, fig in figures.items()]
