"""Geometry of deformable-conv offset fields: d_f / d_k projection, divergence, kernel extent.

Layouts (mmcv's, see DESIGN.md):
    packed offsets ``(N, 2*G*K*K, H, W)``: channel ``(g*K*K + n)*2 + c`` with tap ``n = i*K + j``
    and ``c = 0`` for dy, ``c = 1`` for dx, in pixels of the layer's input feature map.
    fields ``(..., K*K, 2, H, W)``: the same numbers with taps and (dy, dx) as their own dims.

All functions are differentiable torch code and accept any leading dims on fields.
"""
from typing import Tuple

import torch
from torch import Tensor

from ..variants import component_name
from .utils import Pair, to_pair


def _num_taps(kernel_size: Pair) -> int:
    kh, kw = to_pair(kernel_size, 'kernel_size')
    return kh * kw


def split_offsets(offset: Tensor, kernel_size: Pair) -> Tensor:
    """``(N, 2*G*K*K, H, W)`` packed offsets -> ``(N, G, K*K, 2, H, W)`` fields (a view)."""
    n, c, h, w = offset.shape
    taps = _num_taps(kernel_size)
    if c % (2 * taps):
        raise ValueError(f'offset has {c} channels, not a multiple of 2*K*K = {2 * taps} '
                         f'for kernel_size {kernel_size}')
    return offset.view(n, c // (2 * taps), taps, 2, h, w)


def merge_offsets(fields: Tensor) -> Tensor:
    """``(N, G, K*K, 2, H, W)`` fields -> ``(N, 2*G*K*K, H, W)`` packed offsets."""
    n, g, taps, two, h, w = fields.shape
    return fields.reshape(n, g * taps * two, h, w)


def offset_df(fields: Tensor) -> Tensor:
    """Feature-map displacement d_f: the mean offset over taps. ``(..., K*K, 2, H, W) -> (..., 2, H, W)``."""
    return fields.mean(dim=-4)


def offset_dk(fields: Tensor) -> Tensor:
    """Kernel-space displacement d_k = offset - d_f. ``(..., K*K, 2, H, W) -> same shape``."""
    return fields - fields.mean(dim=-4, keepdim=True)


def project_offsets(offset: Tensor, kernel_size: Pair, component: str) -> Tensor:
    """Keep one component of packed offsets ``(N, 2*G*K*K, H, W)``; same shape out.

    ``component`` is one of :data:`deform_viz.variants.COMPONENTS` (legacy ``'df'``/``'dk'``
    accepted): ``'full'`` returns the input, ``'d_f'`` replaces every tap by d_f (paper Eq. 2),
    ``'d_k'`` by offset - d_f (Eq. 3), so ``d_f + d_k == full``.
    """
    component = component_name(component)
    if component == 'full':
        return offset
    fields = split_offsets(offset, kernel_size)
    if component == 'd_f':
        projected = fields.mean(dim=2, keepdim=True).expand_as(fields)
    else:
        projected = offset_dk(fields)
    return merge_offsets(projected)


def divergence(vectors: Tensor) -> Tensor:
    """div = d(dx)/dx + d(dy)/dy by central differences (one-sided at borders).

    ``(..., 2, H, W)`` with (dy, dx) -> ``(..., H, W)``; negative where arrows converge.
    Fields smaller than 2 along an axis contribute no derivative along it.
    """
    dy, dx = vectors.unbind(dim=-3)
    div = torch.zeros_like(dy)
    if dx.shape[-1] > 1:
        div = div + torch.gradient(dx, dim=-1)[0]
    if dy.shape[-2] > 1:
        div = div + torch.gradient(dy, dim=-2)[0]
    return div


def rigid_grid(kernel_size: Pair, dilation: Pair = 1, device=None, dtype=None) -> Tensor:
    """Tap positions of the rigid kernel relative to its centre, ``(K*K, 2)`` as (y, x)."""
    (kh, kw), (dh, dw) = to_pair(kernel_size, 'kernel_size'), to_pair(dilation, 'dilation')
    ys = (torch.arange(kh, device=device, dtype=dtype) - (kh - 1) / 2) * dh
    xs = (torch.arange(kw, device=device, dtype=dtype) - (kw - 1) / 2) * dw
    return torch.stack(torch.meshgrid(ys, xs, indexing='ij'), dim=-1).reshape(kh * kw, 2)


def sampling_positions(fields: Tensor, kernel_size: Pair, dilation: Pair = 1) -> Tensor:
    """Where each tap samples, relative to the output location p0 (in input pixels).

    ``(..., K*K, 2, H, W)`` offsets -> ``(..., K*K, 2, H, W)`` rigid grid position + offset.
    """
    grid = rigid_grid(kernel_size, dilation, fields.device, fields.dtype)
    return fields + grid[:, :, None, None]


def _tap_grid(positions: Tensor, kernel_size: Pair) -> Tensor:
    """``(..., K*K, 2, H, W)`` -> ``(..., Kh, Kw, 2, H, W)``."""
    kh, kw = to_pair(kernel_size, 'kernel_size')
    return positions.unflatten(-4, (kh, kw))


def kernel_extent(fields: Tensor, kernel_size: Pair, dilation: Pair = 1) -> Tuple[Tensor, Tensor]:
    """Width and height of each location's deformed kernel, ``(..., H, W)`` each.

    width = mean x of the right tap column minus mean x of the left column, height likewise
    for the bottom and top rows; positions include the rigid grid, so zero offsets give
    ``(K-1) * dilation``.
    """
    grid = _tap_grid(sampling_positions(fields, kernel_size, dilation), kernel_size)
    width = grid[..., :, -1, 1, :, :].mean(dim=-3) - grid[..., :, 0, 1, :, :].mean(dim=-3)
    height = grid[..., -1, :, 0, :, :].mean(dim=-3) - grid[..., 0, :, 0, :, :].mean(dim=-3)
    return width, height


def extent_radius(fields: Tensor, kernel_size: Pair, dilation: Pair = 1) -> Tensor:
    """Circle radius of Fig. 3: sqrt(width * height), 0 where the kernel folds over. ``(..., H, W)``."""
    width, height = kernel_extent(fields, kernel_size, dilation)
    return (width * height).clamp(min=0).sqrt()


def effective_dilation(fields: Tensor, kernel_size: Pair, dilation: Pair = 1) -> Tensor:
    """Mean distance between horizontally and vertically adjacent sampling points, ``(..., H, W)``.

    Zero offsets give the layer's dilation (the mean of dh and dw when they differ).
    """
    grid = _tap_grid(sampling_positions(fields, kernel_size, dilation), kernel_size)
    kh, kw = grid.shape[-5], grid.shape[-4]
    if kh * kw == 1:
        raise ValueError('effective dilation needs a kernel larger than 1x1')
    # sum of squares over (dy, dx) then sqrt: much faster than norm() on these strided views
    along_rows = (grid[..., :, 1:, :, :, :] - grid[..., :, :-1, :, :, :]).square().sum(dim=-3).sqrt()
    along_cols = (grid[..., 1:, :, :, :, :] - grid[..., :-1, :, :, :, :]).square().sum(dim=-3).sqrt()
    total = along_rows.sum(dim=(-4, -3)) + along_cols.sum(dim=(-4, -3))
    return total / (kh * (kw - 1) + (kh - 1) * kw)
