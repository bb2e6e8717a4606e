"""Painting one textured shape into an image: the step shared by the detection images and the
backbone's pretraining crops.

Edges are anti-aliased (each pixel's alpha is its covered fraction, measured on a
:data:`SUPERSAMPLING`-times finer grid), so pixels with alpha >= 0.5 match the COCO mask of
the polygon. Both colours of the fill differ in luma from the background under the object by
at least :data:`MIN_LUMINANCE_CONTRAST`, on the same side, so the object stays visible whatever
the texture.
"""
from typing import Tuple

import numpy as np
from PIL import Image, ImageDraw

from .shapes import polygon_area
from .textures import choose_fill, fill_weight, luminance

SUPERSAMPLING = 4  # per side
MIN_LUMINANCE_CONTRAST = 60.0  # each fill colour vs. the mean background under the box, in 0..255 luma
MIN_FILL_CONTRAST = 35.0  # luma between the fill's two colours, so the texture shows


def pixel_span(polygon: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """First and last (x, y) pixel a polygon touches; as in COCO, pixel j spans [j, j + 1)."""
    return np.floor(polygon.min(axis=0)).astype(int), np.ceil(polygon.max(axis=0)).astype(int) - 1


def coverage(polygon: np.ndarray, first: np.ndarray, size: np.ndarray) -> np.ndarray:
    """``(h, w)`` float32 fraction of each pixel of the block at ``first`` (x, y) of ``size``
    (w, h) that ``polygon`` covers."""
    fine_polygon = (polygon - first) * SUPERSAMPLING - 0.5  # fine pixel centres at integers
    fine_mask = Image.new('L', tuple(int(v) for v in size * SUPERSAMPLING))
    ImageDraw.Draw(fine_mask).polygon([tuple(v) for v in fine_polygon], fill=255)
    return np.asarray(fine_mask.resize(tuple(int(v) for v in size), Image.BOX), dtype=np.float32) / 255


def contrasting_colours(rng: np.random.Generator, background_rgb: np.ndarray) -> np.ndarray:
    """``(2, 3)`` random colours whose lumas both lie above (or both below) the luma of
    ``background_rgb`` by at least MIN_LUMINANCE_CONTRAST, and MIN_FILL_CONTRAST apart where the
    range allows. Each colour is a random hue at its drawn luma, as saturated as 0..255 allows."""
    target = float(luminance(background_rgb))
    room_above, room_below = 255 - target, target
    if min(room_above, room_below) >= MIN_LUMINANCE_CONTRAST:
        brighter = rng.uniform() < 0.5
    else:
        brighter = room_above > room_below
    low, high = (target + MIN_LUMINANCE_CONTRAST, 255.0) if brighter else (0.0, target - MIN_LUMINANCE_CONTRAST)
    lumas = np.array([low, high])
    for _ in range(16):
        drawn = rng.uniform(low, high, size=2)
        if abs(drawn[0] - drawn[1]) >= MIN_FILL_CONTRAST:
            lumas = drawn
            break
    hues = rng.uniform(0, 255, size=(2, 3))
    chroma = hues - luminance(hues)[:, None]  # zero luma: adding it keeps the luma
    with np.errstate(divide='ignore', invalid='ignore'):
        limit = np.where(chroma > 0, (255 - lumas[:, None]) / chroma, lumas[:, None] / -chroma)
    scale = np.minimum(1.0, np.nan_to_num(limit, nan=1.0, posinf=1.0).min(axis=1, keepdims=True))
    return (lumas[:, None] + scale * chroma).astype(np.float32)


def paint_shape(canvas: np.ndarray, polygon: np.ndarray, class_name: str, rng: np.random.Generator,
                class_texture_prob: float) -> None:
    """Paint ``polygon`` (``(N, 2)`` x, y pixels, inside the canvas) into ``canvas`` (``(H, W, 3)``
    uint8, in place), filled with a texture of ``class_name``'s family (probability
    ``class_texture_prob``) or of another family."""
    first, last = pixel_span(polygon)
    size = last - first + 1
    block = (slice(first[1], last[1] + 1), slice(first[0], last[0] + 1))
    region = canvas[block].astype(np.float32)
    colours = contrasting_colours(rng, region.mean(axis=(0, 1)))
    centre = (polygon.min(axis=0) + polygon.max(axis=0)) / 2 - first
    weight = fill_weight(rng, choose_fill(rng, class_name, class_texture_prob), (size[1], size[0]), centre,
                         np.sqrt(polygon_area(polygon)))
    fill = colours[0] + weight[..., None] * (colours[1] - colours[0])
    alpha = coverage(polygon, first, size)[..., None]
    region += alpha * (fill - region)
    canvas[block] = np.round(region).astype(np.uint8)
