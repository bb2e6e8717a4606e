"""The attention part of the dump format (version 2 of :mod:`deform_viz.dump`).

A dump of a model with ``MultiScaleDeformableAttention`` layers (Deformable DETR, DINO) holds,
next to the conv layers of version 1, two more entries in ``__meta__`` and their arrays:

``attention``: for each recorded attention module (by its name in ``model.named_modules()``)

==================  =============================================================================
key                 meaning
==================  =============================================================================
``type``            class name (``MultiScaleDeformableAttention``)
``role``            ``'encoder'`` (self-attention: one query per feature-map cell) or ``'decoder'``
                    (cross-attention of the object queries)
``num_heads``,      the module's heads, feature levels and points per level and head
``num_levels``,
``num_points``
``reference_dim``   2 (reference points) or 4 (reference boxes: two-stage, refine, DINO)
``spatial_shapes``  [H, W] of each level's feature map, padded batch grid (as mmcv receives it)
``valid_ratios``    [rw, rh] of each level for this image (valid cells / cells, as mmdet)
``level_strides``   [sy, sx] network-input pixels per cell of each level
``num_queries``     how many queries the module ran for this image
``query_stride``    encoder: the stored lattice takes every ``query_stride``-th cell of each level's
                    valid region, in both directions (1: the full field); decoder: null
``components``      the stored arrays, ``queries``, ``reference``, ``offsets``, ``weights``
==================  =============================================================================

Arrays (n stored queries, M heads, L levels, P points; coordinates (x, y) as mmcv and mmdet's
boxes, in *original-image pixels*):

============== ================== ============================================================
``queries``    (n,) int32         decoder: the query index; encoder: the index in the
                                  level-concatenated sequence (``sum(H * W)`` cells)
``reference``  (n, 2) / (n, 4)    the reference point (x, y) or box (cx, cy, w, h), float32
``offsets``    (n, M, L, P, 2)    sampling locations minus the reference point (x, y)
``weights``    (n, M, L, P)       attention weights (softmax over levels and points per head)
============== ================== ============================================================

Normalized coordinates go to pixels as mmdet decodes its boxes: a fraction of the valid region of
the level (``u / valid_ratio * img_shape``), divided by ``scale_factor``. When ``flip`` is true the
coordinates are in the flipped image's frame, as the network saw it.

``detections``: ``{'count': D, 'linked': bool}`` with arrays ``__detections__/bboxes`` (D, 4)
x1, y1, x2, y2 in original-image pixels, ``__detections__/scores`` (D,), ``__detections__/labels``
(D,) int32 and ``__detections__/queries`` (D,) int32: the decoder query that produced each
detection (-1 where it could not be told, ``linked`` false then).
"""
import math
from typing import Dict, Mapping, Optional, Sequence

import numpy as np

__all__ = ['ATTENTION_COMPONENTS', 'ATTENTION_KEYS', 'DETECTION_PREFIX', 'DETECTION_ARRAYS',
           'check_attention', 'attention_array_shape', 'encoder_lattice', 'attention_bytes_per_image']

ATTENTION_COMPONENTS = ('queries', 'reference', 'offsets', 'weights')
ATTENTION_KEYS = ('type', 'role', 'num_heads', 'num_levels', 'num_points', 'reference_dim',
                  'spatial_shapes', 'valid_ratios', 'level_strides', 'num_queries', 'query_stride',
                  'components')
ROLES = ('encoder', 'decoder')
DETECTION_PREFIX = '__detections__'
DETECTION_ARRAYS = ('bboxes', 'scores', 'labels', 'queries')
_INTEGER = ('queries', 'labels')


def attention_array_shape(component: str, info: Mapping, count: int) -> tuple:
    """The shape ``component`` of an attention layer with ``info`` has for ``count`` queries."""
    heads, levels, points = (int(info[k]) for k in ('num_heads', 'num_levels', 'num_points'))
    if component == 'queries':
        return (count, )
    if component == 'reference':
        return (count, int(info['reference_dim']))
    if component == 'offsets':
        return (count, heads, levels, points, 2)
    if component == 'weights':
        return (count, heads, levels, points)
    raise KeyError(component)


def _dtype_problem(key: str, array: np.ndarray, integer: bool) -> Optional[str]:
    kind = array.dtype.kind
    if integer and kind not in 'iu':
        return f'array {key!r} has dtype {array.dtype}, expected integers'
    if not integer and kind != 'f':
        return f'array {key!r} has dtype {array.dtype}, expected floating point'
    return None


