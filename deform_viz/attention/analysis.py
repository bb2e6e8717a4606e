"""The "revisiting" paper's decomposition carried over to deformable attention: per decoder query
matched to a ground-truth object, where its sampling points go (the d_f analogue) and how far
they spread (the d_k analogue).

Definitions (``units`` of the report). A detection is matched to a ground-truth box
class-agnostically, greedily by score and one-to-one (each object and each decoder query at most
once) when their IoU is at least ``iou_threshold``; the query that produced it is measured in every
chosen decoder layer that stored it. Over the heads and points of one level (``levels``), or of all
levels (``pooled``), with the attention weights normalised to sum to one there:

* **mean offset** m: the weighted mean of the sampling locations minus the reference point,
  original-image px; **inward** = m . unit(object's box centre - reference point). A reference point
  within ``centre_tie`` px of the centre has no direction: inward is 0, a tie.
* **spread**: the weighted RMS distance of the sampling points from their weighted mean, px.
* **normalised spread** (4-d references: box refinement, two-stage, DINO): spread / sqrt(w x h) of the
  reference box. mmcv scales these offsets with the reference box, so a spread that grows with the
  box is built in; the normalised spread is what the network learned on top.

Tests, per layer and level: the one-sided sign test of inward across queries (``|inward| <=
inward_tie`` are ties) and Spearman's rho of sqrt(object box area) with the spread against the null
of sizes shuffled among queries (:func:`~deform_viz.analysis.statistics.permutation_spearman`).
Primary: the pooled levels, Holm over the decoder layers; secondary: each level, Holm over layers x
levels.
"""
from dataclasses import asdict, dataclass
from typing import Dict, Mapping, Optional, Sequence

import numpy as np
import torch

from ..analysis.annotations import ImageObjects
from ..analysis.fields import OffsetInputError
from ..analysis.statistics import Moments, holm, mean_with_error, permutation_spearman, sign_test
from .fields import AttentionFields, Detections

__all__ = ['AttentionSettings', 'AttentionImageMeasures', 'AttentionLayerAnalysis', 'ATTENTION_UNITS',
           'ROW_COLUMNS', 'match_detections', 'query_measures', 'measure_attention', 'attention_across_layers']

ALPHA = 0.05
ATTENTION_UNITS = {
    'inward': 'original-image px: the weighted mean offset of the sampling points from the reference point, '
              "projected on the unit vector towards the matched object's box centre",
    'offset_length': 'original-image px: the length of that weighted mean offset',
    'spread': 'original-image px: weighted RMS distance of the sampling points from their weighted mean',
    'normalised_spread': 'dimensionless: spread / sqrt(w x h) of the reference box (4-d references only)',
    'size': "original-image px: sqrt of the matched ground-truth box's area",
}
#: per matched query: (n,) columns, and (n, L + 1) columns (levels, then pooled)
ROW_COLUMNS = ('query', 'sqrt_area', 'iou', 'score', 'centre_distance')
LEVEL_COLUMNS = ('inward', 'offset_length', 'spread', 'normalised_spread')
CLAIMS = ('inward', 'spread_grows_with_size', 'normalised_spread_grows_with_size')


@dataclass(frozen=True)
class AttentionSettings:
    """Choices of the attention statistics; every one is recorded in the report."""
    iou_threshold: float = 0.5
    centre_tie: float = 1.0    # px: a reference point closer to the object's centre has no inward direction
    inward_tie: float = 1e-3   # px: a smaller |inward| is a tie in the sign test
    permutations: int = 999
    seed: int = 0

    def __post_init__(self):
        if not 0 < self.iou_threshold <= 1:
            raise ValueError(f'iou_threshold must be in (0, 1], got {self.iou_threshold}')
        if not self.centre_tie >= 0:
            raise ValueError(f'centre_tie must be non-negative, got {self.centre_tie}')
        if not self.inward_tie >= 0:
            raise ValueError(f'inward_tie must be non-negative, got {self.inward_tie}')
        if self.permutations < 1:
            raise ValueError(f'permutations must be at least 1, got {self.permutations}')

    def as_dict(self) -> dict:
        return asdict(self)


