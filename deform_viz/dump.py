"""The offset dump format: one ``.npz`` file per evaluated image.

Layout of ``<dump_dir>/<img_id>.npz`` (an uncompressed numpy ``.npz``, readable with ``np.load``)::

    __meta__                   0-d unicode array holding a JSON object (see below)
    <layer>/<component>        one array per recorded field of each layer

``__meta__`` holds ``format`` ("deform-viz-offsets"), ``version`` (1), the image
(``img_id``, ``img_path``, ``ori_shape`` [h, w], ``img_shape`` [h, w] after resizing,
``pad_shape``, ``batch_input_shape``, ``scale_factor`` [sx, sy] as mmdet, ``flip``,
``flip_direction``), ``dtype`` and ``layers``: for each layer name a dict with ``type`` (class
name), ``variant`` (a key of :mod:`deform_viz.variants` such as ``'dcn-df'``; names written by
earlier versions are read as the current keys), ``kernel_size``, ``stride``, ``padding``,
``dilation`` (pairs), ``deform_groups``, ``input_stride`` / ``output_stride`` (the layer's input /
output feature map stride on the network input image, ints), ``shape`` [H, W] of the stored
(cropped) output grid, ``components`` (the stored component names) and, for Deformable Kernels,
``mode`` and ``scope``.

Components (G = deform groups, KK = kh * kw kernel taps, tap n = i * kw + j):

============== ================== =====================================================
component      shape              meaning
============== ================== =====================================================
offset         (G, KK, 2, H, W)   offsets as predicted by the layer (dy, dx)
offset_used    (G, KK, 2, H, W)   offsets the layer samples with (d_f-/d_k-only layers)
mask           (G, KK, H, W)      modulation scalars after the sigmoid (DCNv2)
kernel_offset  (KK, 2, H, W)      Deformable Kernels, local: offsets in scope cells
               (KK, 2)            Deformable Kernels, global (one set per image)
d_f            (G, 2, H, W)       mean of ``offset`` over the kernel taps
d_k            (G, KK, 2, H, W)   ``offset`` minus ``d_f``
divergence     (G, H, W)          divergence of ``d_f`` (central differences)
============== ================== =====================================================

Data offsets are in pixels of the layer's *input* feature map, dy before dx. Fields cover the
image's valid region only: output cells ``ceil(img_shape / output_stride)`` (padding removed).
When ``flip`` is true the fields are in the flipped image's frame, as the network saw them.

Files are published atomically (a temporary file in the same directory, then a rename or a hard
link), so a reader never sees a partial file and an interrupted writer leaves only complete ones.
They get the mode an ordinary file gets under the writer's umask.

Version 2 adds the sampling points of ``MultiScaleDeformableAttention`` modules and the detections
(``attention`` and ``detections`` in ``__meta__``, described in :mod:`deform_viz.attention.format`).
A file is written with the lowest version that holds its content (conv layers alone: version 1),
and both versions are read.
"""
import fnmatch
import json
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Union

import numpy as np

from .attention.fields import AttentionFields, Detections
from .attention.format import DETECTION_PREFIX, check_attention
from .fileio import write_atomically
from .variants import dkernel_variant, variant_name

__all__ = [
    'FORMAT_NAME', 'FORMAT_VERSION', 'COMPONENTS', 'OffsetDumpError', 'LayerFields', 'OffsetDump',
    'write_offset_dump', 'load_offset_dump', 'iter_offset_dumps', 'offset_dump_paths',
    'offset_dump_path', 'LayerNotFoundError', 'match_layer_names', 'check_layer_patterns',
    'image_meta', 'dump_size_bound'
]

FORMAT_NAME = 'deform-viz-offsets'
FORMAT_VERSION = 2
READ_VERSIONS = (1, 2)
META_KEY = '__meta__'
SUFFIX = '.npz'
COMPONENTS = ('offset', 'offset_used', 'mask', 'kernel_offset', 'd_f', 'd_k', 'divergence')
IMAGE_KEYS = ('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor', 'flip')
LAYER_KEYS = ('type', 'variant', 'kernel_size', 'dilation', 'deform_groups', 'input_stride',
              'output_stride', 'shape', 'components')

PathLike = Union[str, os.PathLike]


class OffsetDumpError(ValueError):
    """A file is not a readable offset dump (truncated, foreign or inconsistent)."""

    def __init__(self, path: PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f'{self.path}: {problem}')


@dataclass
class LayerFields:
    """The fields of one layer in one dump: ``arrays`` maps component name to a float32 array."""
    name: str
    info: dict
    arrays: Dict[str, np.ndarray] = field(default_factory=dict)

    def __getitem__(self, component: str) -> np.ndarray:
        try:
            return self.arrays[component]
        except KeyError:
            raise KeyError(f'layer {self.name!r} has no {component!r} in this dump; '
                           f'stored: {sorted(self.arrays)}') from None


