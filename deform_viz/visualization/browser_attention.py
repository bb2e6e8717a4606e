"""The attention part of the browser page (:mod:`.browser`): what it embeds of the
``MultiScaleDeformableAttention`` layers of a dump (Deformable DETR, DINO).

Per image, in original-image pixels of the image file (flips undone), all from
:mod:`.attention_points`:

* the ``detections`` best detections linked to a decoder query: box, score, label, query;
* per decoder layer, for each of those detections, its query's sampling points (M, L, P, 2), their
  marker areas (:func:`~.attention_points.weight_areas`, pt^2) and weights, the reference point and,
  for 4-d references, the reference box;
* per encoder layer, for every stored encoder query, the same and its cell (level, row, column).

The page picks the embedded encoder query nearest to a clicked pixel by its reference point, as
:func:`~.attention_points.pixel_points` does, and draws what is embedded.
"""
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..dump import LayerNotFoundError
from .attention_points import attention_layer_names, box_to_display, detection_points, encoder_queries, level_colours

__all__ = ['DETECTIONS', 'attention_names', 'attention_entry', 'attention_view']

#: detections per image whose decoder queries the page embeds
DETECTIONS = 20


def attention_names(dump, patterns=None) -> List[str]:
    """The attention layers of ``dump`` that ``patterns`` select (None: all; [] for a dump without)."""
    if not dump.attention:
        if patterns is not None:
            attention_layer_names(dump, None, patterns)   # raises: names the dump
        return []
    return attention_layer_names(dump, None, patterns)


def attention_entry(dump, name: str) -> dict:
    """What the layer selector and the caption show of an attention layer."""
    info = dump.attention[name].info
    return {'name': name, 'role': info['role'], 'heads': int(info['num_heads']), 'levels': int(info['num_levels']),
            'points': int(info['num_points']), 'reference_dim': int(info['reference_dim']),
            'level_strides': info['level_strides'], 'query_stride': info['query_stride'],
            'colours': level_colours(int(info['num_levels']))}


def _chosen_detections(dump, count: int) -> List[int]:
    detections = dump.detections
    if detections is None:
        return []
    return [int(d) for d in detections.top() if detections.queries[d] >= 0][:count]


def _block(xy, areas, weights, reference, reference_box, quantised) -> dict:
    """One layer's arrays for n queries: xy (n, M, L, P, 2), areas and weights (n, M, L, P),
    reference (n, 2), reference_box (n, 4) or None."""
    return {'count': len(xy), 'shape': list(np.shape(weights)[1:]), 'xy': quantised(xy), 'area': quantised(areas),
            'weight': quantised(weights), 'reference': quantised(reference),
            'reference_box': None if reference_box is None else quantised(reference_box)}


def attention_view(dump, names: Sequence[str], detections: int, quantised) -> Optional[dict]:
    """The attention block of one image (None when ``names`` is empty); ``quantised`` is the page's
    array encoding (:func:`.browser.quantised`)."""
    if not names:
        return None
    missing = [n for n in names if n not in dump.attention]
    if missing:
        raise LayerNotFoundError(f'{dump.path} lacks attention layer(s) {", ".join(missing)} that the first dump '
                                 f'has; were the dumps made by different models?')
    chosen = _chosen_detections(dump, detections)
    found = dump.detections
    view: Dict = {'detections': {
        'index': chosen, 'count': 0 if found is None else len(found),
        'unlinked': 0 if found is None else int((found.queries < 0).sum()),
        'boxes': [box_to_display(dump.meta, found.bboxes[d]).tolist() for d in chosen],
        'scores': [float(found.scores[d]) for d in chosen], 'labels': [int(found.labels[d]) for d in chosen],
        'queries': [int(found.queries[d]) for d in chosen]}, 'layers': {}}
    for name in names:
        fields = dump.attention[name]
        shape = tuple(int(fields.info[k]) for k in ('num_heads', 'num_levels', 'num_points'))
        if fields.role == 'decoder':
            rows = [detection_points(dump, name, d) for d in chosen]

            def stack(key, tail):
                return np.array([getattr(p, key) for p in rows], np.float64).reshape((len(rows), ) + tail)
            boxes = stack('reference_box', (4, )) if fields.info['reference_dim'] == 4 else None
            view['layers'][name] = _block(stack('xy', shape + (2, )), stack('areas', shape), stack('weights', shape),
                                          stack('reference', (2, )), boxes, quantised)
        else:
            q = encoder_queries(dump, name)
            block = _block(q['xy'], q['areas'], q['weights'], q['reference'], None, quantised)
            view['layers'][name] = dict(block, cells=q['cells'].tolist(), queries=q['queries'].tolist())
    return view