def match_detections(bboxes: np.ndarray, scores: np.ndarray, gt_boxes: np.ndarray, iou_threshold: float = 0.5,
                     queries: Optional[np.ndarray] = None):
    """Greedy one-to-one matching by score, class-agnostic: each detection, best first, takes the
    unmatched ground-truth box it overlaps most if their IoU is at least ``iou_threshold``. With
    ``queries`` (D,) a detection whose query already has an object is passed over.

    Boxes x1, y1, x2, y2 in one frame: ``bboxes`` (D, 4), ``gt_boxes`` (G, 4); IoU by mmdet's
    ``bbox_overlaps``. Returns (detection indices, ground-truth indices, IoUs), each (K,).
    """
    from mmdet.structures.bbox import bbox_overlaps
    none = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    if not len(bboxes) or not len(gt_boxes):
        return none
    ious = bbox_overlaps(torch.as_tensor(np.asarray(bboxes, np.float64).reshape(-1, 4)),
                         torch.as_tensor(np.asarray(gt_boxes, np.float64).reshape(-1, 4))).numpy()
    taken = np.zeros(ious.shape[1], bool)
    used_queries = set()
    out = []
    for d in np.argsort(-np.asarray(scores), kind='stable'):
        if queries is not None and int(queries[d]) in used_queries:
            continue
        free = np.where(taken, -1.0, ious[d])
        g = int(free.argmax())
        if free[g] < iou_threshold:
            continue
        taken[g] = True
        if queries is not None:
            used_queries.add(int(queries[d]))
        out.append((int(d), g, float(ious[d, g])))
    if not out:
        return none
    d, g, iou = zip(*out)
    return np.array(d, np.int64), np.array(g, np.int64), np.array(iou)


def _weighted(offsets: np.ndarray, weights: np.ndarray):
    """Weighted mean (n, 2) and RMS spread around it (n,) of points (n, K, 2) with weights (n, K)
    normalised over K; NaN where the weights sum to zero."""
    total = weights.sum(-1, keepdims=True)
    weights = weights / np.where(total > 0, total, np.nan)
    mean = (weights[..., None] * offsets).sum(-2)
    spread = np.sqrt((weights * np.square(offsets - mean[:, None]).sum(-1)).sum(-1))
    return mean, spread


def query_measures(fields: AttentionFields, rows: np.ndarray, centres: np.ndarray,
                   centre_tie: float = 1.0) -> Dict[str, np.ndarray]:
    """The measures of the queries in ``rows`` of ``fields`` against object centres (n, 2) (x, y) px.

    Returns :data:`LEVEL_COLUMNS` -> (n, L + 1): levels 0..L-1, then pooled over all levels;
    ``normalised_spread`` is NaN for 2-d references; and ``centre_distance`` (n,) px.
    """
    reference = fields.reference[rows].astype(np.float64)                  # (n, 2 | 4)
    offsets = fields.offsets[rows].astype(np.float64)                      # (n, M, L, P, 2)
    weights = fields.weights[rows].astype(np.float64)                      # (n, M, L, P)
    n, _, levels, _ = weights.shape
    to_centre = np.asarray(centres, np.float64).reshape(-1, 2) - reference[:, :2]
    distance = np.hypot(to_centre[:, 0], to_centre[:, 1])
    unit = np.where((distance >= max(centre_tie, 1e-12))[:, None], to_centre / np.maximum(distance, 1e-12)[:, None], 0)
    if reference.shape[1] == 4:
        scale = np.sqrt(reference[:, 2] * reference[:, 3])
        scale = np.where(scale > 0, scale, np.nan)
    else:
        scale = np.full(n, np.nan)
    out = {name: np.zeros((n, levels + 1)) for name in LEVEL_COLUMNS}
    parts = [(offsets[:, :, level].reshape(n, -1, 2), weights[:, :, level].reshape(n, -1)) for level in range(levels)]
    parts.append((offsets.reshape(n, -1, 2), weights.reshape(n, -1)))
    for k, (points, w) in enumerate(parts):
        mean, spread = _weighted(points, w)
        out['inward'][:, k] = (mean * unit).sum(-1)
        out['offset_length'][:, k] = np.hypot(mean[:, 0], mean[:, 1])
        out['spread'][:, k] = spread
        out['normalised_spread'][:, k] = spread / scale
    out['centre_distance'] = distance
    return out


