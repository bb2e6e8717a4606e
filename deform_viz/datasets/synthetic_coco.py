"""A deterministic synthetic COCO-format detection and instance-segmentation dataset.

Solid shapes of :data:`SYNTHETIC_CLASSES` in random colours, placed without overlap on textured
backgrounds. Sizes (square root of the mask area) are drawn from COCO's small / medium / large
bands, so ``CocoMetric``'s per-size APs all have objects. Each image is drawn from its own
random stream ``(seed, split, index)``, so an image does not depend on how many others are made.

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
from PIL import Image, ImageDraw

from .shapes import SHAPE_BUILDERS, polygon_area, sample_shape_polygon
from .textures import luminance, random_background

SYNTHETIC_CLASSES: Tuple[str, ...] = tuple(SHAPE_BUILDERS)
# Distinct colours for drawing predictions of each class (mmdet's visualizer reads `palette`).
SYNTHETIC_METAINFO = dict(
    classes=SYNTHETIC_CLASSES,
    palette=[(220, 20, 60), (0, 130, 200), (60, 180, 75), (255, 200, 0), (145, 30, 180)],
)
SPLITS = ('train', 'val')
GENERATOR_VERSION = 1  # bump whenever the same arguments would produce different files

MIN_IMAGE_SIDE = 32
# COCO's area ranges: small < 32**2 <= medium < 96**2 <= large, here as sqrt(area) limits.
COCO_SIZE_LIMITS = (32.0, 96.0)
SIZE_NAMES = ('small', 'medium', 'large')
SIZE_BAND_WEIGHTS = (0.4, 0.35, 0.25)
MIN_LUMINANCE_CONTRAST = 60.0  # object colour vs. mean background under its box, in 0..255 luma
BORDER_MARGIN = 1.0  # pixels between any box and the image border
OBJECT_GAP = 2.0  # pixels between the boxes of two objects
PLACEMENT_TRIES = 50
SUPERSAMPLING = 4  # per side, for anti-aliased object edges
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
    max_object_fraction: float

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
        for name in ('min_object_size', 'max_object_fraction'):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or isinstance(value, bool):
                raise ValueError(f'{name} must be a number, got {value!r}')
            object.__setattr__(self, name, float(value))
        if not 0 < self.max_object_fraction <= 1:
            raise ValueError(f'max_object_fraction must be in (0, 1], got {self.max_object_fraction!r}')
        if not 0 < self.min_object_size <= self.max_object_extent:
            raise ValueError(
                f'min_object_size must be in (0, {self.max_object_extent:g}] px for image_size {size} '
                f'(max_object_fraction {self.max_object_fraction:g} of the shorter side), '
                f'got {self.min_object_size!r}; use a larger image_size or a smaller min_object_size')

    @property
    def max_object_extent(self) -> float:
        """Longest allowed side of an object's box, in pixels."""
        return self.max_object_fraction * min(self.image_size)

    def num_images(self, split: str) -> int:
        return self.num_train if split == 'train' else self.num_val

    def to_json(self) -> dict:
        return {**asdict(self), 'image_size': list(self.image_size)}


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def make_synthetic_coco(out_dir: Union[str, os.PathLike],
                        num_train: int = 200,
                        num_val: int = 50,
                        image_size: Tuple[int, int] = (320, 320),
                        seed: int = 0,
                        max_objects: int = 6,
                        min_object_size: float = 12.0,
                        max_object_fraction: float = 0.6,
                        force: bool = False) -> dict:
    """Write the synthetic shapes dataset under ``out_dir`` (skipped if already complete).

    Args:
        out_dir: dataset root; ``train/``, ``val/`` and ``annotations/`` are created in it.
        num_train, num_val: number of images per split (>= 1).
        image_size: ``(height, width)`` of every image, each side >= 32.
        seed: base seed; the same seed and arguments give byte-identical files.
        max_objects: each image gets 1..max_objects objects (fewer if they do not fit).
        min_object_size: smallest object size, as sqrt(mask area) in pixels.
        max_object_fraction: largest box side as a fraction of the shorter image side.
        force: regenerate even if a complete dataset with the same arguments exists.

    Returns:
        A summary: ``out_dir``, ``classes``, ``reused`` (True if nothing was written),
        ``seconds`` and per split ``ann_file``, ``img_dir``, ``images``, ``objects``,
        ``per_class`` and ``per_size`` (COCO small/medium/large) counts.
    """
    args = GenerationArgs(num_train, num_val, image_size, seed, max_objects, min_object_size, max_object_fraction)
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
        _write_atomically(annotation_file(root, split),
                          lambda tmp, coco=coco: tmp.write_text(json.dumps(coco, separators=(',', ':'))))
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
        _write_atomically(image_dir / file_name,
                          lambda tmp: Image.fromarray(pixels).save(tmp, format='PNG', compress_level=1))
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


def _write_atomically(path: Path, write) -> None:
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def render_image(rng: np.random.Generator, args: GenerationArgs) -> Tuple[np.ndarray, List[Tuple[int, np.ndarray]]]:
    """One ``(H, W, 3)`` uint8 image and its objects as ``(class index, (N, 2) polygon)`` pairs.

    Polygon vertices are rounded to 0.01 px and drawn exactly as annotated.
    """
    height, width = args.image_size
    background = random_background(rng, height, width)
    canvas = Image.fromarray(background)
    objects = []
    for class_index, polygon in _place_objects(rng, _sample_objects(rng, args), height, width):
        polygon = np.round(polygon, 2)
        (x0, y0), (x1, y1) = _pixel_span(polygon)
        colour = _contrasting_colour(rng, background[y0:y1 + 1, x0:x1 + 1].mean(axis=(0, 1)))
        _paint_polygon(canvas, polygon, colour)
        objects.append((class_index, polygon))
    return np.asarray(canvas), objects


