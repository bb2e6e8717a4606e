"""COCO ground truth for dumped images: boxes, masks, size classes, and which object owns a location."""
import contextlib
import io
import os
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from .fields import OffsetInputError

#: COCO's size classes: sqrt(area) below 32 px is small, below 96 px medium, else large.
COCO_SIZE_THRESHOLDS = (32.0, 96.0)
#: The DCN paper's Table 2 (VOC images with a 360 px shorter side) used 96 and 224 px.
DCN_PAPER_SIZE_THRESHOLDS = (96.0, 224.0)
SIZE_CLASSES = ('small', 'medium', 'large')
BACKGROUND = -1
IGNORED = -2     # neither an object nor background: in a crowd region, or in a box but off its mask


def size_class(sqrt_area, thresholds: Sequence[float] = COCO_SIZE_THRESHOLDS) -> np.ndarray:
    """0 small / 1 medium / 2 large for box sizes sqrt(w * h) in image pixels."""
    lo, hi = thresholds
    if not 0 < lo < hi:
        raise ValueError(f'size thresholds must satisfy 0 < small < large, got {tuple(thresholds)}')
    return np.digitize(np.asarray(sqrt_area, dtype=np.float64), [lo, hi])


@dataclass
class ImageObjects:
    """The objects of one image in original-image pixels: what every statistic is measured against.

    Args:
        height, width: size of the original image.
        boxes: (N, 4) non-crowd boxes as x0, y0, x1, y1.
        masks: None, or N entries each None (use the box) or an (height, width) bool mask.
        crowd_boxes: (M, 4) crowd regions (neither object nor background).
        image_id: for messages.
    """
    height: int
    width: int
    boxes: np.ndarray
    masks: Optional[Sequence[Optional[np.ndarray]]] = None
    crowd_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    image_id: object = None

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        self.crowd_boxes = np.asarray(self.crowd_boxes, dtype=np.float64).reshape(-1, 4)
        if self.masks is not None:
            if len(self.masks) != len(self.boxes):
                raise ValueError(f'image {self.image_id}: {len(self.masks)} masks for {len(self.boxes)} boxes')
            for mask in self.masks:
                if mask is not None and tuple(mask.shape) != (self.height, self.width):
                    raise ValueError(f'image {self.image_id}: a mask of shape {tuple(mask.shape)} on an image '
                                     f'of {self.height}x{self.width} (h x w)')
        bad = (self.boxes[:, 2] <= self.boxes[:, 0]) | (self.boxes[:, 3] <= self.boxes[:, 1])
        if bad.any():
            raise ValueError(f'image {self.image_id}: boxes must have x1 > x0 and y1 > y0, got '
                             f'{self.boxes[bad][:3].tolist()}')

    @property
    def num_objects(self) -> int:
        return len(self.boxes)

    @property
    def sqrt_areas(self) -> np.ndarray:
        w = self.boxes[:, 2] - self.boxes[:, 0]
        h = self.boxes[:, 3] - self.boxes[:, 1]
        return np.sqrt(w * h)

    @property
    def centres(self) -> np.ndarray:
        """(N, 2) box centres as (y, x)."""
        return np.stack([(self.boxes[:, 1] + self.boxes[:, 3]) / 2, (self.boxes[:, 0] + self.boxes[:, 2]) / 2], 1)

    @property
    def mask_source(self) -> str:
        """'masks', 'boxes', 'masks+boxes' (some of each) or 'none' (no objects)."""
        if not self.num_objects:
            return 'none'
        masks = self.masks or [None] * self.num_objects
        return '+'.join(sorted({'boxes' if m is None else 'masks' for m in masks}))

    def box_contains(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """(N, ...) bool: which boxes contain each point."""
        return _inside(self.boxes, np.asarray(y, np.float64), np.asarray(x, np.float64))

    def distance_to_boxes(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """(N, ...) Euclidean distance from each point to each box (0 inside it)."""
        b = self.boxes.reshape((-1, 4) + (1,) * np.ndim(y))
        dx = np.maximum(np.maximum(b[:, 0] - x, x - b[:, 2]), 0)
        dy = np.maximum(np.maximum(b[:, 1] - y, y - b[:, 3]), 0)
        return np.hypot(dx, dy)

    def assign(self, y: np.ndarray, x: np.ndarray, use_masks: bool = False) -> np.ndarray:
        """Owner of each point: index of the smallest object containing it, BACKGROUND or IGNORED.

        An object contains a point when its box does, or with ``use_masks`` when its mask does
        at the pixel under the point (its box for an object without a mask). Overlaps go to the
        smallest box (the most specific object). BACKGROUND is outside every box and crowd
        region; a point inside a crowd region or (with masks) inside a box but off its mask is
        IGNORED.
        """
        y, x = np.asarray(y, np.float64), np.asarray(x, np.float64)
        owner = np.full(y.shape, BACKGROUND, dtype=np.int64)
        if len(self.crowd_boxes):
            owner[_inside(self.crowd_boxes, y, x).any(0)] = IGNORED
        if self.num_objects:
            in_box = self.box_contains(y, x)                       # (N, ...)
            owner[in_box.any(0)] = IGNORED
            inside = self._in_masks(y, x, in_box) if use_masks else in_box
            areas = self.sqrt_areas.reshape((-1,) + (1,) * y.ndim)
            best = np.where(inside, areas, np.inf).argmin(0)
            hit = inside.any(0)
            owner[hit] = best[hit]
        return owner

    def _in_masks(self, y, x, in_box):
        if self.masks is None:
            return in_box
        rows = np.clip(np.floor(y).astype(np.int64), 0, self.height - 1)
        cols = np.clip(np.floor(x).astype(np.int64), 0, self.width - 1)
        inside = in_box.copy()
        for i, mask in enumerate(self.masks):
            if mask is not None:
                inside[i] &= mask[rows, cols]
        return inside

    def union_mask(self) -> np.ndarray:
        """(height, width) bool: pixels on any object (its mask, or its box without one)."""
        union = np.zeros((self.height, self.width), dtype=bool)
        for i, box in enumerate(self.boxes):
            mask = None if self.masks is None else self.masks[i]
            union |= _box_mask(box, self.height, self.width) if mask is None else mask
        return union

    def crowd_mask(self) -> np.ndarray:
        """(height, width) bool: pixels in crowd regions and on no object."""
        crowd = np.zeros((self.height, self.width), dtype=bool)
        for box in self.crowd_boxes:
            crowd |= _box_mask(box, self.height, self.width)
        return crowd


def _inside(boxes: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    b = boxes.reshape((-1, 4) + (1,) * y.ndim)
    return (x >= b[:, 0]) & (x < b[:, 2]) & (y >= b[:, 1]) & (y < b[:, 3])


def _box_mask(box, height, width) -> np.ndarray:
    """Pixels whose centres lie inside the box."""
    ys = np.arange(height) + 0.5
    xs = np.arange(width) + 0.5
    return ((ys >= box[1]) & (ys < box[3]))[:, None] & ((xs >= box[0]) & (xs < box[2]))[None, :]


class CocoGroundTruth:
    """A COCO annotation file, checked against the dumps it is used with."""

    def __init__(self, ann_file: str):
        if not os.path.isfile(ann_file):
            raise FileNotFoundError(f'annotation file {ann_file!r} does not exist')
        from pycocotools.coco import COCO
        with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints progress
            try:
                self.coco = COCO(ann_file)
            except Exception as e:  # malformed JSON, missing keys, ...
                raise OffsetInputError(f'cannot read COCO annotation file {ann_file!r}: {e}') from e
        self.ann_file = ann_file

    def check_images(self, metas: Sequence[dict]) -> None:
        """Fail clearly when the dumps were made on other images than this file annotates.

        Checks that every dumped image id exists here with the same size (``ori_shape``) and,
        when both are known, the same file name.
        """
        problems = []
        missing = [m.get('img_id') for m in metas if self._key(m.get('img_id')) not in self.coco.imgs]
        if missing:
            shown = ', '.join(str(i) for i in missing[:8]) + (' ...' if len(missing) > 8 else '')
            some = ', '.join(str(i) for i in list(self.coco.imgs)[:5])
            raise OffsetInputError(
                f'{len(missing)} of {len(metas)} dumped image(s) are not in {self.ann_file!r} '
                f'(ids {shown}; the file has {len(self.coco.imgs)} images, e.g. ids {some}). '
                f'Was the dump made on another split or dataset?')
        for m in metas:
            info = self.coco.imgs[self._key(m['img_id'])]
            ori = tuple(int(v) for v in m.get('ori_shape', ())[:2])
            if ori and 'height' in info and (info['height'], info['width']) != ori:
                problems.append(f'image {m["img_id"]}: the dump says {ori[0]}x{ori[1]} (h x w), '
                                f'the annotation file {info["height"]}x{info["width"]}')
            dumped, annotated = os.path.basename(m.get('img_path') or ''), os.path.basename(info.get('file_name', ''))
            if dumped and annotated and dumped != annotated:
                problems.append(f'image {m["img_id"]}: the dump read {dumped!r}, '
                                f'the annotation file names {annotated!r}')
        if problems:
            raise OffsetInputError(f'the dumps do not match the images of {self.ann_file!r}:\n  '
                                   + '\n  '.join(problems[:10]) + ('\n  ...' if len(problems) > 10 else ''))

    @staticmethod
    def _key(img_id):
        try:
            return int(img_id)
        except (TypeError, ValueError):
            return img_id

    def objects(self, img_id, masks: bool = True) -> ImageObjects:
        """The image's objects; with ``masks`` each segmentation decoded at image resolution."""
        key = self._key(img_id)
        if key not in self.coco.imgs:
            raise OffsetInputError(f'image id {img_id} is not in {self.ann_file!r}')
        info = self.coco.imgs[key]
        boxes, crowd, decoded = [], [], []
        for ann in self.coco.imgToAnns.get(key, []):
            x, y, w, h = ann['bbox']
            if w <= 0 or h <= 0:
                continue
            if ann.get('iscrowd', 0):
                crowd.append((x, y, x + w, y + h))
                continue
            boxes.append((x, y, x + w, y + h))
            decoded.append(self.coco.annToMask(ann).astype(bool) if masks and ann.get('segmentation') else None)
        return ImageObjects(int(info['height']), int(info['width']), np.asarray(boxes, np.float64).reshape(-1, 4),
                            decoded if masks else None, np.asarray(crowd, np.float64).reshape(-1, 4), key)