@dataclass
class OffsetDump:
    """One image's dump: ``meta`` is the JSON metadata, ``layers`` maps layer name to fields."""
    path: Path
    meta: dict
    layers: Dict[str, LayerFields]
    attention: Dict[str, AttentionFields] = field(default_factory=dict)  # version 2: attention modules
    detections: Optional[Detections] = None  # version 2: the detections and their decoder queries

    @property
    def img_id(self):
        return self.meta['img_id']

    def __getitem__(self, layer: str) -> LayerFields:
        try:
            return self.layers[layer]
        except KeyError:
            raise KeyError(f'{self.path} has no layer {layer!r}; layers: {list(self.layers)}') from None


def expected_shape(component: str, info: Mapping) -> tuple:
    """The array shape a layer's metadata implies for ``component``."""
    groups = int(info['deform_groups'])
    taps = int(np.prod(info['kernel_size']))
    height, width = (int(v) for v in info['shape'])
    if component in ('offset', 'offset_used', 'd_k'):
        return (groups, taps, 2, height, width)
    if component == 'mask':
        return (groups, taps, height, width)
    if component == 'd_f':
        return (groups, 2, height, width)
    if component == 'divergence':
        return (groups, height, width)
    if component == 'kernel_offset':
        return (taps, 2) if info.get('mode') == 'global' else (taps, 2, height, width)
    raise KeyError(component)


def _jsonable(value):
    """Metadata values as JSON types: tuples to lists, numpy and torch numbers to Python ones."""
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if hasattr(value, 'tolist'):  # numpy arrays and scalars, torch tensors
        return _jsonable(value.tolist())
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def image_meta(sample, dtype: str, owner: str = 'OffsetDumpHook') -> dict:
    """The image part of a dump's metadata from an mmdet data sample (or its metainfo dict).

    ``dtype`` names the arrays' type; errors name ``owner`` (who asked) and the missing keys.
    """
    info = sample.metainfo if hasattr(sample, 'metainfo') else dict(sample)
    img_id = info.get('img_id')
    if img_id is None:
        if not info.get('img_path'):
            raise KeyError(f'{owner}: the data samples carry neither img_id nor '
                           'img_path; add them to the test pipeline\'s PackDetInputs meta_keys')
        img_id = Path(info['img_path']).stem
    missing = [k for k in ('img_shape', 'ori_shape') if k not in info]
    if missing:
        raise KeyError(f'{owner}: the data samples lack {missing}; keep them in the '
                       "test pipeline's PackDetInputs meta_keys")
    batch_input_shape = info.get('batch_input_shape') or info.get('pad_shape') or \
        info['img_shape']
    return _jsonable(dict(
        img_id=img_id, img_path=info.get('img_path'), ori_shape=info['ori_shape'][:2],
        img_shape=info['img_shape'][:2], pad_shape=info.get('pad_shape', batch_input_shape)[:2],
        batch_input_shape=batch_input_shape[:2], scale_factor=info.get('scale_factor', (1.0, 1.0)),
        flip=bool(info.get('flip', False)), flip_direction=info.get('flip_direction'),
        dtype=dtype))


def dump_size_bound(meta: dict, arrays: Mapping[str, np.ndarray]) -> int:
    """An upper bound of the file :func:`write_offset_dump` writes, in bytes.

    The data, a <= 256-byte npy header per array and zip64 entry records.
    """
    entries = [(key, a.nbytes) for key, a in arrays.items()]
    entries.append((META_KEY, 4 * (len(json.dumps(meta)) + 64)))
    return sum(nbytes + 256 + 2 * (len(key) + 4) + 2 * 50 + 40 for key, nbytes in entries) + 100


_LEGACY_DKERNEL = ('dk_local', 'dk_global', 'dcn_dk_local', 'dcn_dk_global')


def _current_variant(info: Mapping) -> str:
    """The :mod:`deform_viz.variants` key of a layer's metadata, also for names of earlier versions."""
    variant = str(info['variant'])
    if variant in _LEGACY_DKERNEL and 'scope' in info:  # these names lacked the scope
        return dkernel_variant(info['mode'], info['scope'], variant.startswith('dcn_'))
    return variant_name(variant)


