"""Deformable convolution (DCNv1 and modulated DCNv2) in plain PyTorch, numerically equal to mmcv's op.

Sampling convention (mmcv's ``deform_conv`` / ``modulated_deform_conv`` CPU and CUDA kernels):
tap ``n = i*Kw + j`` of output location ``(ho, wo)`` samples the input at

    y = ho*stride_h - pad_h + i*dil_h + offset[(g*Kh*Kw + n)*2 + 0, ho, wo]
    x = wo*stride_w - pad_w + j*dil_w + offset[(g*Kh*Kw + n)*2 + 1, ho, wo]

for the channels of deform group ``g``. The value is the bilinear interpolation of the four
integer corners around ``(y, x)``, corners outside the map count as 0, and a sample with
``y <= -1``, ``y >= H``, ``x <= -1`` or ``x >= W`` is 0 altogether (no gradient to its offset
either). DCNv2 multiplies each sample by ``mask[g*Kh*Kw + n, ho, wo]``.

How it is fast on CPU: the input is laid out channels-last as one row of channels per pixel
(with a one-pixel zero border for the corners just outside the map). A sample is then a weighted sum of four
rows, which is exactly ``F.embedding_bag(..., per_sample_weights=..., mode='sum')``: one fused,
multithreaded gather whose backward gives both the input gradient (a scatter of the weighted
rows) and the gradient of the four corner weights, from which autograd gets the offset and mask
gradients. The sampled columns ``(L, K*K*C)`` then meet the weights in a single GEMM.
:func:`deform_conv2d_torch` neither keeps the columns for backward (it recomputes them, like
mmcv) nor builds them for more than ``COLUMN_CHUNK_ELEMENTS`` numbers at a time.

Precision (see :mod:`deform_viz.ops.utils`): under autocast the rows, columns, weights and output
are in autocast's dtype, as mmcv's op casts its inputs to the offsets' half dtype; the sampling
positions and corner weights stay float32, where mmcv's CUDA kernel rounds them to half.
"""
from typing import Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._sampling import bilinear_taps, gather_rows, input_rows
from .utils import Pair, conv_output_size, geometry_tensor, to_pair, value_tensors

#: Largest number of column entries (output locations x K*K x C) materialised at once.
COLUMN_CHUNK_ELEMENTS = 1 << 24


def _deform_groups(x: Tensor, offset: Tensor, mask: Optional[Tensor], kernel_size, stride, padding,
                   dilation) -> int:
    """Check shapes against each other and return the number of deform groups G."""
    if x.dim() != 4 or offset.dim() != 4:
        raise ValueError(f'expected 4-d input and offset (N, C, H, W), got {tuple(x.shape)} and '
                         f'{tuple(offset.shape)}')
    taps = kernel_size[0] * kernel_size[1]
    channels = offset.shape[1]
    if channels == 0 or channels % (2 * taps):
        raise ValueError(f'offset has {channels} channels; a {kernel_size[0]}x{kernel_size[1]} kernel '
                         f'needs 2*deform_groups*{taps} (mmcv layout [y0, x0, y1, x1, ...] per group)')
    groups = channels // (2 * taps)
    if x.shape[1] % groups:
        raise ValueError(f'input channels ({x.shape[1]}) not divisible by deform_groups ({groups}, '
                         f'inferred from {channels} offset channels)')
    out_size = conv_output_size(x.shape[2:], kernel_size, stride, padding, dilation)
    if min(out_size) <= 0:
        raise ValueError(f'input {tuple(x.shape[2:])} is too small for kernel {kernel_size}, padding '
                         f'{padding}, dilation {dilation}')
    if offset.shape[0] != x.shape[0] or tuple(offset.shape[2:]) != out_size:
        raise ValueError(f'offset must be (N={x.shape[0]}, {channels}, {out_size[0]}, {out_size[1]}), '
                         f'got {tuple(offset.shape)}')
    if mask is not None and tuple(mask.shape) != (x.shape[0], groups * taps, *out_size):
        raise ValueError(f'mask must be (N, deform_groups*K*K, Ho, Wo) = '
                         f'{(x.shape[0], groups * taps, *out_size)}, got {tuple(mask.shape)}')
    return groups


