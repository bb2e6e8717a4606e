"""Run the statistics of :mod:`.statistics` over a dump and print them as markdown."""
import os
from typing import Optional, Sequence

from .annotations import CocoGroundTruth
from .fields import LayerNotFoundError, LayerOffsets, dump_files, iter_dumps, layer_offsets
from .statistics import REGIONS, AnalysisSettings, ImageTruth, LayerStatistics


def analyze_offsets(dump: str, ann_file: str, layers: Optional[Sequence[str]] = None,
                    settings: Optional[AnalysisSettings] = None, source: str = 'used',
                    max_images: Optional[int] = None, progress: bool = False) -> dict:
    """Statistics of every selected layer over the dumps at ``dump`` against ``ann_file``.

    Args:
        dump: a dump directory or one ``.npz`` dump.
        ann_file: COCO annotation JSON of the dumped images.
        layers: layer name patterns (see :func:`match_layers`); None = all layers with data offsets.
        settings: thresholds (size classes, divergence, minimal displacement, mask source).
        source: 'used' or 'predicted' offsets (see :class:`LayerOffsets`).
        max_images: analyse only the first N dumps (sorted by image id).
        progress: show a tqdm progress bar.

    Returns a JSON-serialisable dict: ``settings``, ``num_images`` and ``layers`` (name -> result
    of :meth:`LayerStatistics.result`).
    """
    settings = settings or AnalysisSettings()
    files = dump_files(dump)[:max_images]
    truth_source = CocoGroundTruth(ann_file)
    truth_source.check_images([{'img_id': os.path.basename(f)[:-4]} for f in files])
    stats = {}
    dumps = iter_dumps(dump, max_images=max_images)
    if progress:
        from tqdm import tqdm
        dumps = tqdm(dumps, total=len(files), desc='analysing', unit='image')
    for d in dumps:
        truth_source.check_images([d.meta])
        if not stats:  # the first dump fixes the layer selection
            chosen = layer_offsets(d, layers, source=source, skip_without_offsets=layers is None)
            stats = {lo.name: LayerStatistics(lo.name, lo.info, settings) for lo in chosen}
        missing = [n for n in stats if n not in d.layers]
        if missing:
            raise LayerNotFoundError(f'{d.path} lacks layer(s) {", ".join(missing)} that the first dump has; '
                                     f'were the dumps made by different models?')
        truth = ImageTruth.build(truth_source.objects(d.meta['img_id']), settings.mask_source)
        for name, layer_stats in stats.items():
            layer_stats.add(LayerOffsets.from_dump(d, name, source=source), truth)
    return {
        'dump': os.path.abspath(dump),
        'ann_file': os.path.abspath(ann_file),
        'num_images': len(files),
        'settings': {'size_thresholds': list(settings.size_thresholds), 'div_threshold': settings.div_threshold,
                     'min_displacement': settings.min_displacement, 'mask_source': settings.mask_source,
                     'offsets': source},
        'layers': {name: s.result() for name, s in stats.items()},
    }


# ---------------------------------------------------------------------- markdown
def _fixed(value: float, digits: int) -> str:
    """Fixed point, or two significant digits for values too small to show that way."""
    if value != 0 and abs(value) < 0.5 * 10 ** -digits:
        return f'{value:.2g}'
    return f'{value:.{digits}f}'


def _ms(s: dict, digits: int = 2) -> str:
    if not s or s.get('mean') is None:
        return 'n/a'
    return f'{_fixed(s["mean"], digits)} ± {_fixed(s["std"], digits)}'


def _num(v, digits=3, pct=False) -> str:
    if v is None:
        return 'n/a'
    return f'{100 * v:.1f} %' if pct else f'{v:.{digits}f}'


def _count(n: int, word: str) -> str:
    return f'{n} {word}' + ('' if n == 1 else 's')


def format_markdown(report: dict) -> str:
    """The report as markdown: a DCN-Table-2-style table over layers, then one table per layer."""
    lo, hi = report['settings']['size_thresholds']
    layers = report['layers']
    out = [f'## Effective dilation by region ({_count(report["num_images"], "image")})', '',
           f'Mean ± std in input-map pixels (zero offsets give the layer\'s dilation), locations counted in '
           f'brackets; small: sqrt(box area) < {lo:g} px, medium: < {hi:g} px, large: the rest; background: '
           f'outside every box.', '',
           '| layer | ' + ' | '.join(REGIONS) + ' |', '|---' * (len(REGIONS) + 1) + '|']
    for name, r in layers.items():
        cells = [f'{_ms(r["effective_dilation"][g])} ({r["effective_dilation"][g]["count"]})' for g in REGIONS]
        out.append(f'| {name} | ' + ' | '.join(cells) + ' |')
    for name, r in layers.items():
        info, ext, div, tow, mask = (r['layer'], r['extent_vs_size'], r['divergence'], r['towards_centre'],
                                     r['negative_divergence_mask'])
        s_in, s_out = info.get('input_stride'), info.get('output_stride')
        sc, sl = ext['spearman_centre'], ext['spearman_largest']
        rho = lambda s: 'n/a' if s['rho'] is None else f'{s["rho"]:.3f} (p = {s["p_value"]:.2g})'  # noqa: E731
        out += ['', f'### {name}', '',
                f'{info.get("variant") or info.get("type")}, stride {s_in} -> {s_out}, '
                f'{_count(r["num_images"], "image")}, {_count(r["num_objects"], "object")}.', '',
                '| measure | value | n |', '|---|---|---|']
        for g in REGIONS:
            e = r['effective_dilation'][g]
            out.append(f'| effective dilation, {g} (input px) | {_ms(e)} | {e["count"]} locations |')
        out += [
            f'| Spearman(sqrt box area, d_k radius at box centre) | {rho(sc)} | {sc["count"]} objects |',
            f'| Spearman(sqrt box area, largest d_k radius in box) | {rho(sl)} | {sl["count"]} objects |',
            f'| d_k radius at box centre (image px) | {_ms(ext["radius_at_centre"], 1)} | {sc["count"]} objects |',
            f'| divergence of d_f in boxes | {_ms(div["in_boxes"], 3)} | {div["in_boxes"]["count"]} locations |',
            f'| divergence of d_f on background | {_ms(div["background"], 3)} | {div["background"]["count"]} locations |',
            f'| d_f points towards box centre | {_num(tow["fraction"], pct=True)} (mean cos {_num(tow["mean_cosine"], 2)})'
            f' | {tow["count"]} locations |',
            f'| negative-divergence mask vs {mask["ground_truth"]}: IoU / precision / recall | '
            f'{_num(mask["iou"])} / {_num(mask["precision"])} / {_num(mask["recall"])} | {mask["num_images"]} images |',
        ]
    return '\n'.join(out) + '\n'