def _check(path: PathLike, meta, arrays: Mapping[str, np.ndarray]) -> None:
    """Raise OffsetDumpError unless ``meta`` and ``arrays`` form a consistent dump."""
    if not isinstance(meta, dict):
        raise OffsetDumpError(path, f'metadata is a {type(meta).__name__}, not a JSON object')
    if meta.get('format') != FORMAT_NAME:
        raise OffsetDumpError(path, f'not a deform-viz offset dump (format {meta.get("format")!r}, '
                              f'expected {FORMAT_NAME!r})')
    version = meta.get('version')
    if version not in READ_VERSIONS:
        raise OffsetDumpError(path, f'format version {version!r} is not supported by this '
                              f'deform-viz (reads versions {list(READ_VERSIONS)})')
    missing = [k for k in IMAGE_KEYS + ('layers', ) if k not in meta]
    if missing:
        raise OffsetDumpError(path, f'metadata lacks {missing}')
    layers = meta['layers']
    if not isinstance(layers, dict):
        raise OffsetDumpError(path, '"layers" in the metadata is not an object')
    described = set()
    for name, info in layers.items():
        if not isinstance(info, dict):
            raise OffsetDumpError(path, f'layer {name!r}: metadata is not an object')
        missing = [k for k in LAYER_KEYS if k not in info]
        if missing:
            raise OffsetDumpError(path, f'layer {name!r}: metadata lacks {missing}')
        for component in info['components']:
            key = f'{name}/{component}'
            described.add(key)
            if component not in COMPONENTS:
                raise OffsetDumpError(path, f'layer {name!r}: unknown component {component!r}')
            if key not in arrays:
                raise OffsetDumpError(path, f'array {key!r} is missing')
            try:
                want = expected_shape(component, info)
            except (TypeError, ValueError) as e:
                raise OffsetDumpError(path, f'layer {name!r}: malformed metadata ({e})') from None
            got = tuple(arrays[key].shape)
            if got != want:
                raise OffsetDumpError(path, f'array {key!r} has shape {got}, its layer metadata '
                                      f'implies {want}')
            if arrays[key].dtype.kind != 'f':
                raise OffsetDumpError(path, f'array {key!r} has dtype {arrays[key].dtype}, '
                                      'expected floating point')
    if version >= 2 or 'attention' in meta:
        if version < 2:
            raise OffsetDumpError(path, f'attention data in a version {version} file (needs version 2)')
        try:
            described |= check_attention(meta, arrays)
        except ValueError as e:
            raise OffsetDumpError(path, str(e)) from None
    extra = sorted(set(arrays) - described - {META_KEY})
    if extra:
        raise OffsetDumpError(path, f'arrays not described by the metadata: {extra}')


