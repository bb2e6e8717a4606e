"""The attention report's figures (deform_viz.visualization.attention_report_figures): on reports of
the known-answer synthetic sampling points, the plotted numbers are the report's (read back from the
matplotlib artists), the files are written, and tools/analyze_attention.py's figure arguments."""
import os

import numpy as np
import pytest
from matplotlib.container import BarContainer
from PIL import Image

from conftest import import_tool
from deform_viz.attention import AttentionLayerAnalysis, attention_across_layers, measure_attention
from deform_viz.visualization.attention_report_figures import (plot_inward_offset, plot_spread_vs_size,
                                                               write_attention_report_figures)
from test_attention_analysis import SETTINGS, synthetic_image

#: per decoder layer, the kind of sampling points of each level (see synthetic_image)
MODES_2D = (('converge', 'independent'), ('independent', 'independent'), ('size', 'size'))
MODES_4D = (('box', 'converge'), ('box', 'box'))


def synthetic_report(layer_modes, reference_dim=2, images=3, seed=0):
    """A report as analyze_attention builds it (``num_images``, ``layers``, ``across_layers``) for
    one decoder layer per entry of ``layer_modes``, each over ``images`` synthetic images, and the
    layers' per-query rows. Returns (report, rows)."""
    rng = np.random.default_rng(seed)
    analyses = {}
    for k, modes in enumerate(layer_modes):
        name = f'decoder.layers.{k}.cross_attn'
        for _ in range(images):
            fields, detections, objects = synthetic_image(rng, modes, reference_dim=reference_dim)
            analysis = analyses.setdefault(name, AttentionLayerAnalysis(name, fields.info, SETTINGS))
            measures = measure_attention({name: fields}, detections, objects, settings=SETTINGS)
            analysis.add(measures.rows[name], measures.missing[name])
    results = {name: a.result() for name, a in analyses.items()}
    report = {'num_images': images, 'layers': results, 'across_layers': attention_across_layers(results)}
    return report, {name: a.rows for name, a in analyses.items()}


@pytest.fixture(scope='module')
def reports():
    return {2: synthetic_report(MODES_2D), 4: synthetic_report(MODES_4D, reference_dim=4)}


def _panels(fig):
    return [ax for ax in fig.axes if ax.get_visible() and ax.axison]


@pytest.mark.parametrize('dim, normalised', [(2, False), (4, False), (4, True)])
def test_scatter_is_the_rows_with_rho_and_holm_in_the_titles(reports, dim, normalised):
    report, rows = reports[dim]
    key = 'normalised_spread' if normalised else 'spread'
    claim = report['across_layers'][f'{key}_grows_with_size']
    fig = plot_spread_vs_size(report, rows, normalised=normalised)
    panels = _panels(fig)
    assert len(panels) == len(report['layers'])
    for ax, (name, result) in zip(panels, report['layers'].items()):
        expected = np.stack([rows[name]['sqrt_area'], rows[name][key][:, -1]], 1)   # pooled levels
        assert expected.shape == (36, 2) and np.all(np.isfinite(expected))
        np.testing.assert_allclose(ax.collections[0].get_offsets(), expected, rtol=1e-12)
        assert ax.get_xscale() == 'log' and ax.get_yscale() == 'log'
        test = result['pooled'][key]['vs_size']
        title = ax.get_title()
        assert title.startswith(f'decoder.{name.split(".")[2]}: ρ {test["rho"]:+.2f} (n 36)')
        assert f'grows {claim["p_greater_holm"][name]:.2g}, shrinks {claim["p_less_holm"][name]:.2g}' in title


def test_spread_grows_where_the_known_answer_says(reports):
    """The layer whose points spread in proportion to size grows after Holm; the one of points
    independent of the object does not."""
    report, _ = reports[2]
    holm = list(report['across_layers']['spread_grows_with_size']['p_greater_holm'].values())
    assert report['layers']['decoder.layers.2.cross_attn']['pooled']['spread']['vs_size']['rho'] > 0.6
    assert holm[2] < 0.05 and holm[1] > 0.05   # 199 permutations: the smallest Holm p is 3 / 200


@pytest.mark.parametrize('dim', [2, 4])
def test_inward_bars_are_the_reports_means_and_errors(reports, dim):
    report, _ = reports[dim]
    layers = list(report['layers'].values())
    fig = plot_inward_offset(report)
    top, bottom = fig.axes
    bars = [c for c in top.containers if isinstance(c, BarContainer)]
    assert [c.get_label() for c in bars] == ['level 0', 'level 1', 'pooled']
    for k, container in enumerate(bars):
        parts = [r['levels'][k] if k < 2 else r['pooled'] for r in layers]
        centres = [p.get_x() + p.get_width() / 2 for p in container.patches]
        assert np.array_equal(np.round(centres), np.arange(len(layers)))   # one bar per layer, in its slot
        np.testing.assert_allclose([p.get_height() for p in container.patches],
                                   [part['inward']['mean'] for part in parts], rtol=1e-12)
        segments = container.errorbar.lines[2][0].get_segments()
        np.testing.assert_allclose([(s[1, 1] - s[0, 1]) / 2 for s in segments],
                                   [part['inward']['sem'] for part in parts], rtol=1e-9)
        shares = [c for c in bottom.containers if isinstance(c, BarContainer)][k]
        np.testing.assert_allclose([p.get_height() for p in shares.patches],
                                   [part['inward']['sign_test']['fraction_positive'] for part in parts])
    assert [line.get_ydata()[0] for line in top.lines if line.get_linestyle() == '-'][-1] == 0   # zero line
    if dim == 2:   # the known answer: the converging points (layer 0, level 0) point inwards
        inward = layers[0]['levels'][0]['inward']
        assert bars[0].patches[0].get_height() == inward['mean'] > 5 * inward['sem']


@pytest.mark.parametrize('dim, names', [(2, ['spread_vs_size.png', 'inward_offset.png']),
                                        (4, ['spread_vs_size.png', 'normalised_spread_vs_size.png',
                                             'inward_offset.png'])])
def test_figures_are_written(reports, tmp_path, dim, names):
    report, rows = reports[dim]
    paths = write_attention_report_figures(report, rows, str(tmp_path / 'figures'))
    assert [os.path.basename(p) for p in paths] == names
    assert sorted(os.listdir(tmp_path / 'figures')) == sorted(names)
    for path in paths:
        with Image.open(path) as im:
            assert im.size[0] == 975 and np.asarray(im.convert('L')).std() > 10    # 6.5 in at 150 dpi


@pytest.mark.parametrize('extra, expected', [
    (['--out', 'work/report.json'], os.path.join('work', 'report_figures')),
    (['--out', 'work/report.json', '--no-figures'], None),
    (['--out', 'work/report.json', '--figure-dir', 'figs'], 'figs'),
    (['--figure-dir', 'figs'], 'figs'),
    (['--figure-dir', 'figs', '--no-figures'], None),
    ([], None),
])
def test_tool_figure_arguments(extra, expected):
    args = import_tool('analyze_attention').parse_args(['dumps', '--ann', 'ann.json', *extra])
    assert args.figure_dir == expected
