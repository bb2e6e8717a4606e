"""Autograd internals of local Deformable Kernels; not public API (see :mod:`.deformable_kernel`).

``LocalDK`` computes ``y(p) = W_scope . (B(p)^T U(p))`` over chunks of output rows: U(p) are
the K*K input columns at location p, B(p) the (K*K, S*S) bilinear weights of the kernel taps in
the scope. Because B has four non-zeros per tap, V = B^T U is one ``F.embedding_bag`` over the
rows of U (:class:`ScopeBags`), followed by one GEMM with the scope weights. Columns come from
:class:`RigidColumns` (plain DK) or :class:`DeformableColumns` (DCN + DK) and are recomputed
chunk by chunk in backward, so memory beyond input-sized buffers stays bounded by the chunk size.

``geom`` below is the validated geometry of :class:`deform_viz.ops.deformable_kernel.DKGeometry`
(pairs ``kernel``, ``stride``, ``padding``, ``dilation``, ``scope``; ints ``n``, ``in_c``,
``out_c``, ``groups``, ``taps``, ``out_h``, ``out_w``).
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import Function
from torch.autograd.function import once_differentiable

from ._sampling import bilinear_taps, gather_rows, input_rows


class ScopeBags:
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
        """V = B^T U for locations l0:l1 of image b: u (Lc, KK, C), pair_weights (Lc, P) -> (Lc, SS, C).

        The pair weights are cast to U's dtype, so their gradient comes back in their own.
        """
        lc, _, c = u.shape
        index = (self.tap_rows[b, l0:l1] - l0 * self.taps).reshape(-1)
        starts = (self.bag_starts[b, l0:l1] - l0 * self.pairs).reshape(-1)
        v = F.embedding_bag(index, u.reshape(-1, c), starts, mode='sum',
                            per_sample_weights=pair_weights.reshape(-1).to(u.dtype))
        return v.view(lc, self.scope_cells, c)


class LocalDK(Function):
    """x (N, C, H, W) and weight (O, C/G, Sh, Sw) in one dtype; pair_weights, the non-zeros of B
    in bag order (N, L, KK*4), and data_offset, None (rigid columns) or (N, 2*D*KK, Ho, Wo)
    (DCN + DK), in the sampling dtype -> (N, O, Ho, Wo).

    Columns U are (Lc, KK, C) (channels contiguous) and the scope-space columns V are
    (Lc, SS, C), matching the weight permuted to (O, SS, C/G).
    """

    @staticmethod
    def forward(ctx, x, weight, pair_weights, data_offset, bags, geom, chunk_size):
        ctx.save_for_backward(x, weight, pair_weights, data_offset)
        ctx.bags, ctx.geom, ctx.chunk_size = bags, geom, chunk_size
        n, o = geom.n, geom.out_c
        w2 = _scope_major(weight, geom.groups)
        out = x.new_empty(n, geom.out_h * geom.out_w, o)
        for b, l0, l1, u in columns(x, data_offset, geom, chunk_size):
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
        go = grad_out.permute(0, 2, 3, 1).reshape(n, geom.out_h * geom.out_w, o)  # (N, L, O)
        w2 = _scope_major(weight, g)
        grad_w2 = torch.zeros_like(w2) if need_w else None
        grad_b = torch.empty_like(pair_weights) if need_b else None
        cols = columns(x, data_offset, geom, ctx.chunk_size, need_x, need_off)
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


def columns(x: Tensor, data_offset: Optional[Tensor], geom, chunk_size: int, need_x: bool = False,
            need_offset: bool = False):
    """The column chunks of x: rigid without data offsets, deformable (DCN + DK) with them."""
    if data_offset is None:
        return RigidColumns(x, geom, chunk_size, need_x)
    return DeformableColumns(x, data_offset, geom, chunk_size, need_x, need_offset)


class _Columns:
    """Iterate chunks of columns U (Lc, KK, C), one image and block of output rows at a time,
    and send their gradients back (``add_grad``, then ``grads``)."""

    def __init__(self, geom, chunk_size: int):
        self.geom = geom
        self.rows = max(1, min(geom.out_h, chunk_size // geom.out_w))

    def __iter__(self):
        geom = self.geom
        for b in range(geom.n):
            for r0 in range(0, geom.out_h, self.rows):
                r1 = min(r0 + self.rows, geom.out_h)
                yield b, r0 * geom.out_w, r1 * geom.out_w, self.chunk(b, r0, r1)


class RigidColumns(_Columns):
    """The image padded once into channels-last (N, Hp, Wp, C); a chunk's columns are one strided
    window view of it, copied into a reused buffer; their gradient is added back tap by tap."""

    def __init__(self, x: Tensor, geom, chunk_size: int, need_x: bool = False):
        super().__init__(geom, chunk_size)
        (ph, pw) = geom.padding
        n, c, h, w = x.shape
        self.buffer = x.new_empty(self.rows * geom.out_w, geom.taps, c)
        self.padded = x.new_zeros(n, h + 2 * ph, w + 2 * pw, c)
        self.padded[:, ph:ph + h, pw:pw + w].copy_(x.permute(0, 2, 3, 1))
        self.grad_padded = torch.zeros_like(self.padded) if need_x else None
        self.in_size = (h, w)

    def chunk(self, b: int, r0: int, r1: int) -> Tensor:
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

    def add_grad(self, b: int, l0: int, l1: int, grad_u: Tensor) -> None:
        """Add d loss / d columns (Lc, KK, C) of the chunk at locations l0:l1 of image b."""
        geom = self.geom
        r0, r1 = l0 // geom.out_w, l1 // geom.out_w
        g4 = grad_u.view(r1 - r0, geom.out_w, geom.taps, geom.in_c)
        (kh, kw), (sh, sw), (dh, dw) = geom.kernel, geom.stride, geom.dilation
        for i in range(kh):
            rows = slice(r0 * sh + i * dh, (r1 - 1) * sh + i * dh + 1, sh)
            for j in range(kw):
                cols = slice(j * dw, j * dw + (geom.out_w - 1) * sw + 1, sw)
                self.grad_padded[b, rows, cols] += g4[:, :, i * kw + j]

    def grads(self) -> Tuple[Optional[Tensor], None]:
        """(d loss / d x or None, None): rigid columns have no data offsets."""
        if self.grad_padded is None:
            return None, None
        (h, w), (ph, pw) = self.in_size, self.geom.padding
        return self.grad_padded[:, ph:ph + h, pw:pw + w].permute(0, 3, 1, 2).contiguous(), None


class DeformableColumns(_Columns):
    """DCN + DK: the fast DCN path's bilinear gather (mmcv's sampling convention) on the chunk's
    rows only, its row origin moved by shifting the chunk's dy offsets. In backward the chunk is
    sampled under autograd and its gradient reaches the input and the data offsets through
    ``torch.autograd.grad``."""

    def __init__(self, x: Tensor, data_offset: Tensor, geom, chunk_size: int, need_x: bool = False,
                 need_offset: bool = False):
        super().__init__(geom, chunk_size)
        n, c, h, w = x.shape
        self.in_size, self.data_offset = (h, w), data_offset
        self.need_x, self.need_offset = need_x, need_offset
        self.deform_groups = data_offset.shape[1] // (2 * geom.taps)
        # the row table per image: ((H+2)*(W+2)*D, C/D)
        self.table = input_rows(x, self.deform_groups).view(
            n, (h + 2) * (w + 2) * self.deform_groups, c // self.deform_groups)
        self.grad_table = torch.zeros_like(self.table) if need_x else None
        self.grad_offset = torch.zeros_like(data_offset) if need_offset else None
        self._graph = None

    def chunk(self, b: int, r0: int, r1: int) -> Tensor:
        geom = self.geom
        offset = self.data_offset[b:b + 1, :, r0:r1].clone()
        offset[:, 0::2] += r0 * geom.stride[0]  # chunk row 0 is output row r0
        table = self.table[b]
        track = self.need_x or self.need_offset
        with torch.set_grad_enabled(track):
            if track:
                table = table.detach().requires_grad_(self.need_x)
                offset.requires_grad_(self.need_offset)
            index, weights = bilinear_taps(offset, None, self.in_size, geom.kernel, geom.stride,
                                           geom.padding, geom.dilation)
            cols = gather_rows(index, table, weights)  # (Lc*KK*D, C/D), ordered (l, tap, group)
        self._graph = (cols, table, offset) if track else None
        return cols.detach().view(-1, geom.taps, geom.in_c)

    def add_grad(self, b: int, l0: int, l1: int, grad_u: Tensor) -> None:
        """Send d loss / d columns (Lc, KK, C) of the current chunk to x and the data offsets."""
        r0, r1 = l0 // self.geom.out_w, l1 // self.geom.out_w
        cols, table, offset = self._graph
        inputs = [t for t, need in ((table, self.need_x), (offset, self.need_offset)) if need]
        grads = list(torch.autograd.grad(cols, inputs, grad_u.reshape(cols.shape)))
        if self.need_x:
            self.grad_table[b] += grads.pop(0)
        if self.need_offset:
            self.grad_offset[b:b + 1, :, r0:r1] = grads.pop(0)

    def grads(self) -> Tuple[Optional[Tensor], Optional[Tensor]]:
        """(d loss / d x, d loss / d data_offset), None where not wanted."""
        if self.grad_table is None:
            return None, self.grad_offset
        (h, w), c = self.in_size, self.table.shape[-1] * self.deform_groups
        grad = self.grad_table.view(self.table.shape[0], h + 2, w + 2, c)[:, 1:h + 1, 1:w + 1]
        return grad.permute(0, 3, 1, 2).contiguous(), self.grad_offset
