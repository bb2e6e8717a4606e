"""Textures: backgrounds of whole images, and interior fills of objects.

The two sets are disjoint, so a texture tells object from background. Each shape class has its
own fill family (:data:`CLASS_TEXTURES`, e.g. concentric rings for circles, rays for stars) with a
random period, phase, orientation and pair of colours, so an object's interior helps to tell
its class, and several families (rings, rays, spiral) are anchored at the object's centre.

A fill is a weight in [0, 1] per pixel that mixes the object's two colours; periods scale with
the object's size (a few periods across any object), never below :data:`MIN_PERIOD` pixels.
"""
from typing import Callable, Dict, Tuple

import numpy as np
from PIL import Image

MAX_TEXTURE_AMPLITUDE = 35.0  # largest per-channel departure of a background from its base colour
MIN_PERIOD = 3.0  # pixels: finer fills alias
PERIODS_ACROSS = (2.5, 6.0)  # fill periods across an object of size sqrt(area)


def luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of ``(..., 3)`` RGB values."""
    return rgb @ np.array([0.299, 0.587, 0.114])


# ---------------------------------------------------------------- backgrounds

def _mix_with_second_colour(rng: np.random.Generator, base: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Per-pixel mix of ``base`` and a random nearby colour, ``weight`` (H, W) in [0, 1] -> uint8 (H, W, 3)."""
    other = np.clip(base + rng.uniform(-2 * MAX_TEXTURE_AMPLITUDE, 2 * MAX_TEXTURE_AMPLITUDE, size=3), 0, 255)
    size = weight.shape[::-1]
    mixed = Image.composite(Image.new('RGB', size, tuple(int(c) for c in other)),
                            Image.new('RGB', size, tuple(int(c) for c in base)),
                            Image.fromarray(np.round(weight * 255).astype(np.uint8)))
    return np.array(mixed)  # writable: objects are painted into it


def _grainy_blotches(rng, base, height, width):
    """Smooth colour blotches (bilinearly upsampled coarse noise) plus fine per-pixel grain."""
    cell = int(rng.integers(4, 33))
    coarse = rng.integers(0, 256, size=(height // cell + 2, width // cell + 2, 3), dtype=np.uint8)
    texture = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR), dtype=np.float32)
    amplitude = rng.uniform(10, MAX_TEXTURE_AMPLITUDE - 8)
    texture *= amplitude / 127.5  # in place: 0..255 -> base + [-amplitude, amplitude]
    texture += base - amplitude
    texture += rng.standard_normal(size=(height, width, 1), dtype=np.float32) * rng.uniform(2, 8)
    return np.clip(texture, 0, 255, out=texture).astype(np.uint8)


def _gradient(rng, base, height, width):
    angle = rng.uniform(0, np.pi)
    ys, xs = np.ogrid[0:height, 0:width]
    coordinate = (xs * np.cos(angle) + ys * np.sin(angle)).astype(np.float32)
    span = coordinate.max() - coordinate.min()
    return _mix_with_second_colour(rng, base, (coordinate - coordinate.min()) / span)


