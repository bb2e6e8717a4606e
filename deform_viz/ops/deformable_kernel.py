"""Deformable Kernels (Gao et al., ICLR 2020): the kernel is resampled, the data grid stays rigid.

A K x K deformable kernel owns a larger S x S *scope* of weights (S >= K). Tap n = i*K + j sits at
``base(i, j) + delta_n`` in scope coordinates, where ``base`` spaces the K taps evenly over
``[0, S-1]`` (S = K gives the integer grid, K = 1 the scope centre) and ``delta_n`` is a learned
kernel offset in units of scope cells. The position is clipped to ``[0, S-1]`` and the tap weight is
the bilinear interpolation of the scope there (DK paper Eq. 7 and 12).

Shapes (G = conv groups, C = input channels, O = output channels, L = Ho*Wo):

* ``weight``         (O, C/G, Sh, Sw)   the scope weights.
* local offsets      (N, 2*Kh*Kw, Ho, Wo), one offset set per output location.
* global offsets     (N, 2*Kh*Kw), one offset set per image.
* Offset channels follow mmcv's data offsets: ``[y0, x0, y1, x1, ...]``, tap n = i*Kw + j.
* ``data_offset``    (N, 2*D*Kh*Kw, Ho, Wo) mmcv DCN layout, D deform groups (DCN + DK, Eq. 11).

Local DK never builds a kernel per output location. With U(p) the K*K input columns at location p
(C*K*K values) and B(p) the (K*K, S*S) bilinear weights, ``y(p) = W_scope . (B(p)^T U(p))``: the
scope-space columns V = B^T U followed by one GEMM with the scope weights (O*C*S^2), over chunks
of output locations. B has at most four non-zeros per tap, so V is a weighted sum of 4*K*K rows of
U per location, scattered onto S*S cells: one ``F.embedding_bag`` with a bag per (location, scope
cell), whose autograd also gives the gradients of U and of the bilinear weights. The autograd
function saves only the input, the weights, the non-zeros of B and the data offsets and recomputes
the columns chunk by chunk in backward, so memory beyond input-sized buffers stays bounded by the
chunk size in both passes (DCN + DK too). Global DK resamples one kernel per image and runs it as
an ordinary (grouped) convolution.

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
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import Function
from torch.autograd.function import once_differentiable

from .deform_conv import _bilinear_taps, _gather, _input_rows, deform_sample

IntPair = Union[int, Sequence[int]]

__all__ = [
    'kernel_base_grid', 'kernel_sampling_corners', 'kernel_sampling_weights', 'resample_kernel',
    'deformable_kernel_local', 'deformable_kernel_global', 'default_chunk_size',
]


def _pair(value: IntPair, name: str) -> Tuple[int, int]:
    if isinstance(value, int):
        return value, value
    pair = tuple(int(v) for v in value)
    if len(pair) != 2:
        raise ValueError(f'{name} must be an int or a pair of ints, got {value!r}')
    return pair


def kernel_base_grid(kernel_size: IntPair, scope: IntPair, *, dtype=torch.float32,
                     device=None) -> Tensor:
    """Rigid tap positions in scope coordinates, before any offset.

    Returns (Kh*Kw, 2) with (y, x) per tap n = i*Kw + j: the K taps of an axis spaced evenly over
    [0, S-1] (integers when S = K), a single tap at the centre (S-1)/2.
    """
    (kh, kw), (sh, sw) = _pair(kernel_size, 'kernel_size'), _pair(scope, 'scope')

    def axis(k: int, s: int) -> Tensor:
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


def kernel_sampling_corners(kernel_offset: Tensor, kernel_size: IntPair,
                            scope: IntPair) -> Tuple[Tensor, Tensor]:
    """The (at most) four scope cells each kernel tap interpolates, and their bilinear weights.

    Args:
        kernel_offset: (..., Kh*Kw, 2) offsets (dy, dx) in scope cells, per tap n = i*Kw + j.
        kernel_size: K or (Kh, Kw).
        scope: S or (Sh, Sw), each >= the kernel size.

    Returns:
        ``cells`` (..., Kh*Kw, 4) int64 row-major scope indices and ``weights`` (..., Kh*Kw, 4),
        summing to one per tap and differentiable in ``kernel_offset``. A cell may repeat (with
        zero weight) when the scope is one cell wide.
    """
    (kh, kw), (sh, sw) = _pair(kernel_size, 'kernel_size'), _pair(scope, 'scope')
    _check_scope((kh, kw), (sh, sw))
    if kernel_offset.shape[-2:] != (kh * kw, 2):
        raise ValueError(f'kernel_offset must have shape (..., {kh * kw}, 2) for a {kh}x{kw} '
                         f'kernel, got {tuple(kernel_offset.shape)}')
    pos = kernel_offset + kernel_base_grid((kh, kw), (sh, sw), dtype=kernel_offset.dtype,
                                           device=kernel_offset.device)
    y0, y1, wy0, wy1 = _interp_1d(pos[..., 0], sh)
    x0, x1, wx0, wx1 = _interp_1d(pos[..., 1], sw)
    cells = torch.stack((y0 * sw + x0, y0 * sw + x1, y1 * sw + x0, y1 * sw + x1), dim=-1)
    weights = torch.stack((wy0 * wx0, wy0 * wx1, wy1 * wx0, wy1 * wx1), dim=-1)
    return cells, weights


def kernel_sampling_weights(kernel_offset: Tensor, kernel_size: IntPair, scope: IntPair) -> Tensor:
    """Bilinear weights that place each kernel tap in the scope, as a dense matrix.

    Args and offsets as :func:`kernel_sampling_corners`.

    Returns:
        (..., Kh*Kw, Sh*Sw): row n holds the weights of tap n on the row-major scope grid
        (at most four non-zeros summing to one). The tap's kernel value is ``row . scope``.
    """
    cells, weights = kernel_sampling_corners(kernel_offset, kernel_size, scope)
    sh, sw = _pair(scope, 'scope')
    dense = weights.new_zeros(*weights.shape[:-1], sh * sw)
    return dense.scatter_add(-1, cells, weights)


def resample_kernel(weight: Tensor, kernel_offset: Tensor, kernel_size: IntPair) -> Tensor:
    """Sample a K x K kernel from the scope weights, one per offset set.

    Args:
        weight: (O, C/G, Sh, Sw) scope weights.
        kernel_offset: (N, 2*Kh*Kw) offsets, mmcv layout [y0, x0, y1, x1, ...].
        kernel_size: K or (Kh, Kw).

    Returns:
        (N, O, C/G, Kh, Kw) resampled kernels.
    """
    kh, kw = _pair(kernel_size, 'kernel_size')
    if kernel_offset.dim() != 2 or kernel_offset.shape[1] != 2 * kh * kw:
        raise ValueError(f'kernel_offset must have shape (N, {2 * kh * kw}) for a {kh}x{kw} '
                         f'kernel, got {tuple(kernel_offset.shape)}')
    n = kernel_offset.shape[0]
    sampling = kernel_sampling_weights(kernel_offset.view(n, kh * kw, 2), (kh, kw),
                                       weight.shape[-2:])  # (N, KK, SS)
    out_c, in_c = weight.shape[:2]
    # one skinny GEMM (O*C/G, SS) x (SS, N*KK); for N = 1 the result is already (O, C/G, K, K)
    kernel = torch.mm(weight.reshape(out_c * in_c, -1), sampling.reshape(n * kh * kw, -1).t())
    return kernel.view(out_c, in_c, n, kh, kw).permute(2, 0, 1, 3, 4)


class _Geometry:
    """Convolution geometry shared by the local/global ops (all pairs)."""

    def __init__(self, x: Tensor, weight: Tensor, kernel_size, stride, padding, dilation,
                 groups: int):
        self.kernel = _pair(kernel_size, 'kernel_size')
        self.stride = _pair(stride, 'stride')
        self.padding = _pair(padding, 'padding')
        self.dilation = _pair(dilation, 'dilation')
        if x.dim() != 4:
            raise ValueError(f'x must be (N, C, H, W), got shape {tuple(x.shape)}')
        if weight.dim() != 4:
            raise ValueError(f'weight must be (O, C/groups, Sh, Sw), got shape {tuple(weight.shape)}')
        self.n, self.in_c, h, w = x.shape
        self.out_c = weight.shape[0]
        self.scope = tuple(weight.shape[2:])
        _check_scope(self.kernel, self.scope)
        if groups < 1 or self.in_c % groups or self.out_c % groups:
            raise ValueError(f'in_channels ({self.in_c}) and out_channels ({self.out_c}) must be '
                             f'divisible by groups ({groups})')
        if weight.shape[1] * groups != self.in_c:
            raise ValueError(f'weight has {weight.shape[1]} input channels per group; x has '
                             f'{self.in_c} channels and groups={groups}, so expected '
                             f'{self.in_c // groups}')
        self.groups = groups
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (self.kernel, self.stride, self.padding,
                                                  self.dilation)
        self.out_h = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        self.out_w = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        if self.out_h < 1 or self.out_w < 1:
            raise ValueError(f'input {h}x{w} is too small for kernel {kh}x{kw}, dilation '
                             f'{self.dilation}, padding {self.padding}')
        self.taps = kh * kw

    def check_kernel_offset(self, kernel_offset: Tensor, local: bool) -> None:
        expected = (self.n, 2 * self.taps) + ((self.out_h, self.out_w) if local else ())
        if tuple(kernel_offset.shape) != expected:
            kind = 'local (N, 2*Kh*Kw, Ho, Wo)' if local else 'global (N, 2*Kh*Kw)'
            raise ValueError(f'{kind} kernel_offset must have shape {expected} for this input '
                             f'and a {self.kernel[0]}x{self.kernel[1]} kernel, got '
                             f'{tuple(kernel_offset.shape)}')

    def check_data_offset(self, data_offset: Tensor) -> None:
        shape = tuple(data_offset.shape)
        if (data_offset.dim() != 4 or shape[0] != self.n or shape[2:] != (self.out_h, self.out_w)
                or shape[1] % (2 * self.taps) or self.in_c % (shape[1] // (2 * self.taps) or 1)):
            raise ValueError(f'data_offset must have shape (N, 2*deform_groups*{self.taps}, '
                             f'{self.out_h}, {self.out_w}) with N={self.n} and deform_groups '
                             f'dividing {self.in_c}, got {shape}')


def _check_scope(kernel: Tuple[int, int], scope: Tuple[int, int]) -> None:
    if min(kernel) < 1:
        raise ValueError(f'kernel_size must be positive, got {kernel}')
    if scope[0] < kernel[0] or scope[1] < kernel[1]:
        raise ValueError(f'scope {scope[0]}x{scope[1]} is smaller than the kernel '
                         f'{kernel[0]}x{kernel[1]}; the scope must be at least the kernel size')


def default_chunk_size(in_channels: int, kernel_size: IntPair, scope: IntPair) -> int:
    """Output locations per chunk of local DK: about 4 M column values (16 MB in float32)."""
    (kh, kw), (sh, sw) = _pair(kernel_size, 'kernel_size'), _pair(scope, 'scope')
    return max(64, (1 << 22) // (in_channels * (kh * kw + sh * sw)))


def deformable_kernel_local(x: Tensor, weight: Tensor, kernel_offset: Tensor,
                            kernel_size: IntPair, stride: IntPair = 1, padding: IntPair = 0,
                            dilation: IntPair = 1, groups: int = 1, bias: Optional[Tensor] = None,
                            data_offset: Optional[Tensor] = None,
                            chunk_size: Optional[int] = None) -> Tensor:
    """Local deformable kernel convolution (one kernel offset set per output location).

    Args:
        x: (N, C, H, W) input.
        weight: (O, C/groups, Sh, Sw) scope weights, Sh >= Kh, Sw >= Kw.
        kernel_offset: (N, 2*Kh*Kw, Ho, Wo) kernel offsets in scope cells, [y0, x0, y1, x1, ...].
        kernel_size, stride, padding, dilation: int or pair, as for ``nn.Conv2d``.
        groups: conv groups (1, grouped, or depthwise = C).
        bias: optional (O,).
        data_offset: optional (N, 2*D*Kh*Kw, Ho, Wo) DCN data offsets (mmcv layout) for
            DCN + DK (DK paper Eq. 11); the rigid columns are then replaced by bilinear samples
            at the deformed positions (mmcv's convention, as ``deform_sample``), chunk by chunk.
        chunk_size: output locations processed at once (memory bound); default
            :func:`default_chunk_size`.

    Returns:
        (N, O, Ho, Wo).
    """
    geom = _Geometry(x, weight, kernel_size, stride, padding, dilation, groups)
    geom.check_kernel_offset(kernel_offset, local=True)
    n, taps = geom.n, geom.taps
    cells, corner_weights = kernel_sampling_corners(
        kernel_offset.view(n, taps, 2, geom.out_h * geom.out_w).permute(0, 3, 1, 2),
        geom.kernel, geom.scope)  # (N, L, KK, 4) each
    bags = _ScopeBags(cells, geom.scope[0] * geom.scope[1])
    if chunk_size is None:
        chunk_size = default_chunk_size(geom.in_c, geom.kernel, geom.scope)
    if data_offset is not None:
        geom.check_data_offset(data_offset)
    out = _LocalDK.apply(x, weight, bags.sort(corner_weights), data_offset, bags, geom, int(chunk_size))
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out


def deformable_kernel_global(x: Tensor, weight: Tensor, kernel_offset: Tensor,
                             kernel_size: IntPair, stride: IntPair = 1, padding: IntPair = 0,
                             dilation: IntPair = 1, groups: int = 1,
                             bias: Optional[Tensor] = None,
                             data_offset: Optional[Tensor] = None) -> Tensor:
    """Global deformable kernel convolution (one kernel offset set per image).

    Args:
        x: (N, C, H, W) input.
        weight: (O, C/groups, Sh, Sw) scope weights.
        kernel_offset: (N, 2*Kh*Kw) kernel offsets in scope cells, [y0, x0, y1, x1, ...].
        kernel_size, stride, padding, dilation, groups, bias: as for ``nn.Conv2d``.
        data_offset: optional (N, 2*D*Kh*Kw, Ho, Wo) DCN data offsets (DCN + DK); the
            deformable columns (N, C, Kh*Kw, Ho, Wo) of ``deform_sample`` are then built whole
            and multiplied by the per-image kernels.

    Returns:
        (N, O, Ho, Wo). Without data offsets: the per-image resampled kernels (N, O, C/G, Kh, Kw)
        run as one convolution with N*groups groups.
    """
    geom = _Geometry(x, weight, kernel_size, stride, padding, dilation, groups)
    geom.check_kernel_offset(kernel_offset, local=False)
    n, c, o, g = geom.n, geom.in_c, geom.out_c, groups
    kernel = resample_kernel(weight, kernel_offset, geom.kernel)  # (N, O, C/G, Kh, Kw)
    if data_offset is None:
        conv = dict(stride=geom.stride, padding=geom.padding, dilation=geom.dilation)
        if n == 1:
            return F.conv2d(x, kernel[0], bias, groups=g, **conv)
        out = F.conv2d(x.reshape(1, n * c, *x.shape[2:]), kernel.flatten(0, 1),
                       None if bias is None else bias.repeat(n), groups=n * g, **conv)
        return out.view(n, o, geom.out_h, geom.out_w)
    geom.check_data_offset(data_offset)
    columns = deform_sample(x, data_offset, geom.kernel, geom.stride, geom.padding,
                            geom.dilation)  # (N, C, KK, Ho, Wo)
    out = torch.matmul(kernel.reshape(n, g, o // g, -1),
                       columns.reshape(n, g, (c // g) * geom.taps, -1))  # (N, G, O/G, L)
    out = out.reshape(n, o, geom.out_h, geom.out_w)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out


class _ScopeBags:
    """The (tap, corner) pairs of every output location grouped by scope cell, for embedding_bag.

    Each location has KK*4 pairs (tap n, corner m) that put weight on scope cell ``cells[n, m]``.
    The scope-space columns V = B^T U (SS rows of C per location) are then one weighted
    ``F.embedding_bag`` over the tap rows of U, one bag per (location, scope cell); its autograd
    gives the gradients of U and of the pair weights. Pairs are sorted by cell within each
    location once per call; ``sort`` puts the (differentiable) weights in the same order.
    """

    def __init__(self, cells: Tensor, scope_cells: int):
        n, locations, taps, corners = cells.shape
        self.taps, self.pairs, self.scope_cells = taps, taps * corners, scope_cells
        sorted_cells, self.order = cells.reshape(n, locations, self.pairs).sort(dim=-1)
        location = torch.arange(locations, device=cells.device).view(1, -1, 1)
        self.tap_rows = self.order.div(corners, rounding_mode='floor') + location * taps  # (N, L, P)
        grid = torch.arange(scope_cells, device=cells.device).expand(n, locations, scope_cells)
        self.bag_starts = torch.searchsorted(sorted_cells, grid.contiguous()) + location * self.pairs

    def sort(self, corner_weights: Tensor) -> Tensor:
        """(N, L, KK, 4) weights -> (N, L, KK*4) in bag order (differentiable)."""
        n, locations = corner_weights.shape[:2]
        return corner_weights.reshape(n, locations, self.pairs).gather(-1, self.order)

    def scatter(self, u: Tensor, pair_weights: Tensor, b: int, l0: int, l1: int) -> Tensor:
        """V = B^T U for locations l0:l1 of image b: u (Lc, KK, C), pair_weights (Lc, P) -> (Lc, SS, C)."""
        lc, _, c = u.shape
        index = (self.tap_rows[b, l0:l1] - l0 * self.taps).reshape(-1)
        starts = (self.bag_starts[b, l0:l1] - l0 * self.pairs).reshape(-1)
        v = F.embedding_bag(index, u.reshape(-1, c), starts, mode='sum',
                            per_sample_weights=pair_weights.reshape(-1))
        return v.view(lc, self.scope_cells, c)


class _LocalDK(Function):
    """y(p) = W . (B(p)^T U(p)) over chunks of output rows, columns recomputed in backward.

    x: (N, C, H, W). weight: (O, C/G, Sh, Sw). pair_weights: the non-zeros of B in bag order
    (N, L, KK*4), see :class:`_ScopeBags`. data_offset: None (rigid columns) or
    (N, 2*D*KK, Ho, Wo) (deformable columns, DCN + DK). Columns U are (Lc, KK, C) (channels
    contiguous) and the scope-space columns V are (Lc, SS, C), matching the weight permuted to
    (O, SS, C/G).
    """

    @staticmethod
    def forward(ctx, x, weight, pair_weights, data_offset, bags, geom, chunk_size):
        ctx.save_for_backward(x, weight, pair_weights, data_offset)
        ctx.bags, ctx.geom, ctx.chunk_size = bags, geom, chunk_size
        n, o = geom.n, geom.out_c
        w2 = _scope_major(weight, geom.groups)
        out = x.new_empty(n, geom.out_h * geom.out_w, o)
        for b, l0, l1, u in _Columns(x, data_offset, geom, chunk_size):
            v = bags.scatter(u, pair_weights[b, l0:l1], b, l0, l1)
            _group_matmul(v, w2, out=out[b, l0:l1])
        return out.view(n, geom.out_h, geom.out_w, o).permute(0, 3, 1, 2).contiguous()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, weight, pair_weights, data_offset = ctx.saved_tensors
        geom, bags = ctx.geom, ctx.bags
        need_x, need_w, need_b, need_off = ctx.needs_input_grad[:4]
        need_u = need_x or need_off
        n, o, g = geom.n, geom.out_c, geom.groups
        go = grad_out.permute(0, 2, 3, 1).reshape(n, -1, o)  # (N, L, O)
        w2 = _scope_major(weight, g)
        grad_w2 = torch.zeros_like(w2) if need_w else None
        grad_b = torch.empty_like(pair_weights) if need_b else None
        cols = _Columns(x, data_offset, geom, ctx.chunk_size, want_grad=(need_x, need_off))
        for b, l0, l1, u in cols:
            goc, lc = go[b, l0:l1], l1 - l0
            u_leaf = u.detach().requires_grad_(need_u)
            b_leaf = pair_weights[b, l0:l1].detach().requires_grad_(need_b)
            with torch.set_grad_enabled(need_u or need_b):
                v = bags.scatter(u_leaf, b_leaf, b, l0, l1)  # (Lc, SS, C)
            if need_w:
                if g == 1:
                    grad_w2[0].addmm_(goc.t(), v.detach().view(lc, -1))
                else:
                    grad_w2.baddbmm_(goc.view(lc, g, -1).permute(1, 2, 0),
                                     _split_channel_groups(v.detach(), g))
            if need_u or need_b:
                if g == 1:
                    gv = torch.mm(goc, w2[0]).view_as(v)
                else:
                    gv = torch.bmm(goc.view(lc, g, -1).transpose(0, 1), w2)  # (G, Lc, SS*C/G)
                    gv = gv.view(g, lc, v.shape[1], -1).permute(1, 2, 0, 3).reshape(v.shape)
                leaves = [t for t, need in ((u_leaf, need_u), (b_leaf, need_b)) if need]
                grads = list(torch.autograd.grad(v, leaves, gv))
                if need_u:
                    cols.add_grad(b, l0, l1, grads.pop(0).view_as(u))
                if need_b:
                    grad_b[b, l0:l1] = grads.pop(0)
        grad_x, grad_off = cols.grads()
        grad_w = None
        if need_w:
            sh, sw = geom.scope
            grad_w = grad_w2.view(o, sh, sw, -1).permute(0, 3, 1, 2)
        return grad_x, grad_w, grad_b, grad_off, None, None, None


def _scope_major(weight: Tensor, groups: int) -> Tensor:
    """(O, C/G, Sh, Sw) -> (G, O/G, SS*C/G), matching V (Lc, SS, C) split into channel groups.

    A view for a channels-last weight (as ``DeformableKernel`` keeps it), a copy otherwise.
    """
    o = weight.shape[0]
    return weight.permute(0, 2, 3, 1).reshape(groups, o // groups, -1)


def _split_channel_groups(v: Tensor, groups: int) -> Tensor:
    """V (Lc, SS, C) -> (G, Lc, SS*C/G)."""
    lc, ss, c = v.shape
    return v.view(lc, ss, groups, c // groups).permute(2, 0, 1, 3).reshape(groups, lc, -1)


def _group_matmul(v: Tensor, w2: Tensor, out: Tensor) -> None:
    """out (Lc, O) = grouped product of V (Lc, SS, C) with w2 (G, O/G, SS*C/G)."""
    g = w2.shape[0]
    lc = v.shape[0]
    if g == 1:
        torch.mm(v.view(lc, -1), w2[0].t(), out=out)
    else:
        y = torch.bmm(_split_channel_groups(v, g), w2.transpose(1, 2))  # (G, Lc, O/G)
        out.view(lc, g, -1).copy_(y.transpose(0, 1))


class _Columns:
    """Iterate chunks of columns U (Lc, KK, C) per image and row block; send gradients back.

    Rigid columns: the image is padded once into channels-last (N, Hp, Wp, C); a chunk's columns
    are one strided window view of it, copied into a reused buffer, and their gradient is added
    back tap by tap. Deformable columns (DCN + DK): the fast DCN path's bilinear gather
    (:mod:`deform_viz.ops.deform_conv`, mmcv's sampling convention) on the chunk's rows only, its
    row origin moved by shifting the chunk's dy offsets; in backward the chunk is sampled under
    autograd and its gradient reaches the input and the data offsets through
    ``torch.autograd.grad``. Either way no more than one chunk of columns exists at a time.
    """

    def __init__(self, x: Tensor, data_offset: Optional[Tensor], geom: _Geometry,
                 chunk_size: int, want_grad=(False, False)):
        self.geom = geom
        self.rows = max(1, min(geom.out_h, chunk_size // geom.out_w))
        self.need_x, self.need_off = want_grad
        self.x, self.data_offset = x, data_offset
        self.grad_off = torch.zeros_like(data_offset) if self.need_off else None
        if data_offset is not None:
            n, c, h, w = x.shape
            self.deform_groups = data_offset.shape[1] // (2 * geom.taps)
            # the fast DCN path's row table, per image: ((H+2)*(W+2)*D, C/D)
            self.table = _input_rows(x, self.deform_groups).view(n, -1, c // self.deform_groups)
            self.grad_table = torch.zeros_like(self.table) if self.need_x else None
            self._graph = None
            return
        (ph, pw) = geom.padding
        n, c, h, w = x.shape
        self.buffer = x.new_empty(self.rows * geom.out_w, geom.taps, c)
        self.padded = x.new_zeros(n, h + 2 * ph, w + 2 * pw, c)
        self.padded[:, ph:ph + h, pw:pw + w].copy_(x.permute(0, 2, 3, 1))
        self.grad_padded = torch.zeros_like(self.padded) if self.need_x else None

    def __iter__(self):
        geom = self.geom
        for b in range(geom.n):
            for r0 in range(0, geom.out_h, self.rows):
                r1 = min(r0 + self.rows, geom.out_h)
                l0, l1 = r0 * geom.out_w, r1 * geom.out_w
                if self.data_offset is not None:
                    u = self._deformable(b, r0, r1)
                else:
                    u = self._rigid(b, r0, r1)
                yield b, l0, l1, u

    def _rigid(self, b: int, r0: int, r1: int) -> Tensor:
        geom = self.geom
        (kh, kw), (sh, sw), (dh, dw) = geom.kernel, geom.stride, geom.dilation
        image = self.padded[b]  # all taps in one strided view: (rows, Wo, Kh, Kw, C)
        row, pix = image.stride(0), image.stride(1)
        windows = image.as_strided((r1 - r0, geom.out_w, kh, kw, geom.in_c),
                                   (sh * row, sw * pix, dh * row, dw * pix, 1),
                                   image.storage_offset() + r0 * sh * row)
        u = self.buffer[:(r1 - r0) * geom.out_w]
        u.view(windows.shape).copy_(windows)
        return u

    def _deformable(self, b: int, r0: int, r1: int) -> Tensor:
        # deform_sample's own steps (bilinear corner taps + one embedding_bag gather) on the
        # chunk's rows; deform_sample itself insists on offsets for the whole output map
        geom = self.geom
        offset = self.data_offset[b:b + 1, :, r0:r1].clone()
        offset[:, 0::2] += r0 * geom.stride[0]  # chunk row 0 is output row r0
        table = self.table[b]
        track = self.need_x or self.need_off
        with torch.set_grad_enabled(track):
            if track:
                table = table.detach().requires_grad_(self.need_x)
                offset.requires_grad_(self.need_off)
            index, weights = _bilinear_taps(offset, None, self.x.shape[2:], geom.kernel,
                                            geom.stride, geom.padding, geom.dilation)
            cols = _gather(index, table, weights)  # (Lc*KK*D, C/D), ordered (l, tap, group)
        self._graph = (cols, table, offset) if track else None
        return cols.detach().view(-1, geom.taps, geom.in_c)

    def add_grad(self, b: int, l0: int, l1: int, grad_u: Tensor) -> None:
        """Send d loss / d columns (Lc, KK, C) of the current chunk to x and the data offsets."""
        geom = self.geom
        r0, r1 = l0 // geom.out_w, l1 // geom.out_w
        g4 = grad_u.view(r1 - r0, geom.out_w, geom.taps, geom.in_c)
        if self.data_offset is None:
            (kh, kw), (sh, sw), (dh, dw) = geom.kernel, geom.stride, geom.dilation
            for i in range(kh):
                rows = slice(r0 * sh + i * dh, (r1 - 1) * sh + i * dh + 1, sh)
                for j in range(kw):
                    cols = slice(j * dw, j * dw + (geom.out_w - 1) * sw + 1, sw)
                    self.grad_padded[b, rows, cols] += g4[:, :, i * kw + j]
            return
        cols, table, offset = self._graph
        inputs = [t for t, need in ((table, self.need_x), (offset, self.need_off)) if need]
        grads = list(torch.autograd.grad(cols, inputs, g4.reshape(cols.shape)))
        if self.need_x:
            self.grad_table[b] += grads.pop(0)
        if self.need_off:
            self.grad_off[b:b + 1, :, r0:r1] = grads.pop(0)

    def grads(self) -> Tuple[Optional[Tensor], Optional[Tensor]]:
        """(d loss / d x, d loss / d data_offset), None where not wanted."""
        if not self.need_x:
            return None, self.grad_off
        h, w = self.x.shape[2:]
        if self.data_offset is not None:
            grad = self.grad_table.view(-1, h + 2, w + 2, self.x.shape[1])[:, 1:h + 1, 1:w + 1]
        else:
            (ph, pw) = self.geom.padding
            grad = self.grad_padded[:, ph:ph + h, pw:pw + w]
        return grad.permute(0, 3, 1, 2).contiguous(), self.grad_off
