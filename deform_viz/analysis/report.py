"""The analysis of a dump directory: streamed over images (optionally in worker processes),
merged per layer, tested, summarised across layers, and printed as markdown."""
import json
import multiprocessing
import os
from functools import partial
from typing import Callable, Dict, Iterator, Optional, Sequence

import torch

from ..dump import LayerNotFoundError, load_offset_dump
from ..fileio import write_atomically
from .accumulate import UNITS, LayerAnalysis
from .annotations import SIZE_CLASSES, CocoGroundTruth
from .fields import LayerOffsets, dump_files, layer_offsets
from .measures import AnalysisSettings, ImageTruth, LayerImageMeasures, measure_layer
from .statistics import holm

#: significance level of the across-layer counts (after Holm's correction)
ALPHA = 0.05
#: the report's format and rules; a stored report of another version is out of date (2: sign-test
#: ties below ``AnalysisSettings.inward_tie``, folded share at box centres, the mask's null)
REPORT_VERSION = 2


class DumpMeasurer:
    """Measures the chosen layers of one dump file against the annotations (what a worker runs)."""

    def __init__(self, ann_file: str, layers: Sequence[str], settings: AnalysisSettings, source: str,
                 ground_truth: Optional[CocoGroundTruth] = None):
        self.ground_truth = ground_truth or CocoGroundTruth(ann_file)
        self.layers, self.settings, self.source = list(layers), settings, source

    def __call__(self, path) -> Dict[str, LayerImageMeasures]:
        dump = load_offset_dump(path)
        self.ground_truth.check_images([dump.meta])
        missing = [name for name in self.layers if name not in dump.layers]
        if missing:
            raise LayerNotFoundError(f'{dump.path} lacks layer(s) {", ".join(missing)} that the first dump has; '
                                     f'were the dumps made by different models?')
        objects = self.ground_truth.objects(dump.img_id, masks=self.settings.mask_source != 'boxes')
        truth = ImageTruth(objects)
        return {name: measure_layer(LayerOffsets.from_dump(dump, name, self.source), truth, self.settings)
                for name in self.layers}


_worker: Optional[Callable] = None


def _start_worker(factory: Callable) -> None:
    torch.set_num_threads(1)   # one core per worker process
    global _worker
    _worker = factory()


def _measure_in_worker(path):
    return _worker(path)


def measure_dumps(files: Sequence, ann_file: Optional[str] = None, layers: Optional[Sequence[str]] = None,
                  settings: Optional[AnalysisSettings] = None, source: str = 'used', workers: int = 1,
                  ground_truth: Optional[CocoGroundTruth] = None, factory: Optional[Callable] = None) -> Iterator:
    """What a measurer makes of each of ``files``, in their order, one dump in memory per process,
    measured by ``workers`` processes.

    ``factory(ground_truth=None)`` builds the measurer, a callable ``path -> measures``; it must
    pickle (a module-level class or a ``functools.partial`` of one) for spawned workers, which
    read the annotations themselves (``ground_truth`` serves only the calling process). Default:
    :class:`DumpMeasurer` of ``ann_file``, ``layers``, ``settings`` and ``source``, giving layer ->
    :class:`LayerImageMeasures` per image.
    """
    if workers < 1:
        raise ValueError(f'workers must be at least 1, got {workers}')
    if factory is None:
        factory = partial(DumpMeasurer, ann_file, list(layers), settings or AnalysisSettings(), source)
    if workers == 1:
        measurer = factory(ground_truth=ground_truth)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)   # per-image work is small: a second thread only waits (~20x slower under load)
        try:
            yield from map(measurer, files)
        finally:
            torch.set_num_threads(threads)
        return
    # spawn, not fork: a forked child of a process that has run torch's OpenMP code can hang
    context = multiprocessing.get_context('spawn')
    with context.Pool(workers, initializer=_start_worker, initargs=(factory, )) as pool:
        yield from pool.imap(_measure_in_worker, [str(f) for f in files])