@dataclass
class AttentionImageMeasures:
    """One image: ``detections``, ``objects`` (ground truth, crowd excluded) and ``matched`` counts;
    ``rows``: decoder layer -> :data:`ROW_COLUMNS` (n,) and :data:`LEVEL_COLUMNS` (n, L + 1) for the
    matched queries it stored; ``missing``: layer -> matched queries it did not store."""
    detections: int
    objects: int
    matched: int
    rows: Dict[str, Dict[str, np.ndarray]]
    missing: Dict[str, int]


def measure_attention(attention: Mapping[str, AttentionFields], detections: Detections, objects: ImageObjects,
                      layers: Optional[Sequence[str]] = None,
                      settings: AttentionSettings = AttentionSettings()) -> AttentionImageMeasures:
    """Match one image's detections to its objects and measure their queries in the decoder
    ``layers`` of ``attention`` (default: every decoder layer), everything in original-image px."""
    if not detections.linked:
        raise OffsetInputError(f'image {objects.image_id}: its detections are not linked to the decoder queries '
                               'that produced them (detections.linked is false), so no query can be matched to '
                               'an object')
    layers = [n for n, f in attention.items() if f.role == 'decoder'] if layers is None else list(layers)
    for name in layers:
        if attention[name].role != 'decoder':
            raise OffsetInputError(f'{name} is an encoder layer: the statistics need decoder queries')
    det, gt, iou = match_detections(detections.bboxes, detections.scores, objects.boxes, settings.iou_threshold,
                                    detections.queries)
    queries = detections.queries[det]
    boxes = objects.boxes[gt]
    centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], -1)
    per_query = dict(query=queries, sqrt_area=objects.sqrt_areas[gt], iou=iou,
                     score=detections.scores[det].astype(np.float64))
    rows, missing = {}, {}
    for name in layers:
        fields = attention[name]
        where = fields.rows_of(queries) if len(queries) else np.zeros(0, np.int64)
        stored = where >= 0
        measures = query_measures(fields, where[stored], centres[stored], settings.centre_tie)
        rows[name] = {**{k: np.asarray(v)[stored] for k, v in per_query.items()}, **measures}
        missing[name] = int((~stored).sum())
    return AttentionImageMeasures(len(detections), objects.num_objects, int(len(det)), rows, missing)


def _finite(*arrays):
    keep = np.all([np.isfinite(a) for a in arrays], axis=0)
    return [a[keep] for a in arrays]


