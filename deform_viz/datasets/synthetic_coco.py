"""A deterministic synthetic COCO-format detection and instance-segmentation dataset.

Shapes of :data:`SYNTHETIC_CLASSES` with textured interiors (each class its own texture family,
see :mod:`.textures`), placed without overlap on backgrounds of other textures. Sizes
(sqrt of the mask area) are log-uniform from ``min_object_size`` to ``max_size_fraction`` of the
shorter image side, so every octave holds about as many objects and every FPN level has work;
each shape is stretched to a log-uniform aspect ratio in [1/max_aspect, max_aspect] before a
random rotation. Each image is drawn from its own random stream ``(seed, split, index)``, so an
image does not depend on how many others are made.

Layout written under ``out_dir``::

    train/000001.png ...             val/000001.png ...
    annotations/instances_train.json annotations/instances_val.json

The generation arguments are stored in each JSON's ``info`` section; a rerun with the same
arguments finds the dataset complete and returns at once. The JSON files are written last
(atomically), so an interrupted run is never mistaken for a complete one.
"""
import json
import numbers
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
from PIL import Image

from ..fileio import write_atomically
from ..analysis.annotations import SIZE_CLASSES, size_class
from .render import paint_shape
from .shapes import DETECTION_CLASSES, polygon_area, sample_shape_polygon
from .textures import random_background

SYNTHETIC_CLASSES: Tuple[str, ...] = DETECTION_CLASSES
# Distinct colours for drawing predictions of each class (mmdet's visualizer reads `palette`).
SYNTHETIC_METAINFO = dict(
    classes=SYNTHETIC_CLASSES,
    palette=[(220, 20, 60), (0, 130, 200), (60, 180, 75), (255, 200, 0), (145, 30, 180)],
)
SPLITS = ('train', 'val')
GENERATOR_VERSION = 2  # bump whenever the same arguments would produce different files

MIN_IMAGE_SIDE = 32
BORDER_MARGIN = 1  # pixels between any box and the image border
OBJECT_GAP = 2  # pixels between the boxes of two objects
SHAPE_TRIES = 8
IMAGE_NAME = re.compile(r'^\d{6}\.png$')