def check_attention(meta: Mapping, arrays: Mapping[str, np.ndarray]) -> set:
    """Check the attention and detection sections of a dump; returns the array keys they describe.

    Raises ``ValueError`` with the problem (the caller names the file).
    """
    section = meta.get('attention')
    if not isinstance(section, dict):
        raise ValueError('"attention" in the metadata is not an object')
    described = set()
    for name, info in section.items():
        if not isinstance(info, dict):
            raise ValueError(f'attention layer {name!r}: metadata is not an object')
        missing = [k for k in ATTENTION_KEYS if k not in info]
        if missing:
            raise ValueError(f'attention layer {name!r}: metadata lacks {missing}')
        if info['role'] not in ROLES:
            raise ValueError(f'attention layer {name!r}: role {info["role"]!r} is not one of {list(ROLES)}')
        if info['reference_dim'] not in (2, 4):
            raise ValueError(f'attention layer {name!r}: reference_dim must be 2 or 4')
        if list(info['components']) != list(ATTENTION_COMPONENTS):
            raise ValueError(f'attention layer {name!r}: components {info["components"]} are not '
                             f'{list(ATTENTION_COMPONENTS)}')
        key = f'{name}/queries'
        if key not in arrays:
            raise ValueError(f'array {key!r} is missing')
        count = int(arrays[key].shape[0]) if arrays[key].ndim == 1 else -1
        for component in ATTENTION_COMPONENTS:
            key = f'{name}/{component}'
            described.add(key)
            if key not in arrays:
                raise ValueError(f'array {key!r} is missing')
            try:
                want = attention_array_shape(component, info, count)
            except (TypeError, ValueError) as e:
                raise ValueError(f'attention layer {name!r}: malformed metadata ({e})') from None
            if tuple(arrays[key].shape) != want:
                raise ValueError(f'array {key!r} has shape {tuple(arrays[key].shape)}, its layer '
                                 f'metadata implies {want}')
            problem = _dtype_problem(key, arrays[key], component in _INTEGER)
            if problem:
                raise ValueError(problem)
        queries = arrays[f'{name}/queries']
        if queries.size and (queries.min() < 0 or queries.max() >= int(info['num_queries'])):
            raise ValueError(f'array {name + "/queries"!r} holds indices outside [0, {info["num_queries"]})')
    detections = meta.get('detections')
    if not isinstance(detections, dict) or 'count' not in detections or 'linked' not in detections:
        raise ValueError('"detections" in the metadata is not an object with count and linked')
    count = int(detections['count'])
    for part in DETECTION_ARRAYS:
        key = f'{DETECTION_PREFIX}/{part}'
        described.add(key)
        if key not in arrays:
            raise ValueError(f'array {key!r} is missing')
        want = (count, 4) if part == 'bboxes' else (count, )
        if tuple(arrays[key].shape) != want:
            raise ValueError(f'array {key!r} has shape {tuple(arrays[key].shape)}, expected {want}')
        problem = _dtype_problem(key, arrays[key], part in _INTEGER)
        if problem:
            raise ValueError(problem)
    return described


def encoder_lattice(valid_size: int, stride: int) -> np.ndarray:
    """The stored cells along one axis of a level's valid region: every ``stride``-th cell, the
    lattice centred in the region (the cells left over split evenly between both ends)."""
    if valid_size <= 0:
        return np.zeros(0, dtype=np.int64)
    start = ((valid_size - 1) % stride) // 2
    return np.arange(start, valid_size, stride, dtype=np.int64)


def attention_bytes_per_image(image_shape: Sequence[int] = (800, 1333), level_strides: Sequence[int] = (8, 16, 32, 64),
                              num_heads: int = 8, num_points: int = 4, encoder_layers: int = 6,
                              decoder_layers: int = 6, decoder_queries: int = 300, encoder_stride: int = 8,
                              reference_dim: int = 2, dtype_bytes: int = 2) -> Dict[str, int]:
    """The array bytes an attention dump holds for one image (computed from the shapes, not timed).

    Defaults: a COCO-size image (800 x 1333) and mmdet's Deformable DETR (8 heads, 4 levels at
    strides 8-64, 4 points, 6 + 6 layers, 300 queries) with the hook's defaults (``dtype`` float16,
    ``encoder_stride`` 8, every decoder query). Returns ``encoder``, ``decoder`` and ``total``
    bytes (``encoder_queries`` the stored encoder queries per layer); the file adds its metadata
    and a few hundred bytes per array.
    """
    levels = len(level_strides)
    per_query = {
        2: 4 + 2 * 4 + num_heads * levels * num_points * (2 + 1) * dtype_bytes,
        4: 4 + 4 * 4 + num_heads * levels * num_points * (2 + 1) * dtype_bytes,
    }
    encoder_queries = 0
    for stride in level_strides:
        rows = math.ceil(image_shape[0] / stride)
        cols = math.ceil(image_shape[1] / stride)
        encoder_queries += len(encoder_lattice(rows, encoder_stride)) * len(encoder_lattice(cols, encoder_stride))
    encoder = encoder_layers * encoder_queries * per_query[2]
    decoder = decoder_layers * decoder_queries * per_query[reference_dim]
    return dict(encoder=encoder, decoder=decoder, total=encoder + decoder, encoder_queries=encoder_queries)
