"""Polygons of the synthetic shape classes.

Every builder takes a numpy ``Generator`` and returns an ``(N, 2)`` float array of ``(x, y)``
vertices around the origin with a radius of about 1; :func:`sample_shape_polygon` rotates it and
scales it to a requested area. Classes differ by outline, so a detector must learn shape, not colour.
"""
from typing import Callable, Dict

import numpy as np

CIRCLE_VERTICES = 48


def _ring(angles: np.ndarray, radii) -> np.ndarray:
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _circle(rng: np.random.Generator) -> np.ndarray:
    return _ring(2 * np.pi * np.arange(CIRCLE_VERTICES) / CIRCLE_VERTICES, 1.0)


def _rectangle(rng: np.random.Generator) -> np.ndarray:
    half_height = 1.0 / rng.uniform(1.0, 2.5)  # aspect ratio 1 (square) to 2.5
    return np.array([[-1.0, -half_height], [1.0, -half_height], [1.0, half_height], [-1.0, half_height]])


def _triangle(rng: np.random.Generator) -> np.ndarray:
    angles = np.pi / 2 + 2 * np.pi * np.arange(3) / 3 + rng.uniform(-0.25, 0.25, size=3)
    return _ring(angles, rng.uniform(0.8, 1.0, size=3))


def _star(rng: np.random.Generator) -> np.ndarray:
    radii = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.4, 0.55))
    return _ring(2 * np.pi * np.arange(10) / 10, radii)


def _cross(rng: np.random.Generator) -> np.ndarray:
    """A plus sign: arms of half-length 1 and half-thickness t."""
    t = rng.uniform(0.28, 0.42)
    quarter = np.array([[t, -1.0], [t, -t], [1.0, -t]])  # one arm tip and the corner after it
    turn = np.array([[0.0, -1.0], [1.0, 0.0]])  # +90 degrees in (x, y)
    return np.concatenate([quarter @ np.linalg.matrix_power(turn, k).T for k in range(4)])


SHAPE_BUILDERS: Dict[str, Callable[[np.random.Generator], np.ndarray]] = {
    'circle': _circle,
    'rectangle': _rectangle,
    'triangle': _triangle,
    'star': _star,
    'cross': _cross,
}


def polygon_area(polygon: np.ndarray) -> float:
    """Area of a simple polygon ``(N, 2)`` by the shoelace formula."""
    x, y = polygon[:, 0], polygon[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def sample_shape_polygon(name: str, rng: np.random.Generator, sqrt_area: float, max_extent: float) -> np.ndarray:
    """A randomly rotated ``name`` polygon of area ``sqrt_area**2``, shrunk if needed so that
    neither side of its bounding box exceeds ``max_extent``; translated so its box starts at (0, 0)."""
    polygon = SHAPE_BUILDERS[name](rng)
    angle = rng.uniform(0, 2 * np.pi)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    polygon = polygon @ rotation.T
    polygon *= sqrt_area / np.sqrt(polygon_area(polygon))
    extent = (polygon.max(axis=0) - polygon.min(axis=0)).max()
    if extent > max_extent:
        polygon *= max_extent / extent
    return polygon - polygon.min(axis=0)