def deform_sample(x: Tensor, offset: Tensor, kernel_size: Pair, stride: Pair = 1, padding: Pair = 0,
                  dilation: Pair = 1, mask: Optional[Tensor] = None) -> Tensor:
    """Input values at the deformed taps of a deformable conv (mmcv's im2col, differentiable).

    Args:
        x: ``(N, C, H, W)``.
        offset: ``(N, 2*G*Kh*Kw, Ho, Wo)`` in mmcv's layout; G (deform groups) must divide C.
        kernel_size, stride, padding, dilation: int or pair, as for the convolution.
        mask: optional ``(N, G*Kh*Kw, Ho, Wo)`` DCNv2 modulation multiplying each sample.

    Returns:
        ``(N, C, Kh*Kw, Ho, Wo)`` in x's dtype (autocast's under autocast). The tensor is a
        permuted view of channels-last memory ``(N, Ho, Wo, Kh*Kw, C)``, so
        ``.permute(0, 3, 4, 2, 1)`` gives that layout without a copy. Autograd reaches x, offset
        and mask.
    """
    kernel_size, stride = to_pair(kernel_size, 'kernel_size'), to_pair(stride, 'stride')
    padding, dilation = to_pair(padding, 'padding'), to_pair(dilation, 'dilation')
    groups = _deform_groups(x, offset, mask, kernel_size, stride, padding, dilation)
    x, = value_tensors(x)
    n, c, h, w = x.shape
    ho, wo = offset.shape[2:]
    index, weights = bilinear_taps(geometry_tensor(offset), geometry_tensor(mask), (h, w), kernel_size,
                                   stride, padding, dilation)
    cols = gather_rows(index, input_rows(x, groups), weights)
    return cols.view(n, ho, wo, kernel_size[0] * kernel_size[1], c).permute(0, 4, 3, 1, 2)


