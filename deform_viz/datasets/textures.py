"""Cheap textured backgrounds (grainy blotches, stripes, gradients, checkerboards) as uint8 RGB arrays.

Textures keep a moderate amplitude so that objects drawn with a contrasting colour stay visible.
"""
from typing import Callable, Dict

import numpy as np
from PIL import Image

MAX_TEXTURE_AMPLITUDE = 35.0  # largest per-channel departure from the base colour


def luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of ``(..., 3)`` RGB values."""
    return rgb @ np.array([0.299, 0.587, 0.114])


def _mix_with_second_colour(rng: np.random.Generator, base: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Per-pixel mix of ``base`` and a random nearby colour, ``weight`` (H, W) in [0, 1] -> uint8 (H, W, 3)."""
    other = np.clip(base + rng.uniform(-2 * MAX_TEXTURE_AMPLITUDE, 2 * MAX_TEXTURE_AMPLITUDE, size=3), 0, 255)
    size = weight.shape[::-1]
    mixed = Image.composite(Image.new('RGB', size, tuple(int(c) for c in other)),
                            Image.new('RGB', size, tuple(int(c) for c in base)),
                            Image.fromarray(np.round(weight * 255).astype(np.uint8)))
    return np.asarray(mixed)


def _unit_coordinates(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Pixel positions projected on a random direction, in pixels."""
    angle = rng.uniform(0, np.pi)
    ys, xs = np.ogrid[0:height, 0:width]
    return (xs * np.cos(angle) + ys * np.sin(angle)).astype(np.float32)


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


def _stripes(rng, base, height, width):
    period = rng.uniform(6, 40)
    phase = 2 * np.pi * _unit_coordinates(rng, height, width) / period
    return _mix_with_second_colour(rng, base, 0.5 + 0.5 * np.sin(phase))


def _gradient(rng, base, height, width):
    coordinate = _unit_coordinates(rng, height, width)
    span = coordinate.max() - coordinate.min()
    return _mix_with_second_colour(rng, base, (coordinate - coordinate.min()) / span)


def _checkerboard(rng, base, height, width):
    cell = int(rng.integers(6, 25))
    ys, xs = np.ogrid[0:height, 0:width]
    return _mix_with_second_colour(rng, base, ((ys // cell + xs // cell) % 2).astype(np.float32))


TEXTURES: Dict[str, Callable[..., np.ndarray]] = {
    'noise': _grainy_blotches,
    'stripes': _stripes,
    'gradient': _gradient,
    'checkerboard': _checkerboard,
}


def random_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A uint8 ``(height, width, 3)`` RGB background of a random texture kind."""
    base = rng.uniform(40, 215, size=3).astype(np.float32)
    return TEXTURES[rng.choice(sorted(TEXTURES))](rng, base, height, width)