@dataclass(frozen=True)
class GenerationArgs:
    """Validated arguments of :func:`make_synthetic_coco`; stored in the JSON ``info`` section."""
    num_train: int
    num_val: int
    image_size: Tuple[int, int]
    seed: int
    max_objects: int
    min_object_size: float
    max_size_fraction: float
    max_aspect: float
    class_texture_prob: float

    def __post_init__(self):
        for name, minimum in (('num_train', 1), ('num_val', 1), ('max_objects', 1), ('seed', 0)):
            value = getattr(self, name)
            if not _is_int(value) or value < minimum:
                raise ValueError(f'{name} must be an integer >= {minimum}, got {value!r}')
            object.__setattr__(self, name, int(value))  # plain ints for the JSON info section
        size = self.image_size
        if (not isinstance(size, (tuple, list)) or len(size) != 2
                or not all(_is_int(side) and side >= MIN_IMAGE_SIDE for side in size)):
            raise ValueError(f'image_size must be (height, width) with integer sides >= {MIN_IMAGE_SIDE} '
                             f'pixels, got {size!r}')
        object.__setattr__(self, 'image_size', (int(size[0]), int(size[1])))
        for name in ('min_object_size', 'max_size_fraction', 'max_aspect', 'class_texture_prob'):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or isinstance(value, bool):
                raise ValueError(f'{name} must be a number, got {value!r}')
            object.__setattr__(self, name, float(value))
        if not 0 < self.max_size_fraction <= 0.5:
            raise ValueError(f'max_size_fraction must be in (0, 0.5], got {self.max_size_fraction!r}')
        if not 0 < self.min_object_size <= self.max_object_size:
            raise ValueError(
                f'min_object_size must be in (0, {self.max_object_size:g}] px for image_size {size} '
                f'(max_size_fraction {self.max_size_fraction:g} of the shorter side), '
                f'got {self.min_object_size!r}; use a larger image_size or a smaller min_object_size')
        if not 1 <= self.max_aspect <= 10:
            raise ValueError(f'max_aspect must be in [1, 10], got {self.max_aspect!r}')
        if not 0 <= self.class_texture_prob <= 1:
            raise ValueError(f'class_texture_prob must be in [0, 1], got {self.class_texture_prob!r}')

    @property
    def max_object_size(self) -> float:
        """Largest sqrt(mask area), in pixels."""
        return self.max_size_fraction * min(self.image_size)

    @property
    def max_object_extent(self) -> float:
        """Longest side of an object's box that still fits in the image with its margins."""
        return min(self.image_size) - 2 * BORDER_MARGIN - 1

    def num_images(self, split: str) -> int:
        return self.num_train if split == 'train' else self.num_val

    def to_json(self) -> dict:
        return {**asdict(self), 'image_size': list(self.image_size)}


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def make_synthetic_coco(out_dir: Union[str, os.PathLike],
                        num_train: int = 200,
                        num_val: int = 50,
                        image_size: Tuple[int, int] = (192, 192),
                        seed: int = 0,
                        max_objects: int = 6,
                        min_object_size: float = 8.0,
                        max_size_fraction: float = 0.5,
                        max_aspect: float = 3.0,
                        class_texture_prob: float = 0.8,
                        force: bool = False) -> dict:
    """Write the synthetic shapes dataset under ``out_dir`` (skipped if already complete).

    Args:
        out_dir: dataset root; ``train/``, ``val/`` and ``annotations/`` are created in it.
        num_train, num_val: number of images per split (>= 1).
        image_size: ``(height, width)`` of every image, each side >= 32.
        seed: base seed; the same seed and arguments give byte-identical files.
        max_objects: each image draws 1..max_objects objects (those that find no free spot are left out).
        min_object_size: smallest object size, as sqrt(mask area) in pixels.
        max_size_fraction: largest object size as a fraction of the shorter image side (<= 0.5);
            sizes are log-uniform in between.
        max_aspect: shapes are stretched to a log-uniform aspect ratio in [1/max_aspect, max_aspect]
            before rotation (less where the box would not fit in the image).
        class_texture_prob: probability that an object's interior uses its class's texture family
            (else one of the other families).
        force: regenerate even if a complete dataset with the same arguments exists.

    Returns:
        A summary: ``out_dir``, ``classes``, ``reused`` (True if nothing was written),
        ``seconds`` and per split ``ann_file``, ``img_dir``, ``images``, ``objects``,
        ``per_class`` and ``per_size`` (COCO small/medium/large) counts.
    """
    args = GenerationArgs(num_train, num_val, image_size, seed, max_objects, min_object_size, max_size_fraction,
                          max_aspect, class_texture_prob)
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f'out_dir {root} exists and is not a directory')
    start = time.perf_counter()
    datasets = None if force else _load_if_complete(root, args)
    reused = datasets is not None
    if not reused:
        datasets = _generate(root, args)
    return {
        'out_dir': str(root),
        'classes': SYNTHETIC_CLASSES,
        'reused': reused,
        'seconds': time.perf_counter() - start,
        'splits': {split: _summarize_split(root, split, coco) for split, coco in datasets.items()},
    }


def annotation_file(root: Path, split: str) -> Path:
    return root / 'annotations' / f'instances_{split}.json'


def _info(args: GenerationArgs, split: str) -> dict:
    return {
        'description': f'deform-viz synthetic shapes, {split} split',
        'version': str(GENERATOR_VERSION),
        'contributor': 'deform_viz.datasets.make_synthetic_coco',
        'split': split,
        'generation_args': args.to_json(),
    }


def _load_if_complete(root: Path, args: GenerationArgs) -> Optional[Dict[str, dict]]:
    """The splits' COCO dicts if all JSON files and images of a run with ``args`` exist, else None."""
    datasets = {}
    for split in SPLITS:
        try:
            coco = json.loads(annotation_file(root, split).read_text())
        except (OSError, ValueError):
            return None
        images = coco.get('images', [])
        if coco.get('info') != _info(args, split) or len(images) != args.num_images(split):
            return None
        if not all((root / split / image['file_name']).is_file() for image in images):
            return None
        datasets[split] = coco
    return datasets