def _weight_matrix(weight: Tensor, groups: int) -> Tensor:
    """``(Cout, C/groups, Kh, Kw)`` -> ``(groups, Cout/groups, Kh*Kw*C/groups)`` matching the columns."""
    cout, cin_g = weight.shape[:2]
    return weight.permute(0, 2, 3, 1).reshape(groups, cout // groups, -1)


def _split_groups(cols: Tensor, taps: int, groups: int) -> Tensor:
    """Columns ``(l, KK*C)`` -> ``(groups, l, KK*C/groups)`` (a copy unless groups == 1)."""
    if groups == 1:
        return cols.unsqueeze(0)
    locations = cols.shape[0]
    return cols.view(locations, taps, groups, -1).permute(2, 0, 1, 3).reshape(groups, locations, -1)


def _merge_groups(cols_g: Tensor, taps: int) -> Tensor:
    """Inverse of :func:`_split_groups`: ``(groups, l, KK*C/groups)`` -> ``(l, KK*C)``."""
    groups, locations = cols_g.shape[:2]
    if groups == 1:
        return cols_g[0]
    return cols_g.view(groups, locations, taps, -1).permute(1, 2, 0, 3).reshape(locations, -1)


def _chunks(locations: int, per_location: int):
    step = max(1, COLUMN_CHUNK_ELEMENTS // max(per_location, 1))
    for start in range(0, locations, step):
        yield start, min(start + step, locations)


class _DeformConv2dFunction(torch.autograd.Function):
    """Columns are rebuilt chunk by chunk in backward, so only the input rows are kept."""

    @staticmethod
    def forward(ctx, x, offset, mask, weight, bias, kernel_size, stride, padding, dilation, groups,
                deform_groups):
        n, c, h, w = x.shape
        ho, wo = offset.shape[2:]
        taps = kernel_size[0] * kernel_size[1]
        geometry = ((h, w), kernel_size, stride, padding, dilation)
        rows = input_rows(x, deform_groups)
        index, weights = bilinear_taps(offset, mask, *geometry)
        wmat = _weight_matrix(weight, groups)
        locations, per_sample = n * ho * wo, taps * deform_groups
        out = x.new_empty(locations, weight.shape[0])
        for a, b in _chunks(locations, taps * c):
            cols = gather_rows(index[a * per_sample:b * per_sample], rows, weights[a * per_sample:b * per_sample])
            if groups == 1:
                torch.mm(cols.view(b - a, -1), wmat[0].t(), out=out[a:b])
            else:
                cols_g = _split_groups(cols.view(b - a, -1), taps, groups)
                out[a:b] = torch.bmm(cols_g, wmat.transpose(1, 2)).transpose(0, 1).reshape(b - a, -1)
        if bias is not None:
            out += bias
        ctx.save_for_backward(rows, offset, mask, weight)
        ctx.geometry, ctx.groups, ctx.deform_groups = geometry, groups, deform_groups
        ctx.has_bias, ctx.x_shape = bias is not None, x.shape
        return out.view(n, ho, wo, weight.shape[0]).permute(0, 3, 1, 2).contiguous()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        rows, offset, mask, weight = ctx.saved_tensors
        need_x, need_offset, need_mask, need_weight, need_bias = ctx.needs_input_grad[:5]
        need_mask = need_mask and mask is not None
        need_taps = need_offset or need_mask
        n, c, h, w = ctx.x_shape
        ho, wo = offset.shape[2:]
        groups, taps = ctx.groups, ctx.geometry[1][0] * ctx.geometry[1][1]
        locations, per_sample = n * ho * wo, taps * ctx.deform_groups
        cout = weight.shape[0]
        grad = grad_out.permute(0, 2, 3, 1).reshape(locations, cout)
        grad_g = grad.view(locations, groups, cout // groups).transpose(0, 1)  # (groups, L, Cout/groups)

        with torch.enable_grad():
            offset_leaf = offset.detach().requires_grad_(need_offset)
            mask_leaf = None if mask is None else mask.detach().requires_grad_(need_mask)
            index, weights = bilinear_taps(offset_leaf, mask_leaf, *ctx.geometry)
        wmat = _weight_matrix(weight, groups)
        rows_leaf = rows.detach().requires_grad_(need_x)
        grad_rows = grad_weights = grad_wmat = None
        if need_taps:
            grad_weights = torch.empty_like(weights)
        if need_weight:
            grad_wmat = torch.zeros_like(wmat)
        for a, b in _chunks(locations, taps * c):
            s = slice(a * per_sample, b * per_sample)
            weights_leaf = weights[s].detach().requires_grad_(need_taps)
            with torch.set_grad_enabled(need_x or need_taps):
                cols = gather_rows(index[s], rows_leaf, weights_leaf)
            if need_weight:
                if groups == 1:
                    grad_wmat[0].addmm_(grad[a:b].t(), cols.detach().view(b - a, -1))
                else:
                    cols_g = _split_groups(cols.detach().view(b - a, -1), taps, groups)
                    grad_wmat.baddbmm_(grad_g[:, a:b].transpose(1, 2), cols_g)
            if need_x or need_taps:
                if groups == 1:
                    grad_cols = torch.mm(grad[a:b], wmat[0]).view_as(cols)
                else:
                    grad_cols = _merge_groups(torch.bmm(grad_g[:, a:b], wmat), taps).view_as(cols)
                inputs = [t for t, need in ((rows_leaf, need_x), (weights_leaf, need_taps)) if need]
                grads = list(torch.autograd.grad(cols, inputs, grad_cols))
                if need_x:
                    part = grads.pop(0)
                    grad_rows = part if grad_rows is None else grad_rows.add_(part)
                if need_taps:
                    grad_weights[s] = grads.pop(0)

        grad_x = grad_offset = grad_mask = grad_weight = grad_bias = None
        if need_x:
            if grad_rows is None:  # no output location (batch size 0)
                grad_rows = torch.zeros_like(rows)
            grad_x = grad_rows.view(n, h + 2, w + 2, c)[:, 1:-1, 1:-1].permute(0, 3, 1, 2).contiguous()
        if need_taps:
            leaves = [t for t, need in ((offset_leaf, need_offset), (mask_leaf, need_mask)) if need]
            grads = list(torch.autograd.grad(weights, leaves, grad_weights))
            grad_offset = grads.pop(0) if need_offset else None
            grad_mask = grads.pop(0) if need_mask else None
        if need_weight:
            grad_weight = grad_wmat.view(cout, *ctx.geometry[1], -1).permute(0, 3, 1, 2)
        if need_bias and ctx.has_bias:
            grad_bias = grad.sum(0)
        return grad_x, grad_offset, grad_mask, grad_weight, grad_bias, None, None, None, None, None, None


def deform_conv2d_torch(x: Tensor, offset: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                        stride: Pair = 1, padding: Pair = 0, dilation: Pair = 1, groups: int = 1,
                        mask: Optional[Tensor] = None) -> Tensor:
    """Deformable convolution, equal to mmcv's ``deform_conv2d`` (mask=None) or ``modulated_deform_conv2d``.

    Args:
        x: ``(N, C, H, W)``.
        offset: ``(N, 2*G*Kh*Kw, Ho, Wo)``, mmcv layout; deform groups G are inferred and must divide C.
        weight: ``(Cout, C/groups, Kh, Kw)``.
        bias: optional ``(Cout,)``.
        stride, padding, dilation: int or pair.
        groups: convolution groups, dividing C and Cout.
        mask: optional ``(N, G*Kh*Kw, Ho, Wo)`` DCNv2 modulation (already through a sigmoid).

    Returns:
        ``(N, Cout, Ho, Wo)`` in x's dtype (autocast's under autocast). Differentiable in x,
        offset, mask, weight and bias (first order).
    """
    stride, padding = to_pair(stride, 'stride'), to_pair(padding, 'padding')
    dilation = to_pair(dilation, 'dilation')
    if weight.dim() != 4:
        raise ValueError(f'weight must be (Cout, C/groups, Kh, Kw), got {tuple(weight.shape)}')
    kernel_size = tuple(weight.shape[2:])
    deform_groups = _deform_groups(x, offset, mask, kernel_size, stride, padding, dilation)
    cout, cin_g = weight.shape[:2]
    if x.shape[1] != cin_g * groups or cout % groups:
        raise ValueError(f'weight {tuple(weight.shape)} does not fit input channels {x.shape[1]} with '
                         f'groups={groups} (need C == weight.shape[1]*groups and Cout % groups == 0)')
    if bias is not None and tuple(bias.shape) != (cout,):
        raise ValueError(f'bias must be ({cout},), got {tuple(bias.shape)}')
    x, weight, bias = value_tensors(x, weight=weight, bias=bias)
    return _DeformConv2dFunction.apply(x, geometry_tensor(offset), geometry_tensor(mask), weight, bias,
                                       kernel_size, stride, padding, dilation, groups, deform_groups)