class AttentionLayerAnalysis:
    """One decoder layer's matched queries over images (rows kept in the order added), tested in
    :meth:`result`; usable on in-memory fields::

        analysis = AttentionLayerAnalysis(name, fields.info, settings)
        for attention, detections, objects in images:
            analysis.add(measure_attention(attention, detections, objects, [name], settings).rows[name])
    """

    def __init__(self, name: str, info: Optional[dict] = None, settings: AttentionSettings = AttentionSettings()):
        self.name, self.info, self.settings = name, dict(info or {}), settings
        self._rows = []
        self.missing = 0

    def add(self, rows: Mapping[str, np.ndarray], missing: int = 0) -> None:
        self._rows.append({k: np.asarray(v) for k, v in rows.items()})
        self.missing += int(missing)

    @property
    def rows(self) -> Dict[str, np.ndarray]:
        """:data:`ROW_COLUMNS` (n,) and :data:`LEVEL_COLUMNS` (n, L + 1) over every query added."""
        levels = int(self.info.get('num_levels', 0)) + 1
        out = {}
        for k in ROW_COLUMNS + LEVEL_COLUMNS:
            parts = [r[k] for r in self._rows]
            out[k] = np.concatenate(parts) if parts else np.zeros((0, levels) if k in LEVEL_COLUMNS else 0)
        return out

    def _part(self, rows: Dict[str, np.ndarray], column: int) -> dict:
        size = rows['sqrt_area']
        inward, = _finite(rows['inward'][:, column])
        permute = dict(permutations=self.settings.permutations, seed=self.settings.seed)
        out = {'inward': {**mean_with_error(inward), 'median': float(np.median(inward)) if inward.size else None,
                          'sign_test': sign_test(inward, self.settings.inward_tie)},
               'offset_length': Moments.of(_finite(rows['offset_length'][:, column])[0]).summary()}
        for key in ('spread', 'normalised_spread'):
            if key == 'normalised_spread' and self.info.get('reference_dim') != 4:
                out[key] = None
                continue
            x, y = _finite(size, rows[key][:, column])
            out[key] = {**Moments.of(y).summary(), 'vs_size': permutation_spearman(x, y, **permute)}
        return out

    def result(self) -> dict:
        rows = self.rows
        levels = int(self.info.get('num_levels', rows['inward'].shape[1] - 1))
        return {
            'layer': {k: self.info.get(k) for k in ('type', 'role', 'num_heads', 'num_levels', 'num_points',
                                                    'reference_dim')},
            'num_queries': int(rows['sqrt_area'].size),
            'not_stored': self.missing,
            'centre_ties': int((rows['centre_distance'] < self.settings.centre_tie).sum()),
            'size': Moments.of(rows['sqrt_area']).summary(),
            'pooled': self._part(rows, levels),
            'levels': [self._part(rows, level) for level in range(levels)],
        }


def _claim_test(part: dict, claim: str) -> Optional[dict]:
    if claim == 'inward':
        return part['inward']['sign_test']
    measure = part['spread' if claim == 'spread_grows_with_size' else 'normalised_spread']
    return None if measure is None else measure['vs_size']


def _count(greater: list, less: list, tests: list) -> dict:
    return {'supporting': sum(p is not None and p < ALPHA for p in greater),
            'contradicting': sum(p is not None and p < ALPHA for p in less),
            'tested': sum(t is not None and t.get('p_greater') is not None for t in tests)}


def attention_across_layers(results: Dict[str, dict]) -> dict:
    """How many layers support or contradict each claim, one-sided p-values Holm-corrected: the
    mean offset points inwards (contradicting: outwards), the spread and the normalised spread grow
    with object size (contradicting: shrink). Primary: pooled levels, Holm over the layers;
    ``per_level``: Holm over layers x levels."""
    names = list(results)
    out = {'correction': f'Holm over the {len(names)} decoder layers, alpha {ALPHA}', 'num_layers': len(names)}
    level_pairs = [(name, k) for name in names for k in range(len(results[name]['levels']))]
    per_level = {'correction': f'Holm over the {len(level_pairs)} layer x level pairs, alpha {ALPHA}',
                 'num_tests': len(level_pairs)}
    for claim in CLAIMS:
        tests = [_claim_test(results[name]['pooled'], claim) for name in names]
        greater = holm([t and t['p_greater'] for t in tests])
        less = holm([t and t['p_less'] for t in tests])
        out[claim] = {**_count(greater, less, tests),
                      'p_greater_holm': dict(zip(names, greater)), 'p_less_holm': dict(zip(names, less))}
        tests = [_claim_test(results[name]['levels'][k], claim) for name, k in level_pairs]
        greater = holm([t and t['p_greater'] for t in tests])
        less = holm([t and t['p_less'] for t in tests])
        by_layer = {name: {'p_greater_holm': [], 'p_less_holm': []} for name in names}
        for (name, _), g, s in zip(level_pairs, greater, less):
            by_layer[name]['p_greater_holm'].append(g)
            by_layer[name]['p_less_holm'].append(s)
        per_level[claim] = {**_count(greater, less, tests), 'layers': by_layer}
    out['per_level'] = per_level
    return out