def _pixel_span(polygon: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """First and last (x, y) pixel a polygon touches; as in COCO, pixel j spans [j, j + 1)."""
    return np.floor(polygon.min(axis=0)).astype(int), np.ceil(polygon.max(axis=0)).astype(int) - 1


def _paint_polygon(canvas: Image.Image, polygon: np.ndarray, colour: Tuple[int, int, int]) -> None:
    """Fill ``polygon`` with anti-aliased edges: each pixel's alpha is its covered fraction,
    measured on a SUPERSAMPLING-times finer grid, so pixels with alpha >= 0.5 match the COCO mask."""
    first, last = _pixel_span(polygon)
    size = last - first + 1
    fine_polygon = (polygon - first) * SUPERSAMPLING - 0.5  # fine pixel centres at integers
    fine_mask = Image.new('L', tuple(int(v) for v in size * SUPERSAMPLING))
    ImageDraw.Draw(fine_mask).polygon([tuple(v) for v in fine_polygon], fill=255)
    coverage = fine_mask.resize(tuple(int(v) for v in size), Image.BOX)
    canvas.paste(colour, tuple(int(v) for v in (*first, *(first + size))), coverage)


def _sample_objects(rng: np.random.Generator, args: GenerationArgs) -> List[Tuple[int, np.ndarray]]:
    """1..max_objects (class index, polygon at the origin) pairs, largest first."""
    count = int(rng.integers(1, args.max_objects + 1))
    objects = []
    for _ in range(count):
        class_index = int(rng.integers(len(SYNTHETIC_CLASSES)))
        sqrt_area = _sample_sqrt_area(rng, args.min_object_size, args.max_object_extent)
        polygon = sample_shape_polygon(SYNTHETIC_CLASSES[class_index], rng, sqrt_area, args.max_object_extent)
        objects.append((class_index, polygon))
    return sorted(objects, key=lambda obj: -polygon_area(obj[1]))


def _sample_sqrt_area(rng: np.random.Generator, low: float, high: float) -> float:
    """Pick a COCO size band (weighted, empty bands skipped), then a log-uniform size inside it."""
    edges = np.clip([low, *COCO_SIZE_LIMITS, high], low, high)
    weights = np.where(edges[1:] > edges[:-1], SIZE_BAND_WEIGHTS, 0.0)
    if weights.sum() == 0:  # low == high
        return float(low)
    band = rng.choice(len(weights), p=weights / weights.sum())
    return float(np.exp(rng.uniform(np.log(edges[band]), np.log(edges[band + 1]))))


def _place_objects(rng, objects, height, width) -> List[Tuple[int, np.ndarray]]:
    """Translate each polygon to a random spot whose box keeps OBJECT_GAP from earlier boxes;
    objects that find no spot in PLACEMENT_TRIES tries are dropped."""
    boxes, placed = [], []
    for class_index, polygon in objects:
        size = polygon.max(axis=0)
        room = np.array([width, height]) - 2 * BORDER_MARGIN - size
        for _ in range(PLACEMENT_TRIES):
            corner = BORDER_MARGIN + rng.uniform(0, 1, size=2) * room
            box = np.concatenate([corner, corner + size])
            if all(_boxes_apart(box, other) for other in boxes):
                boxes.append(box)
                placed.append((class_index, polygon + corner))
                break
    return placed


def _boxes_apart(a: np.ndarray, b: np.ndarray) -> bool:
    return (a[0] >= b[2] + OBJECT_GAP or b[0] >= a[2] + OBJECT_GAP
            or a[1] >= b[3] + OBJECT_GAP or b[1] >= a[3] + OBJECT_GAP)


def _contrasting_colour(rng: np.random.Generator, background_rgb: np.ndarray) -> Tuple[int, int, int]:
    """A random colour whose luma differs from the background's by MIN_LUMINANCE_CONTRAST."""
    target = luminance(background_rgb)
    candidates = rng.integers(0, 256, size=(32, 3))
    usable = np.abs(luminance(candidates) - target) >= MIN_LUMINANCE_CONTRAST
    if usable.any():
        return tuple(int(c) for c in candidates[np.argmax(usable)])
    return (0, 0, 0) if target > 127.5 else (255, 255, 255)


def _summarize_split(root: Path, split: str, coco: dict) -> dict:
    classes = {category['id']: category['name'] for category in coco['categories']}
    per_class = dict.fromkeys(classes.values(), 0)
    per_size = dict.fromkeys(SIZE_NAMES, 0)
    for annotation in coco['annotations']:
        per_class[classes[annotation['category_id']]] += 1
        per_size[SIZE_NAMES[int(np.searchsorted(COCO_SIZE_LIMITS, np.sqrt(annotation['area']), 'right'))]] += 1
    return {
        'ann_file': str(annotation_file(root, split)),
        'img_dir': str(root / split),
        'images': len(coco['images']),
        'objects': len(coco['annotations']),
        'per_class': per_class,
        'per_size': per_size,
    }
