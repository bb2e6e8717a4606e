"""Tables and plots of paired experiments: per-row values and paired differences over seeds."""
import math
from typing import Dict, Mapping, Sequence

from .paired import paired_difference, summarize

Values = Mapping[str, Mapping[int, float]]  # row -> seed -> metric


def paired_report(values: Mapping[str, Values], rows: Sequence[str], reference: str,
                  confidence: float = 0.90) -> Dict[str, dict]:
    """``metric -> row -> {'mean', 'std', 'n', 'per_seed', 'vs_reference'}`` for every metric.

    ``vs_reference`` is the :class:`PairedDifference` (as a dict) of ``row - reference``; the
    reference row has none.
    """
    report = {}
    for metric, by_row in values.items():
        report[metric] = {}
        for row in rows:
            if row not in by_row or not by_row[row]:
                continue
            per_seed = {int(s): float(v) for s, v in sorted(by_row[row].items())}
            entry = {**summarize(list(per_seed.values())), 'per_seed': per_seed}
            if row != reference and reference in by_row:
                entry['vs_reference'] = paired_difference(by_row, row, reference, confidence).to_dict()
            report[metric][row] = entry
    return report


def format_difference(d: Mapping) -> str:
    """A paired difference (``PairedDifference.to_dict()``) as ``+0.012 [+0.004, +0.020]``, or
    ``+0.012 [zero width]`` when every seed gave the same difference."""
    if d.get('zero_width'):
        return f"{d['mean']:+.3f} [zero width]"
    return f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"


def _fmt(value: float, digits: int = 3) -> str:
    return '-' if value is None or (isinstance(value, float) and math.isnan(value)) else f'{value:.{digits}f}'


def markdown_table(report: Mapping[str, dict], rows: Sequence[str], labels: Mapping[str, str],
                   metrics: Sequence[str], metric_names: Mapping[str, str]) -> str:
    """One line per row: each metric's mean ± std and its paired difference to the reference with
    the interval, e.g. ``+0.012 [+0.004, +0.020]``."""
    head = ['row'] + [f'{metric_names[m]} (mean ± std)' for m in metrics] + \
        [f'Δ{metric_names[m]} vs baseline [90% CI]' for m in metrics]
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for row in rows:
        cells, deltas = [labels.get(row, row)], []
        for m in metrics:
            entry = report.get(m, {}).get(row)
            if entry is None:
                cells.append('-')
                deltas.append('-')
                continue
            cells.append(f"{_fmt(entry['mean'])} ± {_fmt(entry['std'])}")
            d = entry.get('vs_reference')
            deltas.append('(reference)' if d is None else format_difference(d))
        lines.append('| ' + ' | '.join(cells + deltas) + ' |')
    return '\n'.join(lines)


def plot_paired(report: Mapping[str, dict], rows: Sequence[str], labels: Mapping[str, str],
                metrics: Sequence[str], metric_names: Mapping[str, str], path: str, title: str) -> str:
    """One panel per metric: each row's per-seed paired differences to the reference (points),
    their mean and interval (bar), and zero (the reference). Written as a PNG at ``path``."""
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib.figure import Figure

    compared = [r for r in rows if any('vs_reference' in report.get(m, {}).get(r, {}) for m in metrics)]
    fig = Figure(figsize=(3.2 * len(metrics), 0.45 * len(compared) + 1.6), dpi=120, layout='constrained')
    axes = fig.subplots(1, len(metrics), sharey=True, squeeze=False)[0]
    for ax, m in zip(axes, metrics):
        for y, row in enumerate(compared):
            d = report.get(m, {}).get(row, {}).get('vs_reference')
            if d is None:
                continue
            ax.scatter(d['differences'], [y] * len(d['differences']), s=14, color='0.45', zorder=3)
            low = d['low'] if math.isfinite(d['low']) else d['mean']
            high = d['high'] if math.isfinite(d['high']) else d['mean']
            colour = {'higher': 'tab:green', 'lower': 'tab:red'}.get(d['verdict'], 'tab:blue')
            ax.plot([low, high], [y, y], color=colour, lw=3, alpha=0.6, solid_capstyle='butt')
            ax.plot([d['mean']], [y], marker='|', ms=14, mew=2, color=colour)
        ax.axvline(0, color='k', lw=0.8)
        ax.set_xlabel(f'Δ {metric_names[m]} vs baseline')
        ax.grid(axis='x', alpha=0.3)
    axes[0].set_yticks(range(len(compared)), [labels.get(r, r) for r in compared])
    axes[0].invert_yaxis()
    fig.suptitle(title, fontsize=9)
    fig.savefig(path)
    return path


def headline_spread(headlines: Mapping[int, dict]) -> Dict[str, dict]:
    """``number -> {'mean', 'std', 'n', 'per_seed'}`` over the seeds' offset headlines
    (:func:`deform_viz.analysis.headline`): the spread a single demo run's numbers have.
    Non-numeric entries (the layer name) and missing values (``None``) are left out."""
    spread = {}
    for key in next(iter(headlines.values()), {}):
        per_seed = {int(s): h.get(key) for s, h in sorted(headlines.items())}
        numbers = {s: float(v) for s, v in per_seed.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        if numbers:
            spread[key] = {**summarize(list(numbers.values())), 'per_seed': numbers}
    return spread


def spread_table(spread: Mapping[str, dict], names: Mapping[str, str]) -> str:
    """One line per number in ``names`` (key -> label): mean ± std over seeds and the per-seed values."""
    lines = ['| number | mean ± std over seeds | per seed |', '|---|---|---|']
    for key, label in names.items():
        s = spread.get(key)
        if s is None:
            continue
        per_seed = ', '.join(f'{seed}: {_fmt(v)}' for seed, v in s['per_seed'].items())
        lines.append(f"| {label} | {_fmt(s['mean'])} ± {_fmt(s['std'])} | {per_seed} |")
    return '\n'.join(lines)


SIGNED = ('median_rho', 'objects_minus_background')  # per-seed numbers of the claims shown with their sign


def _number(key: str, value) -> str:
    if value is None:
        return '-'
    if isinstance(value, float):
        return f'{value:+.3f}' if key in SIGNED else f'{value:.3f}'
    return str(value)


def claims_markdown(claims: Mapping[str, dict]) -> str:
    """One item per claim: its verdict, the paired differences it was decided on (claim 1) or its
    per-seed numbers (the claims decided on offset reports)."""
    lines = []
    for claim, verdict in claims.items():
        lines.append(f"- {claim}: **{verdict['verdict']}**")
        for name, d in verdict.items():
            if isinstance(d, dict) and 'mean' in d and 'low' in d:
                lines.append(f"  - {name}: {format_difference(d)} ({d['verdict']}; "
                             f"per seed {', '.join(f'{x:+.3f}' for x in d['differences'])})")
        for seed, numbers in verdict.get('per_seed', {}).items():
            details = ', '.join(f'{k.replace("_", " ")} {_number(k, v)}' for k, v in numbers.items() if k != 'verdict')
            lines.append(f"  - seed {seed}: {numbers['verdict']} ({details})")
    return '\n'.join(lines)
