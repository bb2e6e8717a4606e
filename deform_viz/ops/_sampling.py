"""Bilinear sampling of feature maps at deformed taps: the internal interface of the ops package.

Not public API. :mod:`deform_viz.ops.deform_conv` (the fast DCN path) and the DCN + DK columns
of :mod:`deform_viz.ops._dk_autograd` build their samples from these three steps, in mmcv's
sampling convention (see :mod:`deform_viz.ops.deform_conv`):

1. :func:`input_rows` lays the input out as a table of channel rows, one per pixel of a map
   with a one-pixel zero border;
2. :func:`bilinear_taps` gives, per sample, the four corner rows and their bilinear weights
   (float32 or float64, differentiable in the offsets and the mask);
3. :func:`gather_rows` sums the weighted corner rows: one ``F.embedding_bag``, whose autograd
   gives the gradients of the rows and of the weights.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def bilinear_taps(offset: Tensor, mask: Optional[Tensor], in_size, kernel_size, stride, padding,
                  dilation) -> Tuple[Tensor, Tensor]:
    """Corner rows and weights of every sample.

    offset ``(N, 2*G*K*K, Ho, Wo)``, mask ``(N, G*K*K, Ho, Wo)`` or None (both in the same
    floating dtype, at least float32) -> index ``(M, 4)`` int64 and weights ``(M, 4)`` with
    ``M = N*Ho*Wo*K*K*G`` ordered (n, ho, wo, tap, g). Index points into the row table of
    :func:`input_rows`, whose zero border holds the corners just outside the map; samples outside
    (-1, H) x (-1, W) get zero weights.
    """
    n, _, ho, wo = offset.shape
    (h, w), (kh, kw) = in_size, kernel_size
    taps = kh * kw
    groups = offset.shape[1] // (2 * taps)
    dev = offset.device
    fields = offset.view(n, groups, taps, 2, ho, wo).permute(0, 4, 5, 2, 1, 3).contiguous()  # (N, Ho, Wo, KK, G, 2)
    tap_y = (torch.arange(kh, device=dev) * dilation[0]).repeat_interleave(kw)
    tap_x = (torch.arange(kw, device=dev) * dilation[1]).repeat(kh)
    base_y = (torch.arange(ho, device=dev) * stride[0] - padding[0])[:, None, None, None] + tap_y[:, None]
    base_x = (torch.arange(wo, device=dev) * stride[1] - padding[1])[:, None, None] + tap_x[:, None]
    y = fields[..., 0] + base_y.to(offset.dtype)  # (N, Ho, Wo, KK, G)
    x = fields[..., 1] + base_x.to(offset.dtype)
    inside = (y > -1) & (y < h) & (x > -1) & (x < w)
    # floor, kept inside the padded table for the samples whose weights are zeroed anyway
    y0 = y.detach().floor().nan_to_num_(nan=-1).clamp_(-1, h - 1)
    x0 = x.detach().floor().nan_to_num_(nan=-1).clamp_(-1, w - 1)
    ly, lx = y - y0, x - x0
    wy = torch.stack((1 - ly, ly), dim=-1)
    wx = torch.stack((1 - lx, lx), dim=-1)
    scale = inside.to(offset.dtype)
    if mask is not None:
        scale = scale * mask.view(n, groups, taps, ho, wo).permute(0, 3, 4, 2, 1)  # laid out like scale
    weights = (wy[..., :, None] * wx[..., None, :]).flatten(-2) * scale[..., None]

    pw = w + 2  # padded width
    image = torch.arange(n, device=dev)[:, None, None, None, None] * (h + 2)
    first = ((image + y0.long() + 1) * pw + x0.long() + 1) * groups + torch.arange(groups, device=dev)
    # [0, 1, pw, pw + 1] built on the device: torch.tensor(list) would be a blocking host-to-device copy
    step = torch.arange(2, device=dev)
    corners = (step[:, None] * pw + step).flatten() * groups
    return (first[..., None] + corners).reshape(-1, 4), weights.reshape(-1, 4)


def input_rows(x: Tensor, groups: int) -> Tensor:
    """``(N, C, H, W)`` -> row table ``(N*(H+2)*(W+2)*G, C/G)``: channels-last with a zero border."""
    n, c, h, w = x.shape
    rows = x.new_zeros(n, h + 2, w + 2, c)
    rows[:, 1:-1, 1:-1].copy_(x.permute(0, 2, 3, 1))
    return rows.view(-1, c // groups)


def gather_rows(index: Tensor, rows: Tensor, weights: Tensor) -> Tensor:
    """Weighted sum of four rows per sample: ``(M, 4), (R, Cg), (M, 4) -> (M, Cg)``.

    The weights are cast to the rows' dtype (a no-op unless the rows are half precision), so
    their gradient comes back in the weights' own dtype.
    """
    return F.embedding_bag(index, rows, per_sample_weights=weights.to(rows.dtype), mode='sum')