def analyze_offsets(dump: str, ann_file: str, layers: Optional[Sequence[str]] = None,
                    settings: Optional[AnalysisSettings] = None, source: str = 'used',
                    max_images: Optional[int] = None, workers: int = 1, progress: bool = False,
                    figure_dir: Optional[str] = None) -> dict:
    """Statistics of every selected layer over the dumps at ``dump`` against ``ann_file``.

    Args:
        dump: a dump directory or one ``.npz`` dump.
        ann_file: COCO annotation JSON of the dumped images (ids, sizes and file names checked).
        layers: layer patterns (``deform_viz.dump.match_layer_names``); None = every layer with
            data offsets.
        settings: see :class:`AnalysisSettings`.
        source: 'used' or 'predicted' offsets (see :class:`LayerOffsets`).
        max_images: only the first N dumps (in image-id order).
        workers: processes measuring images; the report is identical for any number.
        progress: show a tqdm progress bar.
        figure_dir: also draw the report's figures there (PNG); their paths go in ``figures``.

    One dump is in memory at a time (per worker). Returns a JSON-serialisable dict: ``settings``,
    ``units``, ``num_images``, ``layers`` (name -> :meth:`LayerAnalysis.result`) and
    ``across_layers`` (Holm-corrected counts of layers supporting each claim).
    """
    settings = settings or AnalysisSettings()
    if workers < 1:
        raise ValueError(f'workers must be at least 1, got {workers}')   # before any work
    files = dump_files(dump, max_images=max_images)
    ground_truth = CocoGroundTruth(ann_file)
    first = load_offset_dump(files[0])
    ground_truth.check_images([first.meta])   # the common mistake fails before any work
    chosen = layer_offsets(first, layers, source=source, skip_without_offsets=layers is None)
    analyses = {lo.name: LayerAnalysis(lo.name, lo.info, settings) for lo in chosen}
    measured = measure_dumps(files, ann_file, list(analyses), settings, source, min(workers, len(files)),
                             ground_truth)
    if progress:
        from tqdm import tqdm
        measured = tqdm(measured, total=len(files), desc='analysing', unit='image')
    for per_layer in measured:
        for name, measures in per_layer.items():
            analyses[name].add(measures)
    results = {name: analysis.result() for name, analysis in analyses.items()}
    report = {
        'version': REPORT_VERSION,
        'dump': os.path.abspath(dump),
        'ann_file': os.path.abspath(ann_file),
        'num_images': len(files),
        'settings': dict(settings.as_dict(), offsets=source),
        'units': UNITS,
        'layers': results,
        'across_layers': across_layers(results),
    }
    if figure_dir is not None:
        from ..visualization.report_figures import write_report_figures
        report['figures'] = write_report_figures(report, {n: a.boxes for n, a in analyses.items()}, figure_dir)
    return report


def across_layers(results: Dict[str, dict]) -> dict:
    """How many layers support or contradict each claim, one-sided p-values Holm-corrected over
    the layers: d_k extent grows with size (box-centre statistic), d_f points inwards, and the
    negative-divergence mask overlaps the objects more than its null (the segmentation finding)."""
    tests = {
        'dk_radius_grows_with_size': [r['extent_vs_size']['centre'] for r in results.values()],
        'inward_df': [r['inward_df']['objects']['sign_test'] for r in results.values()],
        'inward_df_background': [r['inward_df']['background']['sign_test'] for r in results.values()],
        'negative_divergence_segments': [r['negative_divergence_mask']['null'] for r in results.values()],
    }
    out = {'correction': f'Holm over the {len(results)} layers, alpha {ALPHA}', 'num_layers': len(results)}
    for claim, per_layer in tests.items():
        greater, less = holm([t['p_greater'] for t in per_layer]), holm([t['p_less'] for t in per_layer])
        out[claim] = {'supporting': sum(p is not None and p < ALPHA for p in greater),
                      'contradicting': sum(p is not None and p < ALPHA for p in less),
                      'p_greater_holm': dict(zip(results, greater)), 'p_less_holm': dict(zip(results, less))}
    return out