def _generate(root: Path, args: GenerationArgs) -> Dict[str, dict]:
    for split in SPLITS:  # an interrupted run must not leave a JSON that looks complete
        annotation_file(root, split).unlink(missing_ok=True)
    datasets = {split: _generate_split(root, split, args) for split in SPLITS}
    (root / 'annotations').mkdir(parents=True, exist_ok=True)
    for split, coco in datasets.items():
        write_atomically(annotation_file(root, split),
                         lambda file, coco=coco: file.write(json.dumps(coco, separators=(',', ':'))), text=True)
    return datasets


def _generate_split(root: Path, split: str, args: GenerationArgs) -> dict:
    image_dir = root / split
    image_dir.mkdir(parents=True, exist_ok=True)
    height, width = args.image_size
    images, annotations = [], []
    for image_id in range(1, args.num_images(split) + 1):
        rng = np.random.default_rng([args.seed, SPLITS.index(split), image_id])
        pixels, objects = render_image(rng, args)
        file_name = f'{image_id:06d}.png'
        write_atomically(image_dir / file_name,
                         lambda file: Image.fromarray(pixels).save(file, format='PNG', compress_level=1))
        images.append({'id': image_id, 'file_name': file_name, 'height': height, 'width': width})
        for class_index, polygon in objects:
            annotations.append(_annotation(len(annotations) + 1, image_id, class_index, polygon))
    _remove_stale_images(image_dir, {image['file_name'] for image in images})
    return {
        'info': _info(args, split),
        'licenses': [],
        'images': images,
        'annotations': annotations,
        'categories': [{'id': i + 1, 'name': name, 'supercategory': 'shape'}
                       for i, name in enumerate(SYNTHETIC_CLASSES)],
    }


def _annotation(annotation_id: int, image_id: int, class_index: int, polygon: np.ndarray) -> dict:
    x0, y0 = polygon.min(axis=0)
    x1, y1 = polygon.max(axis=0)
    return {
        'id': annotation_id,
        'image_id': image_id,
        'category_id': class_index + 1,
        'segmentation': [[float(v) for v in polygon.ravel()]],
        'area': round(polygon_area(polygon), 2),
        'bbox': [float(x0), float(y0), round(float(x1 - x0), 2), round(float(y1 - y0), 2)],
        'iscrowd': 0,
    }


def _remove_stale_images(image_dir: Path, keep: set) -> None:
    """Delete images of an earlier, larger run (only files named like ours)."""
    for path in image_dir.iterdir():
        if IMAGE_NAME.match(path.name) and path.name not in keep:
            path.unlink()


def render_image(rng: np.random.Generator, args: GenerationArgs) -> Tuple[np.ndarray, List[Tuple[int, np.ndarray]]]:
    """One ``(H, W, 3)`` uint8 image and its objects as ``(class index, (N, 2) polygon)`` pairs.

    Polygon vertices are rounded to 0.01 px and drawn exactly as annotated.
    """
    height, width = args.image_size
    canvas = random_background(rng, height, width)
    objects = []
    for class_index, polygon in _place_objects(rng, _sample_objects(rng, args), args):
        polygon = np.round(polygon, 2)
        paint_shape(canvas, polygon, SYNTHETIC_CLASSES[class_index], rng, args.class_texture_prob)
        objects.append((class_index, polygon))
    return canvas, objects


def sample_object_size(rng: np.random.Generator, args: GenerationArgs) -> float:
    """sqrt(mask area) of an object, log-uniform in [min_object_size, max_object_size]."""
    return float(np.exp(rng.uniform(np.log(args.min_object_size), np.log(args.max_object_size))))


def sample_aspect(rng: np.random.Generator, args: GenerationArgs) -> float:
    """Width / height stretch of an object before rotation, log-uniform in [1/max_aspect, max_aspect]."""
    return float(np.exp(rng.uniform(-np.log(args.max_aspect), np.log(args.max_aspect))))


