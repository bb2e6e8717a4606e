"""Where one deformable-attention query samples the shown image: the geometry of the attention
figures (:mod:`.attention_figures`) and of the browser page (:mod:`.browser`).

A :class:`QueryPoints` holds one query of one ``MultiScaleDeformableAttention`` layer of a dump
(:mod:`deform_viz.attention.format`): its sampling locations (the reference point plus the stored
offsets), attention weights, reference point and box. :func:`detection_points` gives the decoder
query that produced a detection, :func:`pixel_points` the stored encoder query nearest to a pixel
and :func:`encoder_points` an encoder query by its row. Coordinates are original-image pixels in
the frame of the image file: :func:`to_display` undoes a flip of the network input (dumps hold
them as the network saw the image). :func:`level_colours` and :func:`weight_areas` are the colour
of a feature level and the marker area of an attention weight, for the figures and the page alike.
"""
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..analysis.fields import OffsetInputError
from ..dump import match_layer_names

__all__ = ['AttentionInputError', 'QueryPoints', 'LEVEL_COLOURS', 'MEAN_AREA', 'MIN_AREA', 'level_colours',
           'weight_areas', 'to_display', 'box_to_display', 'attention_layer_names', 'linked_detections',
           'detection_points', 'encoder_points', 'encoder_queries', 'pixel_points', 'nearest_query']

#: one colour per feature level (finest first), the figures' and the browser's
LEVEL_COLOURS = ('#e41a1c', '#377eb8', '#4daf4a', '#984ea3', '#ff7f00', '#a65628', '#f781bf', '#17becf')
#: marker area (pt^2) of a point with its head's mean weight, 1 / (levels * points)
MEAN_AREA = 16.0
MIN_AREA = 1.0


class AttentionInputError(OffsetInputError):
    """A dump, an attention layer choice, a detection or a pixel cannot be drawn as asked."""


def level_colours(num_levels: int) -> List[str]:
    """Hex colour of each feature level."""
    return [LEVEL_COLOURS[k % len(LEVEL_COLOURS)] for k in range(num_levels)]


def weight_areas(weights: np.ndarray, num_levels: int, num_points: int) -> np.ndarray:
    """Marker areas (pt^2) of attention weights: proportional to the weight, :data:`MEAN_AREA` at a
    head's mean weight 1 / (levels * points), never below :data:`MIN_AREA`."""
    return np.maximum(MEAN_AREA * np.asarray(weights, np.float64) * num_levels * num_points, MIN_AREA)


def to_display(meta: dict, xy) -> np.ndarray:
    """(..., 2) points (x, y) of a dump (original-image pixels in the network input's frame) in the
    frame of the image file: a flip undone (mmdet flips the resized image)."""
    xy = np.array(xy, dtype=np.float64)
    if not meta.get('flip'):
        return xy
    direction = meta.get('flip_direction') or 'horizontal'
    h, w = (float(v) for v in meta['img_shape'][:2])
    sx, sy = (float(v) for v in meta['scale_factor'][:2])
    if direction in ('horizontal', 'diagonal'):
        xy[..., 0] = w / sx - xy[..., 0]
    if direction in ('vertical', 'diagonal'):
        xy[..., 1] = h / sy - xy[..., 1]
    return xy


def box_to_display(meta: dict, boxes) -> np.ndarray:
    """(..., 4) boxes x1, y1, x2, y2 in the image file's frame (corners re-ordered after a flip)."""
    boxes = np.asarray(boxes, np.float64)
    corners = to_display(meta, boxes.reshape(boxes.shape[:-1] + (2, 2)))
    return np.concatenate([corners.min(-2), corners.max(-2)], -1)


