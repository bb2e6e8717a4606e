"""Classification crops for pretraining the CPU detectors' backbone: one textured shape per crop.

A crop is a textured background (:mod:`.textures`) with one shape of :data:`CROP_CLASSES` (the
detection classes and :data:`~.shapes.EXTRA_CLASSES`) painted as in the detection images, at a
log-uniform size, stretched, rotated and placed at random. Crop ``i`` of a split depends only
on ``(seed, split, i)``.
"""
from typing import Tuple

import numpy as np

from .render import paint_shape
from .shapes import DETECTION_CLASSES, EXTRA_CLASSES, sample_shape_polygon
from .textures import random_background

CROP_CLASSES: Tuple[str, ...] = DETECTION_CLASSES + EXTRA_CLASSES
CROP_SPLITS = ('train', 'val')
CROP_GENERATOR_VERSION = 2  # bump whenever the same arguments would render different crops
# sqrt(area) of the shape relative to the crop side, log-uniform. Large shapes learn faster: 9600 crops
# of 48 px reached 50 % held-out accuracy with 0.4-0.75 (lr 4e-3), 14 % with 0.2-0.5 (lr 2e-3).
OBJECT_SIZE_FRACTIONS = (0.4, 0.75)
MAX_ASPECT = 3.0
MARGIN = 1  # pixels between the shape's box and the crop border


def render_crop(rng: np.random.Generator, crop_size: int, class_texture_prob: float) -> Tuple[np.ndarray, int]:
    """One ``(crop_size, crop_size, 3)`` uint8 RGB crop and the index of its class in CROP_CLASSES."""
    canvas = random_background(rng, crop_size, crop_size)
    label = int(rng.integers(len(CROP_CLASSES)))
    sqrt_area = crop_size * np.exp(rng.uniform(*np.log(OBJECT_SIZE_FRACTIONS)))
    aspect = np.exp(rng.uniform(-np.log(MAX_ASPECT), np.log(MAX_ASPECT)))
    room = crop_size - 2 * MARGIN
    polygon = sample_shape_polygon(CROP_CLASSES[label], rng, sqrt_area, aspect, max_extent=room)
    polygon += MARGIN + rng.uniform(0, 1, size=2) * (room - polygon.max(axis=0))
    paint_shape(canvas, polygon, CROP_CLASSES[label], rng, class_texture_prob)
    return canvas, label


def render_crops(seed: int, split: str, start: int, count: int, crop_size: int,
                 class_texture_prob: float) -> Tuple[np.ndarray, np.ndarray]:
    """Crops ``start .. start + count - 1`` of ``split``: ``(count, S, S, 3)`` uint8 images and
    ``(count,)`` int64 labels."""
    if split not in CROP_SPLITS:
        raise ValueError(f'split must be one of {CROP_SPLITS}, got {split!r}')
    images = np.empty((count, crop_size, crop_size, 3), dtype=np.uint8)
    labels = np.empty(count, dtype=np.int64)
    for k in range(count):
        rng = np.random.default_rng([seed, CROP_SPLITS.index(split), start + k])
        images[k], labels[k] = render_crop(rng, crop_size, class_texture_prob)
    return images, labels