def _sample_objects(rng: np.random.Generator, args: GenerationArgs) -> List[Tuple[int, float]]:
    """1..max_objects (class index, sqrt(area)) pairs, largest first."""
    count = int(rng.integers(1, args.max_objects + 1))
    objects = [(int(rng.integers(len(SYNTHETIC_CLASSES))), sample_object_size(rng, args)) for _ in range(count)]
    return sorted(objects, key=lambda obj: -obj[1])


def _place_objects(rng: np.random.Generator, objects: List[Tuple[int, float]],
                   args: GenerationArgs) -> List[Tuple[int, np.ndarray]]:
    """Shape each object and move it to a spot drawn uniformly from all those where its box stays
    BORDER_MARGIN inside the image and OBJECT_GAP away from the boxes placed before.

    An object with no such spot is reshaped (new aspect, rotation and outline details, same size)
    up to SHAPE_TRIES times, then left out: sizes, the quantity the dataset spreads over octaves,
    are never changed to make room. A box of size (w, h) at a whole-pixel corner plus a uniform
    sub-pixel offset touches at most ceil(w) + 1 by ceil(h) + 1 pixels: that footprint, grown
    by OBJECT_GAP, is what it reserves.
    """
    height, width = args.image_size
    reserved = np.zeros((height, width), dtype=np.int32)
    table = _summed_area_table(reserved)
    placed = []
    for class_index, sqrt_area in objects:
        for _ in range(SHAPE_TRIES):
            polygon = sample_shape_polygon(SYNTHETIC_CLASSES[class_index], rng, sqrt_area, sample_aspect(rng, args),
                                           args.max_object_extent)
            foot_w, foot_h = (np.ceil(polygon.max(axis=0)) + 1).astype(int)
            free_corners = _free_corners(table, foot_h, foot_w)
            if len(free_corners):
                y, x = free_corners[rng.integers(len(free_corners))]
                placed.append((class_index, polygon + [x, y] + rng.uniform(0, 1, size=2)))
                reserved[max(y - OBJECT_GAP, 0):y + foot_h + OBJECT_GAP,
                         max(x - OBJECT_GAP, 0):x + foot_w + OBJECT_GAP] = 1
                table = _summed_area_table(reserved)
                break
    return placed


def _summed_area_table(reserved: np.ndarray) -> np.ndarray:
    """``(H + 1, W + 1)``: entry (y, x) counts the reserved pixels above and left of pixel (y, x)."""
    table = np.zeros((reserved.shape[0] + 1, reserved.shape[1] + 1), dtype=np.int32)
    table[1:, 1:] = reserved.cumsum(axis=0).cumsum(axis=1)
    return table


def _free_corners(table: np.ndarray, foot_h: int, foot_w: int) -> np.ndarray:
    """``(K, 2)`` (y, x) corners where a ``foot_h`` x ``foot_w`` block overlaps nothing reserved
    (``table``: their summed-area table) and keeps BORDER_MARGIN from the border."""
    height, width = table.shape[0] - 1, table.shape[1] - 1
    window = (table[foot_h:, foot_w:] - table[:-foot_h, foot_w:]
              - table[foot_h:, :-foot_w] + table[:-foot_h, :-foot_w])  # (y, x) -> reserved pixels in the block
    m = BORDER_MARGIN
    inside = window[m:height - m - foot_h + 1, m:width - m - foot_w + 1]
    return np.argwhere(inside == 0) + m


def _summarize_split(root: Path, split: str, coco: dict) -> dict:
    classes = {category['id']: category['name'] for category in coco['categories']}
    per_class = dict.fromkeys(classes.values(), 0)
    per_size = dict.fromkeys(SIZE_CLASSES, 0)
    for annotation in coco['annotations']:
        per_class[classes[annotation['category_id']]] += 1
        per_size[SIZE_CLASSES[int(size_class(np.sqrt(annotation['area'])))]] += 1
    return {
        'ann_file': str(annotation_file(root, split)),
        'img_dir': str(root / split),
        'images': len(coco['images']),
        'objects': len(coco['annotations']),
        'per_class': per_class,
        'per_size': per_size,
    }
