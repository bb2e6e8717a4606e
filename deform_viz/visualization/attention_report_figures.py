"""Figures of an attention-statistics report (``deform_viz.attention.analyze_attention``), drawn
as the offset report's figures are (:mod:`.report_figures`): the spread of each matched decoder
query's sampling points against its object's size, one panel per decoder layer (the d_k analogue),
and the weighted mean offset towards the object per decoder layer and level (the d_f analogue)."""
import math
import os
from typing import Dict, List

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from .attention_points import level_colours
from .figures import DEFAULT_DPI, PAPER_WIDTH, STYLE, new_figure, panel_grid
from .render import save_figure
from .report_figures import REGION_COLOURS, fmt_p, fmt_signed, grouped_bars, images_text, log_axis

__all__ = ['ATTENTION_REPORT_FIGURES', 'short_attention_name', 'plot_spread_vs_size', 'plot_inward_offset',
           'write_attention_report_figures']

#: file names (without .png); the normalised spread only for layers with 4-d references
ATTENTION_REPORT_FIGURES = ('spread_vs_size', 'normalised_spread_vs_size', 'inward_offset')
POOLED_COLOUR = '#444444'
_CLAIMS = {'spread': 'spread_grows_with_size', 'normalised_spread': 'normalised_spread_grows_with_size'}
_LABELS = {'spread': 'spread of the sampling points (px)',
           'normalised_spread': 'spread / sqrt(w h) of the reference box'}


def short_attention_name(name: str) -> str:
    """'decoder.layers.3.cross_attn' -> 'decoder.3'."""
    for suffix in ('.cross_attn', '.self_attn'):
        if name.endswith(suffix):
            name = name[:-len(suffix)]
    return name.replace('.layers.', '.')


def _has_normalised(report: dict) -> bool:
    return any(r['pooled']['normalised_spread'] is not None for r in report['layers'].values())


def spread_points(rows: Dict[str, np.ndarray], key: str = 'spread'):
    """The scatter's points of one layer: sqrt(object area) (n,) and the pooled-levels ``key``
    (n,) of its matched queries (``AttentionLayerAnalysis.rows``), where both are finite and > 0
    (a log axis shows nothing else)."""
    x, y = np.asarray(rows['sqrt_area'], np.float64), np.asarray(rows[key], np.float64)[:, -1]
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    return x[keep], y[keep]


@matplotlib.rc_context(STYLE)
def plot_spread_vs_size(report: dict, rows: Dict[str, Dict[str, np.ndarray]], normalised: bool = False,
                        width: float = PAPER_WIDTH, dpi: float = DEFAULT_DPI, columns: int = 3) -> Figure:
    """One panel per decoder layer: the spread of each matched query's sampling points (all levels
    pooled; ``normalised``: over sqrt(w x h) of its reference box) against sqrt(object area), log
    axes; titles with Spearman's rho, its count and the one-sided p-values Holm-corrected over the
    decoder layers (grows / shrinks). ``rows``: layer -> ``AttentionLayerAnalysis.rows``."""
    key = 'normalised_spread' if normalised else 'spread'
    holm = report['across_layers'][_CLAIMS[key]]
    layers = list(report['layers'])
    columns = min(columns, max(1, len(layers)))
    grid = math.ceil(len(layers) / columns)
    fig = new_figure(width, 0.4 + 1.7 * grid, dpi)
    for ax, name in zip(panel_grid(fig, len(layers), columns), layers):
        measure = report['layers'][name]['pooled'][key]
        if measure is None:
            ax.set_title(f'{short_attention_name(name)}: 2-d reference points', fontsize=6)
            ax.set_axis_off()
            continue
        x, y = spread_points(rows[name], key)
        ax.scatter(x, y, s=5, color=REGION_COLOURS['small'], alpha=0.6, linewidths=0)
        if x.size:
            log_axis(ax.xaxis, x)
            log_axis(ax.yaxis, y)
        test = measure['vs_size']
        ax.set_title(f'{short_attention_name(name)}: ρ {fmt_signed(test["rho"])} (n {test["count"]})\n'
                     f'Holm p: grows {fmt_p(holm["p_greater_holm"][name])}, '
                     f'shrinks {fmt_p(holm["p_less_holm"][name])}', fontsize=6)
        ax.tick_params(labelsize=5.5)
    fig.supxlabel("sqrt(area) of the matched object's box (original-image px)", fontsize=7)
    fig.supylabel(_LABELS[key], fontsize=7)
    what = 'Normalised spread' if normalised else 'Spread'
    fig.suptitle(f'{what} of the decoder queries\' points (levels pooled) vs object size · {images_text(report)}')
    return fig


def _level_groups(report: dict, value) -> Dict[str, list]:
    """'level 0', ..., 'pooled' -> ``value(part)`` per layer (None where a layer lacks the level)."""
    layers = list(report['layers'].values())
    levels = max((len(r['levels']) for r in layers), default=0)
    groups = {f'level {k}': [value(r['levels'][k]) if k < len(r['levels']) else None for r in layers]
              for k in range(levels)}
    groups['pooled'] = [value(r['pooled']) for r in layers]
    return groups


@matplotlib.rc_context(STYLE)
def plot_inward_offset(report: dict, width: float = PAPER_WIDTH, dpi: float = DEFAULT_DPI) -> Figure:
    """Top: the weighted mean offset towards the object's box centre per decoder layer and level
    (and pooled), mean ± standard error over matched queries; above 0: the points are drawn
    towards the object. Bottom: the share of inward queries among the sign test's non-ties."""
    layers = list(report['layers'])
    means = _level_groups(report, lambda part: part['inward']['mean'])
    errors = _level_groups(report, lambda part: part['inward']['sem'])
    shares = _level_groups(report, lambda part: part['inward']['sign_test']['fraction_positive'])
    colours = dict(zip(means, level_colours(len(means) - 1) + [POOLED_COLOUR]))
    fig = new_figure(width, 3.6, dpi)
    top, bottom = fig.subplots(2, 1, gridspec_kw={'height_ratios': (2, 1)})
    grouped_bars(top, layers, means, errors, colours=colours, short=short_attention_name)
    top.axhline(0, color='black', lw=0.6)
    top.set_ylabel('inward mean offset (px)')
    top.tick_params(labelbottom=False)
    grouped_bars(bottom, layers, shares, colours=colours, short=short_attention_name, legend=False)
    bottom.axhline(0.5, color='black', lw=0.6, ls='--')
    bottom.set_ylim(0, 1)
    bottom.set_ylabel('share inward')
    fig.suptitle(f'Decoder queries\' mean offset towards the object, mean ± s.e. over queries · '
                 f'{images_text(report)}')
    return fig


def write_attention_report_figures(report: dict, rows: Dict[str, Dict[str, np.ndarray]], out_dir: str,
                                   dpi: float = DEFAULT_DPI) -> List[str]:
    """Save the report's figures as ``out_dir/<figure>.png`` (:data:`ATTENTION_REPORT_FIGURES`; the
    normalised spread only when a layer has 4-d references); returns their paths.

    ``rows``: layer -> the matched queries' columns (``AttentionLayerAnalysis.rows``), for the scatter.
    """
    figures = {'spread_vs_size': plot_spread_vs_size(report, rows, dpi=dpi)}
    if _has_normalised(report):
        figures['normalised_spread_vs_size'] = plot_spread_vs_size(report, rows, normalised=True, dpi=dpi)
    figures['inward_offset'] = plot_inward_offset(report, dpi=dpi)
    return [save_figure(fig, os.path.join(out_dir, f'{name}.png')) for name, fig in figures.items()]
