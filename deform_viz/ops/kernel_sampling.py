"""Deformable Kernels' kernel sampling: where each tap of a K x K kernel sits in its S x S scope.

A K x K deformable kernel owns a larger S x S *scope* of weights (S >= K). Tap n = i*K + j sits
at ``base(i, j) + delta_n`` in scope coordinates, ``delta_n`` a learned kernel offset in scope
cells (mmcv's order, ``[y0, x0, y1, x1, ...]``). The position is clipped to ``[0, S-1]`` and the
tap's weight is the bilinear interpolation of the scope there (DK paper Eq. 7 and 12).

The rigid grid ``base``, per axis (``grid=``):

* ``'centred'`` (default): the official implementation's (hangg7/deformable-kernels,
  ``modules/deform_kernel.py``), whose numbers the DK paper reports: unit-spaced taps centred in
  the scope, tap i at ``start + i`` with ``start = (S - (K-1) - 1) / 2``. S = 4, K = 3: 0.5, 1.5,
  2.5; zero offsets then interpolate between neighbouring scope cells.
* ``'spread'``: the K taps spread evenly over ``[0, S-1]``, tap i at ``i * (S-1) / (K-1)`` (a
  single tap at ``(S-1) / 2``). S = 4, K = 3: 0, 1.5, 3.

Both are the integer grid 0..K-1 when S = K. Positions are computed in at least float32.

Gradient w.r.t. kernel offsets. Bilinear interpolation is piecewise linear in the position, with
kinks at integer scope coordinates, and the clip makes it constant outside the scope. The
gradient used here is:

* strictly inside a cell: the exact derivative (difference of neighbouring scope weights);
* at an interior integer coordinate: the slope of the cell above it (right derivative);
* at the scope border (position exactly 0 or S-1): the slope of the border cell, i.e. the
  one-sided derivative from *inside* the scope (the clip passes the gradient at equality);
* beyond the border (clipped): zero - the tap sits at the border and small offset changes do not
  move it.

The border rule matters at initialisation: with zero offsets and S = K the corner taps sit exactly
on the border, and they still receive the inward gradient, so the offset predictor can learn.
Taps whose offsets have run far outside receive no gradient through the kernel until the offset
predictor moves them back for other reasons; that is the clip of the paper (Sec. 4: "clip
sampling locations inside the original kernel space").
"""
from typing import Tuple

import torch
from torch import Tensor

from .utils import Pair, geometry_tensor, to_pair

GRIDS = ('centred', 'spread')

__all__ = ['GRIDS', 'check_scope', 'kernel_base_grid', 'kernel_sampling_corners',
           'kernel_sampling_weights', 'resample_kernel', 'scope_from_kernel']


def check_scope(kernel_size: Tuple[int, int], scope: Tuple[int, int]) -> None:
    """Raise unless the kernel is positive and fits in the scope (pairs)."""
    if min(kernel_size) < 1:
        raise ValueError(f'kernel_size must be positive, got {kernel_size}')
    if scope[0] < kernel_size[0] or scope[1] < kernel_size[1]:
        raise ValueError(f'scope {scope[0]}x{scope[1]} is smaller than the kernel '
                         f'{kernel_size[0]}x{kernel_size[1]}; the scope must be at least the kernel size')


def _check_grid(grid: str) -> None:
    if grid not in GRIDS:
        raise ValueError(f'grid must be one of {GRIDS}, got {grid!r}')


def kernel_base_grid(kernel_size: Pair, scope: Pair, grid: str = 'centred', *,
                     dtype=torch.float32, device=None) -> Tensor:
    """Rigid tap positions in scope coordinates, before any offset.

    Returns (Kh*Kw, 2) with (y, x) per tap n = i*Kw + j, laid out by ``grid`` (see the module doc).
    """
    (kh, kw), (sh, sw) = to_pair(kernel_size, 'kernel_size'), to_pair(scope, 'scope')
    check_scope((kh, kw), (sh, sw))
    _check_grid(grid)

    def axis(k: int, s: int) -> Tensor:
        if grid == 'centred':
            return torch.arange(k, dtype=dtype, device=device) + (s - (k - 1) - 1) / 2
        if k == 1:
            return torch.full((1,), (s - 1) / 2, dtype=dtype, device=device)
        return torch.arange(k, dtype=dtype, device=device) * ((s - 1) / (k - 1))

    ys, xs = torch.meshgrid(axis(kh, sh), axis(kw, sw), indexing='ij')
    return torch.stack([ys.reshape(-1), xs.reshape(-1)], dim=-1)


