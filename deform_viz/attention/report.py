"""The attention statistics of a dump directory (:mod:`.analysis`): dumps checked before any work,
measured per image (optionally in worker processes, through
:func:`deform_viz.analysis.report.measure_dumps`), merged per layer in file order, tested, and
printed as markdown."""
import json
import os
from functools import partial
from typing import List, Optional, Sequence

import numpy as np

from ..analysis.annotations import CocoGroundTruth
from ..analysis.fields import OffsetInputError, dump_files
from ..analysis.report import _count, _fixed, _ms, _p, measure_dumps
from ..dump import META_KEY, LayerNotFoundError, OffsetDump, check_layer_patterns, load_offset_dump, match_layer_names
from .analysis import (ATTENTION_UNITS, AttentionImageMeasures, AttentionLayerAnalysis, AttentionSettings,
                       attention_across_layers, measure_attention)

__all__ = ['ATTENTION_REPORT_VERSION', 'AttentionMeasurer', 'analyze_attention', 'check_attention_dump',
           'decoder_layers', 'format_attention_markdown']

#: the attention report's format and rules
ATTENTION_REPORT_VERSION = 1


def check_attention_dump(path, meta: dict) -> None:
    """Refuse a dump the statistics cannot use: no attention layers, a flipped image, or
    detections not linked to their decoder queries (``OffsetInputError`` naming the file)."""
    if 'attention' not in meta or not meta['attention']:
        raise OffsetInputError(f'{path}: holds no attention layers (a dump of a model without '
                               'MultiScaleDeformableAttention; tools/analyze_offsets.py measures conv offsets)')
    if meta.get('flip'):
        raise OffsetInputError(f'{path}: the image was flipped at test time ({meta.get("flip_direction")}); its '
                               'sampling points are in the flipped frame and the annotations are not. Dump without '
                               'test-time flipping')
    detections = meta.get('detections') or {}
    if not detections.get('linked'):
        raise OffsetInputError(f'{path}: its {detections.get("count", "?")} detections are not linked to the decoder '
                               'queries that produced them (detections.linked is false), so no query can be matched '
                               'to an object')


def _meta(path) -> dict:
    """The metadata of one dump, read without its arrays (a file that cannot be read so is loaded
    in full, which names its problem)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return json.loads(str(npz[META_KEY]))
    except Exception:
        return load_offset_dump(path).meta


def decoder_layers(dump: OffsetDump, patterns: Optional[Sequence[str]] = None) -> List[str]:
    """The decoder attention layers of ``dump`` that ``patterns`` select (default: all of them)."""
    names = list(dump.attention)
    chosen = match_layer_names(names, patterns, where=str(dump.path), kind='attention layer')
    decoder = [n for n in chosen if dump.attention[n].role == 'decoder']
    if not decoder:
        every = [n for n in names if dump.attention[n].role == 'decoder']
        raise LayerNotFoundError(f'{dump.path}: no decoder attention layer matched (patterns {list(patterns or [])} '
                                 f'select only encoder layers {chosen}); the statistics need decoder queries. '
                                 f'Decoder layers: {", ".join(every) or "none"}')
    return decoder


class AttentionMeasurer:
    """Measures the chosen decoder layers of one dump file against the annotations (what a worker runs)."""

    def __init__(self, ann_file: str, layers: Sequence[str], settings: AttentionSettings,
                 ground_truth: Optional[CocoGroundTruth] = None):
        self.ground_truth = ground_truth or CocoGroundTruth(ann_file)
        self.layers, self.settings = list(layers), settings

    def __call__(self, path) -> AttentionImageMeasures:
        dump = load_offset_dump(path)
        check_attention_dump(dump.path, dump.meta)
        self.ground_truth.check_images([dump.meta])
        missing = [name for name in self.layers if name not in dump.attention]
        if missing:
            raise LayerNotFoundError(f'{dump.path} lacks attention layer(s) {", ".join(missing)} that the first dump '
                                     f'has; were the dumps made by different models?')
        objects = self.ground_truth.objects(dump.img_id, masks=False)
        return measure_attention(dump.attention, dump.detections, objects, self.layers, self.settings)


def _selected_encoder_layers(dump: OffsetDump, layers: Optional[Sequence[str]]) -> List[str]:
    """The encoder layers that ``layers`` selects in ``dump``, in the dump's order."""
    if layers is None:
        return []
    selected = set(match_layer_names(dump.attention, layers, str(dump.path)))
    return [n for n, fields in dump.attention.items() if fields.role == 'encoder' and n in selected]