def headline(report: dict, layer: Optional[str] = None) -> dict:
    """The few numbers a summary prints, for ``layer`` (default: the report's last, deepest layer).

    Keys: ``layer``, ``num_images``; ``dk_size_rho``, ``dk_size_p`` (two-sided permutation),
    ``dk_size_count``: Spearman(sqrt box area, d_k radius at the box centre); ``inward_df``
    (mean per object, input px), ``inward_df_fraction`` (share of objects with inward d_f),
    ``inward_df_p`` (one-sided sign test), ``inward_df_count``, the same four with
    ``inward_df_background_`` for the background control; ``effective_dilation_objects`` /
    ``_background`` (input px); ``num_layers``, ``layers_dk_grows_with_size`` and
    ``layers_inward_df``: layers supporting each claim after Holm's correction; ``mask_iou``,
    ``mask_null_iou``, ``mask_p``: the negative-divergence mask's IoU with the objects, its null's
    mean and one-sided p; ``layers_mask_beats_null`` (Holm).
    """
    if not report['layers']:
        raise ValueError('the report has no layers')
    name = layer or list(report['layers'])[-1]
    if name not in report['layers']:
        raise LayerNotFoundError(f'the report has no layer {name!r}; its layers: {", ".join(report["layers"])}')
    r = report['layers'][name]
    centre, inward = r['extent_vs_size']['centre'], r['inward_df']
    numbers = {'layer': name, 'num_images': report['num_images'], 'dk_size_rho': centre['rho'],
               'dk_size_p': centre['p_value'], 'dk_size_count': centre['count']}
    for key, part in (('inward_df', inward['objects']), ('inward_df_background', inward['background'])):
        numbers.update({key: part['mean'], f'{key}_fraction': part['sign_test']['fraction_positive'],
                        f'{key}_p': part['sign_test']['p_greater'], f'{key}_count': part['count']})
    across = report['across_layers']
    return {**numbers,
            'effective_dilation_objects': r['effective_dilation']['objects']['mean'],
            'effective_dilation_background': r['effective_dilation']['background']['mean'],
            'num_layers': across['num_layers'],
            'layers_dk_grows_with_size': across['dk_radius_grows_with_size']['supporting'],
            'layers_inward_df': across['inward_df']['supporting'],
            'mask_iou': r['negative_divergence_mask']['iou'],
            'mask_null_iou': r['negative_divergence_mask']['null']['null_mean'],
            'mask_p': r['negative_divergence_mask']['null']['p_greater'],
            'layers_mask_beats_null': across['negative_divergence_segments']['supporting']}


# ---------------------------------------------------------------------- markdown
def _fixed(value: float, digits: int) -> str:
    """Fixed point, or two significant digits for values too small to show that way."""
    if value != 0 and abs(value) < 0.5 * 10 ** -digits:
        return f'{value:.2g}'
    return f'{value:.{digits}f}'


def _ms(s: dict, digits: int = 2, spread: str = 'std') -> str:
    if not s or s.get('mean') is None:
        return 'n/a'
    if s.get(spread) is None:
        return _fixed(s['mean'], digits)
    return f'{_fixed(s["mean"], digits)} ± {_fixed(s[spread], digits)}'


def _p(p: Optional[float]) -> str:
    return 'n/a' if p is None else f'{p:.2g}'


def _rho(test: dict) -> str:
    return 'n/a' if test['rho'] is None else f'{test["rho"]:+.3f}'


def _num(v, digits=3) -> str:
    return 'n/a' if v is None else f'{v:.{digits}f}'


def _null(null: Optional[dict]) -> str:
    if not null or null.get('null_mean') is None:
        return 'n/a'
    return f'{_num(null["null_mean"])} / {_num(null["null_p95"])} ({_p(null["p_greater"])})'


def _count(n: int, word: str) -> str:
    return f'{n} {word}' + ('' if n == 1 else 's')


def _inward_cell(part: dict) -> str:
    sign = part['sign_test']
    if not part['count']:
        return 'n/a (0)'
    return (f'{_ms(part, 3, "sem")} ({part["count"]}) · {sign["positive"]}/{sign["count"]} inward, '
            f'p = {_p(sign["p_greater"])}')


def report_figure_dir(out: Optional[str], figure_dir: Optional[str], no_figures: bool) -> Optional[str]:
    """The tools' figure folder: ``figure_dir``, else ``REPORT_figures/`` beside the ``out`` JSON; None
    with ``no_figures`` or when there is neither."""
    if no_figures:
        return None
    if figure_dir is None and out:
        return os.path.splitext(out)[0] + '_figures'
    return figure_dir


def write_report(report: dict, path: str) -> str:
    """Write ``report`` as JSON to ``path`` atomically (NaN refused); returns the absolute path."""
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_atomically(path, lambda f: json.dump(report, f, indent=1, allow_nan=False), text=True)
    return path


