"""Outlines of the synthetic shape classes.

Every builder takes a numpy ``Generator`` and returns one simple ``(N, 2)`` polygon of ``(x, y)``
vertices around the origin with a radius of about 1 (the ring is an annulus drawn as one
"keyhole" polygon: outer circle, a zero-width cut, inner circle backwards). :func:`sample_shape_polygon`
stretches it to an aspect ratio, rotates it and scales it to a requested area. Classes differ
by outline; :mod:`.textures` gives each class its own family of interior textures as well.
"""
from typing import Callable, Dict, Tuple

import numpy as np

DETECTION_CLASSES: Tuple[str, ...] = ('circle', 'rectangle', 'triangle', 'star', 'cross')
# Only in the backbone's pretraining crops: more outlines to tell apart than detection needs.
# No ellipse or rhombus: stretched circles and squares are those already.
EXTRA_CLASSES: Tuple[str, ...] = ('hexagon', 'ring', 'arrow', 'l_shape', 'crescent')

ARC_VERTICES = 48  # per full turn


def _ring(angles: np.ndarray, radii) -> np.ndarray:
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _turn(count: int = ARC_VERTICES) -> np.ndarray:
    return 2 * np.pi * np.arange(count) / count


def _circle(rng: np.random.Generator) -> np.ndarray:
    return _ring(_turn(), 1.0)


def _rectangle(rng: np.random.Generator) -> np.ndarray:
    """A square: the aspect-ratio stretch makes it a rectangle."""
    return np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])


def _triangle(rng: np.random.Generator) -> np.ndarray:
    angles = np.pi / 2 + _turn(3) + rng.uniform(-0.25, 0.25, size=3)
    return _ring(angles, rng.uniform(0.8, 1.0, size=3))


def _star(rng: np.random.Generator) -> np.ndarray:
    radii = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.4, 0.55))
    return _ring(_turn(10), radii)


def _quarter_turns(quarter: np.ndarray) -> np.ndarray:
    turn = np.array([[0.0, -1.0], [1.0, 0.0]])  # +90 degrees in (x, y)
    return np.concatenate([quarter @ np.linalg.matrix_power(turn, k).T for k in range(4)])


def _cross(rng: np.random.Generator) -> np.ndarray:
    """A plus sign: arms of half-length 1 and half-thickness t."""
    t = rng.uniform(0.28, 0.42)
    return _quarter_turns(np.array([[t, -1.0], [t, -t], [1.0, -t]]))  # an arm tip and the corner after it


def _hexagon(rng: np.random.Generator) -> np.ndarray:
    return _ring(_turn(6), 1.0)


def _annulus(rng: np.random.Generator) -> np.ndarray:
    """Outer circle counter-clockwise, then the inner one clockwise, joined by a zero-width cut."""
    outer = _ring(np.append(_turn(), 2 * np.pi), 1.0)
    inner = _ring(np.append(_turn(), 2 * np.pi)[::-1], rng.uniform(0.45, 0.65))
    return np.concatenate([outer, inner])


def _arrow(rng: np.random.Generator) -> np.ndarray:
    """Pointing along +x: a shaft of half-thickness t, a head from x = h to the tip at x = 1."""
    t, h, w = rng.uniform(0.18, 0.3), rng.uniform(0.0, 0.35), rng.uniform(0.55, 0.8)
    return np.array([[-1.0, -t], [h, -t], [h, -w], [1.0, 0.0], [h, w], [h, t], [-1.0, t]])


def _l_shape(rng: np.random.Generator) -> np.ndarray:
    t = rng.uniform(0.45, 0.8)  # arm thickness, the arms span [-1, 1]
    return np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, -1.0 + t], [-1.0 + t, -1.0 + t], [-1.0 + t, 1.0], [-1.0, 1.0]])


def _crescent(rng: np.random.Generator) -> np.ndarray:
    """The unit disc minus a disc of radius r centred at (c, 0)."""
    c, r = rng.uniform(0.4, 0.6), rng.uniform(0.75, 0.9)
    x = (1 + c * c - r * r) / (2 * c)  # where the two circles cross
    y = np.sqrt(1 - x * x)
    outer_start = np.arctan2(y, x)
    inner_start = np.arctan2(y, x - c)
    count = ARC_VERTICES // 2
    outer = _ring(np.linspace(outer_start, 2 * np.pi - outer_start, count), 1.0)
    inner = _ring(np.linspace(2 * np.pi - inner_start, inner_start, count)[1:-1], r) + [c, 0.0]
    return np.concatenate([outer, inner])


SHAPE_BUILDERS: Dict[str, Callable[[np.random.Generator], np.ndarray]] = {
    'circle': _circle,
    'rectangle': _rectangle,
    'triangle': _triangle,
    'star': _star,
    'cross': _cross,
    'hexagon': _hexagon,
    'ring': _annulus,
    'arrow': _arrow,
    'l_shape': _l_shape,
    'crescent': _crescent,
}
assert tuple(SHAPE_BUILDERS) == DETECTION_CLASSES + EXTRA_CLASSES


def polygon_area(polygon: np.ndarray) -> float:
    """Area of a simple polygon ``(N, 2)`` by the shoelace formula."""
    x, y = polygon[:, 0], polygon[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def sample_shape_polygon(name: str, rng: np.random.Generator, sqrt_area: float, aspect: float,
                         max_extent: float) -> np.ndarray:
    """A ``name`` polygon stretched to ``aspect`` (width / height, before rotation), randomly
    rotated and scaled to area ``sqrt_area**2``; translated so that its box starts at (0, 0).

    The area is kept exactly: where the box would exceed ``max_extent`` on a side, the stretch is
    reduced (halved in log scale, up to 8 times), and only a shape too large even unstretched
    is scaled down.
    """
    outline = SHAPE_BUILDERS[name](rng)
    angle = rng.uniform(0, 2 * np.pi)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    for _ in range(9):
        polygon = outline * [np.sqrt(aspect), 1 / np.sqrt(aspect)] @ rotation.T
        polygon *= sqrt_area / np.sqrt(polygon_area(polygon))
        extent = (polygon.max(axis=0) - polygon.min(axis=0)).max()
        if extent <= max_extent:
            break
        aspect = np.sqrt(aspect)
    else:
        polygon *= max_extent / extent
    return polygon - polygon.min(axis=0)