def analyze_attention(dump: str, ann_file: str, layers: Optional[Sequence[str]] = None,
                      settings: Optional[AttentionSettings] = None, max_images: Optional[int] = None,
                      workers: int = 1, progress: bool = False, figure_dir: Optional[str] = None) -> dict:
    """The attention statistics of the decoder layers of the dumps at ``dump`` against ``ann_file``.

    Args:
        dump: a dump directory or one ``.npz`` dump (with attention, ``tools/test.py --dump-offsets``).
        ann_file: COCO annotation JSON of the dumped images (ids, sizes and file names checked).
        layers: attention layer patterns (``deform_viz.dump.match_layer_names``); encoder layers
            among them are left out; None = every decoder layer.
        settings: see :class:`AttentionSettings`.
        max_images: only the first N dumps (in image-id order).
        workers: processes measuring images; the report is identical for any number.
        progress: show a tqdm progress bar.
        figure_dir: also draw the report's figures there (PNG,
            :mod:`deform_viz.visualization.attention_report_figures`); their paths go in ``figures``.

    Every dump's metadata is checked first (:func:`check_attention_dump`). Returns a
    JSON-serialisable dict: ``settings``, ``units``, ``num_images``, ``matching`` (detections,
    objects, matched), ``layers`` (name -> :meth:`AttentionLayerAnalysis.result`) and
    ``across_layers`` (:func:`~.analysis.attention_across_layers`), and ``skipped_encoder_layers``
    (the encoder layers ``layers`` selected, in the dump's order); with ``figure_dir``, ``figures``.
    """
    settings = settings or AttentionSettings()
    if workers < 1:
        raise ValueError(f'workers must be at least 1, got {workers}')
    check_layer_patterns(layers)
    files = dump_files(dump, max_images=max_images)
    for path in files:
        check_attention_dump(path, _meta(path))
    ground_truth = CocoGroundTruth(ann_file)
    first = load_offset_dump(files[0])
    ground_truth.check_images([first.meta])
    chosen = decoder_layers(first, layers)
    analyses = {name: AttentionLayerAnalysis(name, first.attention[name].info, settings) for name in chosen}
    factory = partial(AttentionMeasurer, ann_file, chosen, settings)
    measured = measure_dumps(files, workers=min(workers, len(files)), ground_truth=ground_truth, factory=factory)
    if progress:
        from tqdm import tqdm
        measured = tqdm(measured, total=len(files), desc='analysing', unit='image')
    matching = {'detections': 0, 'objects': 0, 'matched': 0}
    for image in measured:
        matching['detections'] += image.detections
        matching['objects'] += image.objects
        matching['matched'] += image.matched
        for name, rows in image.rows.items():
            analyses[name].add(rows, image.missing[name])
    results = {name: analysis.result() for name, analysis in analyses.items()}
    report = {
        'version': ATTENTION_REPORT_VERSION,
        'dump': os.path.abspath(dump),
        'ann_file': os.path.abspath(ann_file),
        'num_images': len(files),
        'settings': settings.as_dict(),
        'units': ATTENTION_UNITS,
        'matching': matching,
        'skipped_encoder_layers': _selected_encoder_layers(first, layers),
        'layers': results,
        'across_layers': attention_across_layers(results),
    }
    if figure_dir is not None:
        from ..visualization.attention_report_figures import write_attention_report_figures
        report['figures'] = write_attention_report_figures(report, {n: a.rows for n, a in analyses.items()},
                                                           figure_dir)
    return report


