"""COCO ground truth for dumped images: boxes, masks, size classes, and which object owns a location."""
import contextlib
import io
import os
from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np

from .fields import OffsetInputError

#: COCO's size classes: sqrt(area) below 32 px is small, below 96 px medium, else large.
COCO_SIZE_THRESHOLDS = (32.0, 96.0)
#: The DCN paper's Table 2 (VOC images with a 360 px shorter side) used 96 and 224 px.
DCN_PAPER_SIZE_THRESHOLDS = (96.0, 224.0)
SIZE_CLASSES = ('small', 'medium', 'large')
BACKGROUND = -1
IGNORED = -2  # inside a crowd region only: neither an object nor background


def size_class(sqrt_area, thresholds: Sequence[float] = COCO_SIZE_THRESHOLDS) -> np.ndarray:
    """0 small / 1 medium / 2 large for box sizes sqrt(w * h) in image pixels."""
    lo, hi = thresholds
    if not 0 < lo < hi:
        raise ValueError(f'size thresholds must satisfy 0 < small < large, got {tuple(thresholds)}')
    return np.digitize(np.asarray(sqrt_area, dtype=np.float64), [lo, hi])


@dataclass
class ImageObjects:
    """The non-crowd objects of one image, in original-image pixels.

    boxes: (N, 4) x0, y0, x1, y1; crowd_boxes likewise; anns: the N annotation dicts.
    """
    image_id: int
    height: int
    width: int
    boxes: np.ndarray
    crowd_boxes: np.ndarray
    anns: list
    _coco: object = None

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

    def assign(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Owner of each point: index of the smallest box containing it, BACKGROUND or IGNORED.

        Overlapping boxes give the point to the smallest one (the most specific object); a
        point only inside crowd regions is IGNORED.
        """
        y, x = np.asarray(y, np.float64), np.asarray(x, np.float64)
        owner = np.full(y.shape, BACKGROUND, dtype=np.int64)
        if len(self.crowd_boxes):
            owner[_inside(self.crowd_boxes, y, x).any(0)] = IGNORED
        if self.num_objects:
            inside = _inside(self.boxes, y, x)                     # (N, ...)
            areas = self.sqrt_areas.reshape((-1,) + (1,) * y.ndim)
            best = np.where(inside, areas, np.inf).argmin(0)
            hit = inside.any(0)
            owner[hit] = best[hit]
        return owner

    def object_mask(self, source: str = 'auto') -> Tuple[np.ndarray, np.ndarray, str]:
        """Union of the objects' masks and of crowd regions at image resolution.

        source: 'masks' (segmentations, boxes for annotations without one), 'boxes', or 'auto'
        (= 'masks'). Returns (objects, crowd, what was used: 'masks', 'boxes' or 'masks+boxes').
        """
        if source not in ('auto', 'masks', 'boxes'):
            raise ValueError(f"mask source must be 'auto', 'masks' or 'boxes', got {source!r}")
        objects = np.zeros((self.height, self.width), dtype=bool)
        used = set()
        for ann, box in zip(self.anns, self.boxes):
            if source != 'boxes' and ann.get('segmentation'):
                objects |= self._coco.annToMask(ann).astype(bool)
                used.add('masks')
            else:
                objects |= _box_mask(box, self.height, self.width)
                used.add('boxes')
        crowd = np.zeros_like(objects)
        for box in self.crowd_boxes:
            crowd |= _box_mask(box, self.height, self.width)
        return objects, crowd & ~objects, '+'.join(sorted(used)) or 'none'


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
                problems.append(f'image {m["img_id"]}: the dump read {dumped!r}, the annotation file names {annotated!r}')
        if problems:
            raise OffsetInputError(f'the dumps do not match the images of {self.ann_file!r}:\n  '
                                   + '\n  '.join(problems[:10]) + ('\n  ...' if len(problems) > 10 else ''))

    @staticmethod
    def _key(img_id):
        try:
            return int(img_id)
        except (TypeError, ValueError):
            return img_id

    def objects(self, img_id) -> ImageObjects:
        key = self._key(img_id)
        if key not in self.coco.imgs:
            raise OffsetInputError(f'image id {img_id} is not in {self.ann_file!r}')
        info = self.coco.imgs[key]
        boxes, crowd, anns = [], [], []
        for ann in self.coco.imgToAnns.get(key, []):
            x, y, w, h = ann['bbox']
            if w <= 0 or h <= 0:
                continue
            if ann.get('iscrowd', 0):
                crowd.append((x, y, x + w, y + h))
            else:
                boxes.append((x, y, x + w, y + h))
                anns.append(ann)
        as_array = lambda b: np.asarray(b, dtype=np.float64).reshape(-1, 4)  # noqa: E731
        return ImageObjects(key, int(info['height']), int(info['width']), as_array(boxes), as_array(crowd), anns,
                            self.coco)