def _interp_1d(pos: Tensor, size: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Linear interpolation of clipped positions ``pos`` (...) on the cells 0..size-1.

    Returns the two cells and their weights: ``low``, ``high`` (int64) and ``w_low``, ``w_high``
    (differentiable in ``pos``). The floor is capped at size-2 so that a position on the upper
    border uses the last cell (inward one-sided slope); the clip passes the gradient at equality
    (see module doc). A single cell gets weight 1 (and a zero-weight duplicate), zero gradient.
    """
    if size == 1:
        zero = pos * 0
        index = torch.zeros(pos.shape, dtype=torch.long, device=pos.device)
        return index, index, zero + 1, zero
    pos = pos.clamp(0, size - 1)
    low = pos.detach().floor().clamp(max=size - 2)
    frac = pos - low
    low = low.long()
    return low, low + 1, 1 - frac, frac


def kernel_sampling_corners(kernel_offset: Tensor, kernel_size: Pair, scope: Pair,
                            grid: str = 'centred') -> Tuple[Tensor, Tensor]:
    """The (at most) four scope cells each kernel tap interpolates, and their bilinear weights.

    Args:
        kernel_offset: (..., Kh*Kw, 2) offsets (dy, dx) in scope cells, per tap n = i*Kw + j.
        kernel_size: K or (Kh, Kw).
        scope: S or (Sh, Sw), each >= the kernel size.
        grid: ``'centred'`` or ``'spread'`` rigid grid (module doc).

    Returns:
        ``cells`` (..., Kh*Kw, 4) int64 row-major scope indices and ``weights`` (..., Kh*Kw, 4),
        summing to one per tap, differentiable in ``kernel_offset``, float32 for half-precision
        offsets. A cell may repeat (with zero weight) when the scope is one cell wide.
    """
    (kh, kw), (sh, sw) = to_pair(kernel_size, 'kernel_size'), to_pair(scope, 'scope')
    if kernel_offset.shape[-2:] != (kh * kw, 2):
        raise ValueError(f'kernel_offset must have shape (..., {kh * kw}, 2) for a {kh}x{kw} '
                         f'kernel, got {tuple(kernel_offset.shape)}')
    kernel_offset = geometry_tensor(kernel_offset)
    pos = kernel_offset + kernel_base_grid((kh, kw), (sh, sw), grid, dtype=kernel_offset.dtype,
                                           device=kernel_offset.device)
    y0, y1, wy0, wy1 = _interp_1d(pos[..., 0], sh)
    x0, x1, wx0, wx1 = _interp_1d(pos[..., 1], sw)
    cells = torch.stack((y0 * sw + x0, y0 * sw + x1, y1 * sw + x0, y1 * sw + x1), dim=-1)
    weights = torch.stack((wy0 * wx0, wy0 * wx1, wy1 * wx0, wy1 * wx1), dim=-1)
    return cells, weights


def kernel_sampling_weights(kernel_offset: Tensor, kernel_size: Pair, scope: Pair,
                            grid: str = 'centred') -> Tensor:
    """Bilinear weights that place each kernel tap in the scope, as a dense matrix.

    Args and offsets as :func:`kernel_sampling_corners`.

    Returns:
        (..., Kh*Kw, Sh*Sw): row n holds the weights of tap n on the row-major scope grid
        (at most four non-zeros summing to one). The tap's kernel value is ``row . scope``.
    """
    cells, weights = kernel_sampling_corners(kernel_offset, kernel_size, scope, grid)
    sh, sw = to_pair(scope, 'scope')
    dense = weights.new_zeros(*weights.shape[:-1], sh * sw)
    return dense.scatter_add(-1, cells, weights)


def resample_kernel(weight: Tensor, kernel_offset: Tensor, kernel_size: Pair,
                    grid: str = 'centred') -> Tensor:
    """Sample a K x K kernel from the scope weights, one per offset set.

    Args:
        weight: (O, C/G, Sh, Sw) scope weights.
        kernel_offset: (N, 2*Kh*Kw) offsets, mmcv layout [y0, x0, y1, x1, ...].
        kernel_size: K or (Kh, Kw).
        grid: ``'centred'`` or ``'spread'`` rigid grid (module doc).

    Returns:
        (N, O, C/G, Kh, Kw) resampled kernels in the weight's dtype.
    """
    kh, kw = to_pair(kernel_size, 'kernel_size')
    if kernel_offset.dim() != 2 or kernel_offset.shape[1] != 2 * kh * kw:
        raise ValueError(f'kernel_offset must have shape (N, {2 * kh * kw}) for a {kh}x{kw} '
                         f'kernel, got {tuple(kernel_offset.shape)}')
    n = kernel_offset.shape[0]
    sampling = kernel_sampling_weights(kernel_offset.view(n, kh * kw, 2), (kh, kw),
                                       weight.shape[-2:], grid)  # (N, KK, SS)
    out_c, in_c, sh, sw = weight.shape
    # one skinny GEMM (O*C/G, SS) x (SS, N*KK); for N = 1 the result is already (O, C/G, K, K)
    kernel = torch.mm(weight.reshape(out_c * in_c, sh * sw),
                      sampling.reshape(n * kh * kw, sh * sw).t().to(weight.dtype))
    return kernel.view(out_c, in_c, n, kh, kw).permute(2, 0, 1, 3, 4)


def scope_from_kernel(kernel: Tensor, scope: Pair, grid: str = 'centred') -> Tensor:
    """Scope weights whose rigid taps (zero kernel offsets) sample ``kernel`` back exactly.

    kernel (O, C/G, Kh, Kw) -> (O, C/G, Sh, Sw): the minimum-norm solution of B f = k, with B the
    (Kh*Kw, Sh*Sw) bilinear sampling of the scope at the ``grid``'s rigid taps. An even S - K
    under ``'centred'`` puts the kernel in the middle of the scope, zeros around it; with the
    ``'spread'`` grid, K = 3, S = 4 repeats the middle row and column.
    """
    kh, kw = kernel.shape[2:]
    sh, sw = to_pair(scope, 'scope')
    rigid = kernel_sampling_weights(kernel.new_zeros(kh * kw, 2, dtype=torch.float64), (kh, kw),
                                    (sh, sw), grid)
    lift = torch.linalg.pinv(rigid).t()  # (Kh*Kw, Sh*Sw)
    out = kernel.reshape(-1, kh * kw).double() @ lift
    return out.to(kernel.dtype).view(*kernel.shape[:2], sh, sw)