@dataclass
class QueryPoints:
    """The sampling points of one attention query, in the image file's pixels.

    ``xy`` (M, L, P, 2) locations (x, y); ``weights`` (M, L, P); ``reference`` (2,) the reference
    point; ``reference_box`` (4,) x1, y1, x2, y2 of a 4-d reference, else None. Decoder queries
    carry their ``detection`` (index in the dump's detections), its ``box``, ``score`` and ``label``;
    encoder queries their ``cell`` (level, row, col) and the ``pixel`` they were chosen for, if any.
    """
    layer: str
    role: str
    query: int
    row: int
    xy: np.ndarray
    weights: np.ndarray
    reference: np.ndarray
    reference_box: Optional[np.ndarray] = None
    detection: Optional[int] = None
    box: Optional[np.ndarray] = None
    score: Optional[float] = None
    label: Optional[int] = None
    cell: Optional[Tuple[int, int, int]] = None
    pixel: Optional[Tuple[float, float]] = None

    @property
    def shape(self) -> Tuple[int, int, int]:
        """(heads, levels, points)."""
        return tuple(self.weights.shape)

    @property
    def areas(self) -> np.ndarray:
        """(M, L, P) marker areas (pt^2) of the weights (:func:`weight_areas`)."""
        return weight_areas(self.weights, self.shape[1], self.shape[2])

    def selected(self, heads: Optional[Sequence[int]] = None, levels: Optional[Sequence[int]] = None):
        """(xy (K, 2), weights (K,), level (K,), head (K,)) of the chosen heads and levels (None: all),
        in (head, level, point) order."""
        m, lv, p = self.shape
        head, level, _ = np.meshgrid(np.arange(m), np.arange(lv), np.arange(p), indexing='ij')
        keep = np.ones(self.shape, bool)
        for name, chosen, count, index in (('head', heads, m, head), ('level', levels, lv, level)):
            if chosen is None:
                continue
            chosen = [int(c) for c in chosen]
            bad = [c for c in chosen if not 0 <= c < count]
            if bad:
                raise AttentionInputError(f'{self.layer} has {count} {name}s (0-{count - 1}); no {name} {bad}')
            keep &= np.isin(index, chosen)
        return self.xy[keep], self.weights[keep], level[keep], head[keep]


def attention_layer_names(dump, role: Optional[str] = None, patterns=None) -> List[str]:
    """The attention layers of ``dump`` of ``role`` ('encoder', 'decoder' or None: both) that
    ``patterns`` select (None: all, in model order)."""
    if not dump.attention:
        conv = f'; it has {len(dump.layers)} conv layer(s): draw those with tools/visualize_offsets.py' \
            if dump.layers else ''
        raise AttentionInputError(f'{dump.path}: the dump holds no attention layers (they are recorded for '
                                  f'models with MultiScaleDeformableAttention, format version 2){conv}')
    names = [n for n, f in dump.attention.items() if role is None or f.role == role]
    if not names:
        raise AttentionInputError(f'{dump.path}: the dump has no {role} attention layers; '
                                  f'it has {", ".join(dump.attention)}')
    kind = 'attention layer' if role is None else f'{role} attention layer'
    return match_layer_names(names, patterns, where=str(dump.path), kind=kind)


def linked_detections(dump, count: Optional[int] = None) -> List[int]:
    """Indices of the ``count`` best-scoring detections linked to a decoder query, best first."""
    detections = dump.detections
    if detections is None or not len(detections):
        raise AttentionInputError(f'{dump.path}: the dump holds no detections, so no decoder query to draw')
    order = [int(d) for d in detections.top() if detections.queries[d] >= 0]
    if not order:
        raise AttentionInputError(f'{dump.path}: none of its {len(detections)} detections is linked to a decoder '
                                  f'query (the head\'s top-k could not be repeated); draw encoder pixels instead')
    return order if count is None else order[:count]