def _checkerboard(rng, base, height, width):
    cell = int(rng.integers(6, 25))
    ys, xs = np.ogrid[0:height, 0:width]
    return _mix_with_second_colour(rng, base, ((ys // cell + xs // cell) % 2).astype(np.float32))


BACKGROUNDS: Dict[str, Callable[..., np.ndarray]] = {
    'noise': _grainy_blotches,
    'gradient': _gradient,
    'checkerboard': _checkerboard,
}


def random_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A uint8 ``(height, width, 3)`` RGB background of a random kind."""
    base = rng.uniform(40, 215, size=3).astype(np.float32)
    return BACKGROUNDS[rng.choice(sorted(BACKGROUNDS))](rng, base, height, width)


# ---------------------------------------------------------------- object fills
# Each takes (rng, u, v, period): u (1, W) and v (H, 1) pixel-centre coordinates relative to the
# object's centre, and returns an (H, W) float32 weight in [0, 1].

def _wave(phase) -> np.ndarray:
    return (0.5 + 0.5 * np.cos(phase)).astype(np.float32)


def _rotated(rng, u, v):
    angle = rng.uniform(0, np.pi)
    return u * np.cos(angle) + v * np.sin(angle), v * np.cos(angle) - u * np.sin(angle)


def _rings(rng, u, v, period):
    return _wave(2 * np.pi * np.hypot(u, v) / period + rng.uniform(0, 2 * np.pi))


def _stripes(rng, u, v, period):
    along, _ = _rotated(rng, u, v)
    return _wave(2 * np.pi * along / period + rng.uniform(0, 2 * np.pi))


def _dots(rng, u, v, period):
    along, across = _rotated(rng, u, v)
    phases = rng.uniform(0, 2 * np.pi, size=2)
    return _wave(2 * np.pi * along / period + phases[0]) * _wave(2 * np.pi * across / period + phases[1])


def _rays(rng, u, v, period):
    count = int(rng.integers(3, 9))
    return _wave(count * np.arctan2(v, u) + rng.uniform(0, 2 * np.pi))


def _hatch(rng, u, v, period):
    along, across = _rotated(rng, u, v)
    phases = rng.uniform(0, 2 * np.pi, size=2)
    return np.maximum(_wave(2 * np.pi * along / period + phases[0]), _wave(2 * np.pi * across / period + phases[1]))


def _waves(rng, u, v, period):
    along, across = _rotated(rng, u, v)
    wobble = rng.uniform(0.2, 0.5) * period * np.sin(2 * np.pi * across / (rng.uniform(1.5, 3) * period))
    return _wave(2 * np.pi * (along + wobble) / period + rng.uniform(0, 2 * np.pi))


def _spiral(rng, u, v, period):
    arms = int(rng.integers(1, 4)) * rng.choice([-1, 1])
    return _wave(2 * np.pi * np.hypot(u, v) / period + arms * np.arctan2(v, u) + rng.uniform(0, 2 * np.pi))


def _speckle(rng, u, v, period):
    """Blobs about a period wide: coarse uniform noise, bilinearly upsampled."""
    height, width = v.shape[0], u.shape[1]
    cell = max(period / 2, 1.0)
    coarse = rng.integers(0, 256, size=(int(height / cell) + 2, int(width / cell) + 2), dtype=np.uint8)
    upsampled = Image.fromarray(coarse).resize((width, height), Image.BILINEAR)
    return np.asarray(upsampled, dtype=np.float32) / 255


FILLS: Dict[str, Callable[..., np.ndarray]] = {
    'rings': _rings,
    'stripes': _stripes,
    'dots': _dots,
    'rays': _rays,
    'hatch': _hatch,
    'waves': _waves,
    'spiral': _spiral,
    'speckle': _speckle,
}
CLASS_TEXTURES: Dict[str, str] = {
    'circle': 'rings',
    'rectangle': 'stripes',
    'triangle': 'dots',
    'star': 'rays',
    'cross': 'hatch',
    'hexagon': 'waves',
    'ring': 'spiral',
    'arrow': 'speckle',
    'l_shape': 'dots',
    'crescent': 'rays',
}


def choose_fill(rng: np.random.Generator, class_name: str, class_texture_prob: float) -> str:
    """The class's own fill family with probability ``class_texture_prob``, else one of the others."""
    own = CLASS_TEXTURES[class_name]
    if rng.uniform() < class_texture_prob:
        return own
    return str(rng.choice([name for name in FILLS if name != own]))


def fill_weight(rng: np.random.Generator, fill: str, shape: Tuple[int, int], centre: np.ndarray,
                size: float) -> np.ndarray:
    """The ``(H, W)`` weight of ``fill`` over a pixel block of ``shape`` whose pixel centres sit at
    ``(0.5, 0.5) + (j, i) - centre`` from an object of size ``size`` (sqrt(area), pixels)."""
    height, width = shape
    u = (np.arange(width, dtype=np.float32) + 0.5 - centre[0])[None, :]
    v = (np.arange(height, dtype=np.float32) + 0.5 - centre[1])[:, None]
    period = max(MIN_PERIOD, size / rng.uniform(*PERIODS_ACROSS))
    return np.broadcast_to(FILLS[fill](rng, u, v, period), shape)