def write_offset_dump(path: PathLike,
                      meta: dict,
                      arrays: Mapping[str, np.ndarray],
                      exclusive: bool = False) -> Optional[int]:
    """Write one image's dump to ``path`` atomically; returns the file size in bytes.

    ``meta`` is the metadata without ``format``/``version`` (added here); ``arrays`` maps
    ``'<layer>/<component>'`` to arrays, which must match the shapes ``meta['layers']`` implies
    (checked before anything is written). The file is published atomically with the mode the
    umask gives (:func:`deform_viz.fileio.write_atomically`); with ``exclusive=True`` an existing
    ``path`` is never replaced and ``None`` is returned (two writers never both publish an image).
    """
    path = Path(path)
    meta = {'format': FORMAT_NAME, 'version': 2 if 'attention' in meta else 1, **meta}
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    if META_KEY in arrays:
        raise OffsetDumpError(path, f'{META_KEY!r} is reserved for the metadata')
    _check(path, meta, arrays)
    try:
        meta_json = json.dumps(meta, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise OffsetDumpError(path, f'metadata is not JSON-serialisable ({e})') from None
    return write_atomically(path, lambda f: np.savez(f, **{META_KEY: np.array(meta_json)}, **arrays),
                            exclusive=exclusive)


def load_offset_dump(path: PathLike) -> OffsetDump:
    """Read and validate one dump file; raises OffsetDumpError naming the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'offset dump {path} does not exist')
    with open(path, 'rb') as f:
        magic = f.read(4)
    if magic != b'PK\x03\x04':
        what = 'is empty' if not magic else f'starts with {magic!r}, not the zip signature of an .npz'
        raise OffsetDumpError(path, f'not an offset dump: the file {what}')
    try:
        with np.load(path, allow_pickle=False) as npz:
            if META_KEY not in npz.files:
                raise OffsetDumpError(path, f'no {META_KEY!r} entry: not a deform-viz offset dump '
                                      f'(entries: {npz.files[:5]})')
            meta_array = npz[META_KEY]
            if meta_array.dtype.kind != 'U' or meta_array.ndim != 0:
                raise OffsetDumpError(path, f'{META_KEY!r} is not a JSON string')
            try:
                meta = json.loads(str(meta_array))
            except ValueError as e:
                raise OffsetDumpError(path, f'metadata is not valid JSON ({e})') from None
            arrays = {k: npz[k] for k in npz.files if k != META_KEY}
    except OffsetDumpError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, zipfile.LargeZipFile) as e:
        raise OffsetDumpError(path, f'cannot be read as an .npz file, truncated or corrupt '
                              f'({type(e).__name__}: {e})') from None
    _check(path, meta, arrays)
    layers = {}
    for name, info in meta['layers'].items():
        info['variant'] = _current_variant(info)
        layers[name] = LayerFields(
            name, info,
            {c: arrays[f'{name}/{c}'].astype(np.float32, copy=False) for c in info['components']})
    attention, detections = {}, None
    if 'attention' in meta:
        for name, info in meta['attention'].items():
            attention[name] = AttentionFields(
                name, info, arrays[f'{name}/queries'].astype(np.int64),
                *(arrays[f'{name}/{c}'].astype(np.float32) for c in ('reference', 'offsets', 'weights')))
        parts = {k: arrays[f'{DETECTION_PREFIX}/{k}'] for k in ('bboxes', 'scores', 'labels', 'queries')}
        detections = Detections(parts['bboxes'].astype(np.float32), parts['scores'].astype(np.float32),
                                parts['labels'].astype(np.int64), parts['queries'].astype(np.int64),
                                bool(meta['detections']['linked']))
    return OffsetDump(path, meta, layers, attention, detections)


def _sort_key(path: Path):
    stem = path.name[:-len(SUFFIX)]
    return (0, int(stem), '') if stem.isdigit() else (1, 0, stem)


def offset_dump_paths(dump_dir: PathLike) -> List[Path]:
    """The dump files in ``dump_dir``, sorted by image id (numerically when ids are integers)."""
    dump_dir = Path(dump_dir)
    if not dump_dir.is_dir():
        raise FileNotFoundError(f'offset dump directory {dump_dir} does not exist')
    paths = [p for p in dump_dir.iterdir()
             if p.name.endswith(SUFFIX) and not p.name.startswith('.') and p.is_file()]
    return sorted(paths, key=_sort_key)


def iter_offset_dumps(dump_dir: PathLike) -> Iterator[OffsetDump]:
    """Load every dump in ``dump_dir`` in image-id order (one file in memory at a time)."""
    for path in offset_dump_paths(dump_dir):
        yield load_offset_dump(path)


def offset_dump_path(dump_dir: PathLike, img_id) -> Path:
    """Where the dump of image ``img_id`` lives in ``dump_dir`` (ids are made file-name safe)."""
    name = ''.join(c if c.isalnum() or c in '-_.' else '_' for c in str(img_id)).lstrip('.')
    if not name:
        raise ValueError(f'image id {img_id!r} gives an empty file name')
    return Path(dump_dir) / f'{name}{SUFFIX}'


class LayerNotFoundError(ValueError):
    """A layer pattern matches none of the layers it was applied to."""


_GLOB_CHARS = set('*?[')


def _layer_matcher(pattern: str):
    if pattern.startswith('re:'):
        try:
            return re.compile(pattern[3:]).fullmatch
        except re.error as e:
            raise ValueError(f'bad regular expression in layer pattern {pattern!r}: {e}') from None
    if _GLOB_CHARS & set(pattern):
        return lambda name: fnmatch.fnmatchcase(name, pattern)
    return lambda name: pattern in name


def match_layer_names(names: Iterable[str], patterns: Union[None, str, Sequence[str]],
                      where: str = 'the model', kind: str = 'layer') -> List[str]:
    """The names (module paths, as in dumps) that any of ``patterns`` selects.

    The one layer-pattern syntax of the package (hooks' ``layers=``, the tools' ``--layer``):

    * ``'re:<regex>'``: the regular expression matches the whole name;
    * a shell glob (``*``, ``?``, ``[...]``): matches the whole name, ``backbone.layer4.*``;
    * a plain word: names that contain it, ``layer3`` selects ``backbone.layer3.0.conv2``.

    Names come in the order of the patterns that select them first (a name only once), so
    ``['layer4', 'layer3']`` puts layer4 first. ``None`` selects every name. A pattern that
    selects nothing is a :class:`LayerNotFoundError` naming ``where`` and listing the ``kind``
    names there; a malformed regex a ``ValueError``.
    """
    names = list(names)
    if patterns is None:
        return names
    patterns = [patterns] if isinstance(patterns, str) else [str(p) for p in patterns]
    chosen = []
    for pattern in patterns:
        matches = _layer_matcher(pattern)
        hits = [n for n in names if matches(n)]
        if not hits:
            listing = ', '.join(names[:12]) + (', ...' if len(names) > 12 else '') if names else 'none'
            raise LayerNotFoundError(f'{where}: layers pattern {pattern!r} matches no {kind} '
                                     f'(patterns {patterns}); {kind}s: {listing}')
        chosen += [n for n in hits if n not in chosen]
    return chosen


def check_layer_patterns(patterns: Union[None, str, Sequence[str]]) -> None:
    """Raise ``ValueError`` now for a malformed pattern (before any work starts)."""
    for pattern in [patterns] if isinstance(patterns, str) else (patterns or ()):
        _layer_matcher(str(pattern))
