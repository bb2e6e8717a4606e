"""The image a dump was made on, in original-image coordinates (the frame of every figure)."""
import os
from typing import Optional

import numpy as np


class ImageNotFoundError(FileNotFoundError):
    """The dumped ``img_path`` cannot be read; pass ``blank=True`` (``--blank``) or an image root."""


def image_file(meta: dict, img_root: Optional[str] = None) -> str:
    """Path of the dumped image: ``meta['img_path']``, or its file name inside ``img_root``."""
    path = meta.get('img_path')
    if not path:
        raise ImageNotFoundError(f'dump of image {meta.get("img_id")} records no img_path; '
                                 f'draw on a blank canvas instead (blank=True / --blank)')
    return os.path.join(img_root, os.path.basename(path)) if img_root else path


def load_image(meta: dict, img_root: Optional[str] = None, blank: bool = False) -> np.ndarray:
    """The dumped image as (h, w, 3) uint8 RGB at its original size (``meta['ori_shape']``).

    EXIF orientation is applied, as mmcv's loader does. With ``blank=True`` a light grey canvas
    of the original size is returned instead of reading any file.

    Raises:
        ImageNotFoundError: the file is missing (the message says how to draw without it).
        ValueError: the file's size differs from the ``ori_shape`` recorded in the dump.
    """
    ori = meta.get('ori_shape')
    if blank:
        if not ori:
            raise ValueError(f'dump of image {meta.get("img_id")} has no ori_shape; cannot size a blank canvas')
        return np.full((int(ori[0]), int(ori[1]), 3), 235, dtype=np.uint8)
    path = image_file(meta, img_root)
    if not os.path.isfile(path):
        hint = '' if img_root else ' or point to its folder with img_root= (--img-root)'
        raise ImageNotFoundError(f'image file {path!r} of dumped image {meta.get("img_id")} does not exist; '
                                 f'draw on a blank canvas with blank=True (--blank){hint}')
    from PIL import Image, ImageOps
    with Image.open(path) as im:
        array = np.asarray(ImageOps.exif_transpose(im).convert('RGB'))
    if ori and tuple(array.shape[:2]) != (int(ori[0]), int(ori[1])):
        raise ValueError(f'image file {path!r} is {array.shape[0]}x{array.shape[1]} (h x w) but the dump was '
                         f'made on a {int(ori[0])}x{int(ori[1])} image: not the same picture')
    return array