def detection_points(dump, layer: str, detection: int) -> QueryPoints:
    """The points of decoder layer ``layer`` for the query that produced detection ``detection``
    (an index into ``dump.detections``)."""
    fields = dump.attention[layer]
    if fields.role != 'decoder':
        raise AttentionInputError(f'{layer} is an encoder layer; detections come from decoder queries')
    detections = dump.detections
    count = 0 if detections is None else len(detections)
    if not 0 <= int(detection) < count:
        raise AttentionInputError(f'{dump.path}: no detection {detection}; it has {count} (0-{count - 1})')
    detection = int(detection)
    query = int(detections.queries[detection])
    if query < 0:
        raise AttentionInputError(f'{dump.path}: detection {detection} is not linked to a decoder query (its '
                                  f'query is -1: the head\'s top-k could not tell which query made it)')
    row = int(fields.rows_of([query])[0])
    if row < 0:
        raise AttentionInputError(f'{dump.path}: decoder query {query} of detection {detection} is not stored '
                                  f'in {layer} (it stores {len(fields.queries)} queries)')
    meta = dump.meta
    reference = fields.reference[row].astype(np.float64)
    reference_box = None
    if reference.shape[0] == 4:
        cx, cy, w, h = reference
        reference_box = box_to_display(meta, [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    return QueryPoints(layer=layer, role='decoder', query=query, row=row,
                       xy=to_display(meta, fields.locations[row]), weights=fields.weights[row].astype(np.float64),
                       reference=to_display(meta, reference[:2]), reference_box=reference_box,
                       detection=detection, box=box_to_display(meta, detections.bboxes[detection]),
                       score=float(detections.scores[detection]), label=int(detections.labels[detection]))


def _encoder_fields(dump, layer: str):
    fields = dump.attention[layer]
    if fields.role != 'encoder':
        raise AttentionInputError(f'{layer} is a decoder layer; pixels are encoder queries')
    if not len(fields.queries):
        raise AttentionInputError(f'{dump.path}: {layer} stores no encoder queries')
    return fields


def encoder_points(dump, layer: str, row: int, pixel: Optional[Tuple[float, float]] = None) -> QueryPoints:
    """The points of the encoder query stored in row ``row`` of ``layer``."""
    fields = _encoder_fields(dump, layer)
    level, r, c = (int(v) for v in fields.encoder_cells()[row])
    return QueryPoints(layer=layer, role='encoder', query=int(fields.queries[row]), row=int(row),
                       xy=to_display(dump.meta, fields.locations[row]),
                       weights=fields.weights[row].astype(np.float64),
                       reference=to_display(dump.meta, fields.reference_point[row]), cell=(level, r, c), pixel=pixel)


def encoder_queries(dump, layer: str) -> dict:
    """Every stored encoder query of ``layer`` at once, as :func:`encoder_points` gives each: ``xy``
    (n, M, L, P, 2), ``weights`` and ``areas`` (n, M, L, P), ``reference`` (n, 2), ``cells`` (n, 3)
    level, row, column and ``queries`` (n,)."""
    fields = dump.attention[layer]
    if fields.role != 'encoder':
        raise AttentionInputError(f'{layer} is a decoder layer; pixels are encoder queries')
    weights = fields.weights.astype(np.float64)
    return {'xy': to_display(dump.meta, fields.locations), 'weights': weights,
            'areas': weight_areas(weights, *weights.shape[2:]),
            'reference': to_display(dump.meta, fields.reference_point), 'cells': fields.encoder_cells(),
            'queries': fields.queries.astype(np.int64)}


def check_pixel(dump, pixel) -> Tuple[float, float]:
    """``pixel`` as (x, y) floats; an :class:`AttentionInputError` if it lies outside the image."""
    x, y = (float(v) for v in pixel)
    h, w = (int(v) for v in dump.meta['ori_shape'][:2])
    if not (0 <= x < w and 0 <= y < h):
        raise AttentionInputError(f'pixel ({x:g}, {y:g}) lies outside image {dump.img_id}, which is {w} wide and '
                                  f'{h} high (x in [0, {w}), y in [0, {h}), original-image pixels)')
    return x, y


def nearest_query(references: np.ndarray, pixel, levels: Optional[np.ndarray] = None,
                  level: Optional[int] = None) -> int:
    """Row of the reference point (n, 2) nearest to ``pixel`` (x, y), the first of ties; ``level``
    restricts the choice to rows whose ``levels`` entry is that level."""
    d = ((np.asarray(references, np.float64) - np.asarray(pixel, np.float64)) ** 2).sum(-1)
    if level is not None:
        d = np.where(np.asarray(levels) == level, d, np.inf)
    return int(np.argmin(d))


def pixel_points(dump, layer: str, pixel, level: Optional[int] = None) -> QueryPoints:
    """The points of the stored encoder query of ``layer`` nearest to ``pixel`` (x, y, original-image
    pixels) by its reference point (its cell's centre); ``level`` restricts it to one feature level."""
    x, y = check_pixel(dump, pixel)
    fields = _encoder_fields(dump, layer)
    levels = int(fields.info['num_levels'])
    if level is not None and not 0 <= int(level) < levels:
        raise AttentionInputError(f'{layer} has {levels} levels (0-{levels - 1}); no level {level}')
    references = to_display(dump.meta, fields.reference_point)
    row = nearest_query(references, (x, y), fields.encoder_cells()[:, 0], level)
    return encoder_points(dump, layer, row, pixel=(x, y))