def format_markdown(report: dict) -> str:
    """Four tables over the layers: effective dilation, d_k extent vs size, inward d_f, divergence."""
    lo, hi = report['settings']['size_thresholds']
    layers = report['layers']
    columns = SIZE_CLASSES + ('objects', 'background')
    out = [f'## Effective dilation by region ({_count(report["num_images"], "image")})', '',
           f'Mean ± std in input-map pixels (zero offsets give the layer\'s dilation), locations counted in '
           f'brackets; small: sqrt(box area) < {lo:g} px, medium: < {hi:g} px, large: the rest; background: '
           f'outside every box.', '',
           '| layer | ' + ' | '.join(columns) + ' |', '|---' * (len(columns) + 1) + '|']
    for name, r in layers.items():
        cells = [f'{_ms(r["effective_dilation"][g])} ({r["effective_dilation"][g]["count"]})' for g in columns]
        out.append(f'| {name} | ' + ' | '.join(cells) + ' |')

    out += ['', '## d_k extent vs object size', '',
            'Spearman rho between sqrt(box area) and the d_k radius sqrt(width x height), both in pixels of the '
            'image the network saw. Primary: the radius at the box-centre cell, p from shuffling sizes among '
            'boxes. The maximum and the mean over a box\'s cells grow with its cell count even for noise, so '
            'their p compares rho with a null that shuffles sizes only among boxes covering as many cells '
            '("null" is its mean rho).', '',
            '| layer | objects | box centre: rho (p) | box max: rho / null (p) | box mean: rho / null (p) |',
            '|---|---|---|---|---|']
    for name, r in layers.items():
        ext = r['extent_vs_size']
        region = lambda t: f'{_rho(t)} / {_num(t["null_rho"])} ({_p(t["p_value"])})'  # noqa: E731
        out.append(f'| {name} | {ext["num_objects"]} | {_rho(ext["centre"])} ({_p(ext["centre"]["p_value"])}) | '
                   f'{region(ext["box_max"])} | {region(ext["box_mean"])} |')

    any_layer = next(iter(layers.values()), None)
    inward_settings = any_layer['inward_df'] if any_layer else {}
    out += ['', '## Inward d_f', '',
            f'Per object, the mean component of d_f (input-map pixels) towards the box centre over its mask '
            f'cells (boxes without masks), centre cell excluded, objects at least '
            f'{inward_settings.get("min_object_cells", "?")} cells wide; the image\'s mean d_f '
            f'{"removed" if inward_settings.get("global_shift_removed") else "kept"}. Mean ± s.e. (objects), '
            f'objects with inward d_f, one-sided sign-test p. Control: background cells within '
            f'{inward_settings.get("background_ring", "?")} x sqrt(box area) of their nearest box.', '',
            '| layer | objects | background control | objects - background | mean shift |d_f| (images) |',
            '|---|---|---|---|---|']
    for name, r in layers.items():
        inward, shift = r['inward_df'], r['global_shift']['magnitude']
        out.append(f'| {name} | {_inward_cell(inward["objects"])} | {_inward_cell(inward["background"])} | '
                   f'{_inward_cell(inward["objects_minus_background"])} | {_ms(shift, 3)} ({shift["count"]}) |')

    out += ['', '## Divergence of d_f', '',
            f'Dimensionless (d_f in input-map pixels differentiated over input-map pixels); mean ± std over '
            f'locations, counted in brackets. Mask: cells with divergence < '
            f'{report["settings"]["div_threshold"]:g} against the objects, pooled over pixels; its null scores '
            f'each image\'s mask on another image\'s objects (mean and 95th percentile, one-sided p).', '',
            '| layer | in boxes | background | negative-divergence mask IoU / precision / recall | '
            'null IoU mean / p95 (p) |',
            '|---|---|---|---|---|']
    for name, r in layers.items():
        div, mask = r['divergence'], r['negative_divergence_mask']
        out.append(f'| {name} | {_ms(div["objects"], 3)} ({div["objects"]["count"]}) | '
                   f'{_ms(div["background"], 3)} ({div["background"]["count"]}) | '
                   f'{_num(mask["iou"])} / {_num(mask["precision"])} / {_num(mask["recall"])} '
                   f'(vs {mask["ground_truth"]}) | {_null(mask.get("null"))} |')

    across = report['across_layers']
    out += ['', f'Across layers ({across["correction"]}): d_k radius grows with size in '
                f'{across["dk_radius_grows_with_size"]["supporting"]} layers (shrinks in '
                f'{across["dk_radius_grows_with_size"]["contradicting"]}); d_f points inwards in '
                f'{across["inward_df"]["supporting"]} (outwards in {across["inward_df"]["contradicting"]}), '
                f'on the background control in {across["inward_df_background"]["supporting"]}; the '
                f'negative-divergence mask beats its null in '
                f'{across["negative_divergence_segments"]["supporting"]} (below it in '
                f'{across["negative_divergence_segments"]["contradicting"]}).']
    if report.get('figures'):
        out += ['', 'Figures: ' + ', '.join(report['figures'])]
    return '\n'.join(out) + '\n'