# ---------------------------------------------------------------------- markdown
def _inward(part: dict) -> str:
    inward, sign = part['inward'], part['inward']['sign_test']
    if not inward['count']:
        return 'n/a (0)'
    return f'{_ms(inward, 3, "sem")} · {sign["positive"]}/{sign["count"]} inward, p = {_p(sign["p_greater"])}'


def _spread(measure: Optional[dict], digits: int = 2) -> str:
    if measure is None:
        return '(2-d reference)'
    if not measure['count']:
        return 'n/a (0)'
    test = measure['vs_size']
    rho = 'n/a' if test['rho'] is None else f'{test["rho"]:+.3f}'
    return f'{_ms(measure, digits)} · rho {rho} (p = {_p(test["p_value"])})'


def _table(rows: List[tuple], first: str) -> List[str]:
    out = [f'| {first} | queries | inward mean offset (px) | spread (px) vs size | '
           'spread / sqrt(ref w h) vs size |', '|---|---|---|---|---|']
    for label, count, part in rows:
        out.append(f'| {label} | {count} | {_inward(part)} | {_spread(part["spread"])} | '
                   f'{_spread(part["normalised_spread"], 3)} |')
    return out


def _claims(across: dict) -> str:
    def pair(claim, yes, no):
        c = across[claim]
        return f'{yes} in {c["supporting"]} ({no} in {c["contradicting"]}) of {c["tested"]}'
    return (f'{pair("inward", "the mean offset points inwards", "outwards")}; '
            f'{pair("spread_grows_with_size", "the spread grows with object size", "shrinks")}; '
            f'{pair("normalised_spread_grows_with_size", "the normalised spread grows", "shrinks")}')


def format_attention_markdown(report: dict) -> str:
    """Two tables over the decoder layers (pooled levels, then each level) and the across-layer counts."""
    m, s = report['matching'], report['settings']
    layers = report['layers']
    out = [f'## Decoder attention against the objects ({_count(report["num_images"], "image")})', '',
           f'{m["matched"]} of {m["detections"]} detections matched to {m["objects"]} ground-truth objects '
           f'(class-agnostic, greedy by score, one-to-one, IoU >= {s["iou_threshold"]:g}); their queries measured '
           f'over heads and points with the attention weights normalised over the query (per level: over the '
           f'level), in original-image px. Inward: mean ± s.e. of the weighted mean offset towards the object\'s '
           f'box centre, queries with inward offsets, one-sided sign-test p (ties: |inward| <= '
           f'{_fixed(s["inward_tie"], 3)} px, or a reference point within {s["centre_tie"]:g} px of the centre). '
           f'Spread: weighted RMS distance of the points from their mean, mean ± std; rho: Spearman with '
           f'sqrt(object area), two-sided permutation p. For 4-d references the spread over sqrt(w x h) of the '
           f'reference box, since mmcv scales the offsets with it.', '']
    out += _table([(name, r['num_queries'], r['pooled']) for name, r in layers.items()], 'layer, pooled levels')
    out += ['', '### Per level', '']
    out += _table([(f'{name} · level {k}', r['num_queries'], part) for name, r in layers.items()
                   for k, part in enumerate(r['levels'])], 'layer · level')
    across = report['across_layers']
    out += ['', f'Across layers ({across["correction"]}, one-sided): {_claims(across)}.',
            f'Per level ({across["per_level"]["correction"]}): {_claims(across["per_level"])}.']
    if report.get('skipped_encoder_layers'):
        out += ['', f'Encoder layers left out: {", ".join(report["skipped_encoder_layers"])}.']
    if report.get('figures'):
        out += ['', 'Figures: ' + ', '.join(report['figures'])]
    return '\n'.join(out) + '\n'

