"""Deformable Kernels (Gao et al., ICLR 2020) convolutions: the kernel is resampled, the data grid
stays rigid (or moves by DCN data offsets, DK paper Eq. 11).

Where the taps sit in the scope is :mod:`deform_viz.ops.kernel_sampling` (the rigid ``grid``,
clipping, bilinear weights and their gradients); the local op's autograd function is in
:mod:`deform_viz.ops._dk_autograd`.

Shapes (G = conv groups, C = input channels, O = output channels, L = Ho*Wo):

* ``weight``         (O, C/G, Sh, Sw)   the scope weights.
* local offsets      (N, 2*Kh*Kw, Ho, Wo), one offset set per output location.
* global offsets     (N, 2*Kh*Kw), one offset set per image.
* Offset channels follow mmcv's data offsets: ``[y0, x0, y1, x1, ...]``, tap n = i*Kw + j.
* ``data_offset``    (N, 2*D*Kh*Kw, Ho, Wo) mmcv DCN layout, D deform groups (DCN + DK).

Local DK never builds a kernel per output location. With U(p) the K*K input columns at location p
(C*K*K values) and B(p) the (K*K, S*S) bilinear weights, ``y(p) = W_scope . (B(p)^T U(p))``: the
scope-space columns V = B^T U (one weighted ``F.embedding_bag``, B having four non-zeros per tap)
followed by one GEMM with the scope weights, over chunks of output rows, recomputed in backward.
Global DK resamples one kernel per image and runs it as an ordinary (grouped) convolution.

Precision (see :mod:`deform_viz.ops.utils`): under autocast the input, scope weights, columns and
output are in autocast's dtype; tap positions and bilinear weights (kernel and data) in float32.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ._dk_autograd import LocalDK, ScopeBags
from .deform_conv import deform_sample
from .kernel_sampling import check_scope, kernel_sampling_corners, resample_kernel
from .utils import Pair, conv_output_size, geometry_tensor, to_pair, value_tensors

__all__ = ['deformable_kernel_local', 'deformable_kernel_global', 'default_chunk_size', 'cuda_chunk_size']


class DKGeometry:
    """The convolution geometry of one DK call, validated (all sizes as pairs)."""

    def __init__(self, x: Tensor, weight: Tensor, kernel_size: Pair, stride: Pair, padding: Pair,
                 dilation: Pair, groups: int):
        self.kernel = to_pair(kernel_size, 'kernel_size')
        self.stride = to_pair(stride, 'stride')
        self.padding = to_pair(padding, 'padding')
        self.dilation = to_pair(dilation, 'dilation')
        if x.dim() != 4:
            raise ValueError(f'x must be (N, C, H, W), got shape {tuple(x.shape)}')
        if weight.dim() != 4:
            raise ValueError(f'weight must be (O, C/groups, Sh, Sw), got shape {tuple(weight.shape)}')
        self.n, self.in_c, h, w = x.shape
        self.out_c = weight.shape[0]
        self.scope = tuple(weight.shape[2:])
        check_scope(self.kernel, self.scope)
        if groups < 1 or self.in_c % groups or self.out_c % groups:
            raise ValueError(f'in_channels ({self.in_c}) and out_channels ({self.out_c}) must be '
                             f'divisible by groups ({groups})')
        if weight.shape[1] * groups != self.in_c:
            raise ValueError(f'weight has {weight.shape[1]} input channels per group; x has '
                             f'{self.in_c} channels and groups={groups}, so expected '
                             f'{self.in_c // groups}')
        self.groups = groups
        self.out_h, self.out_w = conv_output_size((h, w), self.kernel, self.stride, self.padding,
                                                  self.dilation)
        if self.out_h < 1 or self.out_w < 1:
            raise ValueError(f'input {h}x{w} is too small for kernel {self.kernel[0]}x'
                             f'{self.kernel[1]}, dilation {self.dilation}, padding {self.padding}')
        self.taps = self.kernel[0] * self.kernel[1]

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


def default_chunk_size(in_channels: int, kernel_size: Pair, scope: Pair) -> int:
    """Output locations per chunk of local DK on CPU: about 4 M column values (16 MB in float32)."""
    (kh, kw), (sh, sw) = to_pair(kernel_size, 'kernel_size'), to_pair(scope, 'scope')
    return max(64, (1 << 22) // (in_channels * (kh * kw + sh * sw)))


#: Share of a GPU's memory that one chunk of local DK may take (columns, scope-space columns,
#: their gradients and the chunk's sampling geometry).
CUDA_CHUNK_MEMORY_SHARE = 1 / 32


def cuda_chunk_size(in_channels: int, kernel_size: Pair, scope: Pair, locations: int, element_size: int,
                    deform_groups: int = 0, total_memory: int = 0) -> int:
    """Output locations per chunk of local DK on a GPU: one chunk per image where it fits in
    :data:`CUDA_CHUNK_MEMORY_SHARE` of the device's memory.

    Every chunk costs several kernel launches (CPU-sized chunks made a c3 layer at 800x1333 about
    120 chunks an image), so on a GPU chunks only bound memory. ``locations``: Ho*Wo of one
    image; ``deform_groups``: D of DCN + DK's data offsets, 0 without them; ``total_memory``:
    the device's, in bytes.
    """
    (kh, kw), (sh, sw) = to_pair(kernel_size, 'kernel_size'), to_pair(scope, 'scope')
    taps = kh * kw
    # U and V, kept and rebuilt in backward with their gradients; DCN + DK adds the (M, 4) int64
    # index, float32 weights and the float32 positions behind them, with their autograd graph
    per_location = 4 * in_channels * (taps + sh * sw) * element_size + deform_groups * taps * 256
    budget = int(total_memory * CUDA_CHUNK_MEMORY_SHARE)
    return max(1, min(locations, budget // per_location))


def deformable_kernel_local(x: Tensor, weight: Tensor, kernel_offset: Tensor,
                            kernel_size: Pair, stride: Pair = 1, padding: Pair = 0,
                            dilation: Pair = 1, groups: int = 1, bias: Optional[Tensor] = None,
                            data_offset: Optional[Tensor] = None,
                            chunk_size: Optional[int] = None, grid: str = 'centred') -> Tensor:
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
            :func:`default_chunk_size` on CPU, :func:`cuda_chunk_size` (one chunk per image
            where it fits) on a GPU.
        grid: the rigid tap grid in the scope, ``'centred'`` (official DK) or ``'spread'``
            (:mod:`deform_viz.ops.kernel_sampling`).

    Returns:
        (N, O, Ho, Wo) in x's dtype (autocast's under autocast).
    """
    geom = DKGeometry(x, weight, kernel_size, stride, padding, dilation, groups)
    geom.check_kernel_offset(kernel_offset, local=True)
    if data_offset is not None:
        geom.check_data_offset(data_offset)
    x, weight, bias = value_tensors(x, weight=weight, bias=bias)
    n, taps = geom.n, geom.taps
    cells, corner_weights = kernel_sampling_corners(
        kernel_offset.reshape(n, taps, 2, geom.out_h * geom.out_w).permute(0, 3, 1, 2),
        geom.kernel, geom.scope, grid)  # (N, L, KK, 4) each
    bags = ScopeBags(cells, geom.scope[0] * geom.scope[1])
    if chunk_size is None and x.is_cuda:
        deform_groups = 0 if data_offset is None else data_offset.shape[1] // (2 * taps)
        chunk_size = cuda_chunk_size(geom.in_c, geom.kernel, geom.scope, geom.out_h * geom.out_w,
                                     x.element_size(), deform_groups,
                                     torch.cuda.get_device_properties(x.device).total_memory)
    elif chunk_size is None:
        chunk_size = default_chunk_size(geom.in_c, geom.kernel, geom.scope)
    out = LocalDK.apply(x, weight, bags.sort(corner_weights), geometry_tensor(data_offset), bags,
                        geom, int(chunk_size))
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out


def deformable_kernel_global(x: Tensor, weight: Tensor, kernel_offset: Tensor,
                             kernel_size: Pair, stride: Pair = 1, padding: Pair = 0,
                             dilation: Pair = 1, groups: int = 1,
                             bias: Optional[Tensor] = None,
                             data_offset: Optional[Tensor] = None, grid: str = 'centred') -> Tensor:
    """Global deformable kernel convolution (one kernel offset set per image).

    Args:
        x: (N, C, H, W) input.
        weight: (O, C/groups, Sh, Sw) scope weights.
        kernel_offset: (N, 2*Kh*Kw) kernel offsets in scope cells, [y0, x0, y1, x1, ...].
        kernel_size, stride, padding, dilation, groups, bias: as for ``nn.Conv2d``.
        data_offset: optional (N, 2*D*Kh*Kw, Ho, Wo) DCN data offsets (DCN + DK); the
            deformable columns (N, C, Kh*Kw, Ho, Wo) of ``deform_sample`` are then built whole
            and multiplied by the per-image kernels.
        grid: the rigid tap grid in the scope, ``'centred'`` or ``'spread'``.

    Returns:
        (N, O, Ho, Wo) in x's dtype (autocast's under autocast). Without data offsets: the
        per-image resampled kernels (N, O, C/G, Kh, Kw) run as one convolution with N*groups
        groups.
    """
    geom = DKGeometry(x, weight, kernel_size, stride, padding, dilation, groups)
    geom.check_kernel_offset(kernel_offset, local=False)
    if data_offset is not None:
        geom.check_data_offset(data_offset)
    x, weight, bias = value_tensors(x, weight=weight, bias=bias)
    n, c, o, g = geom.n, geom.in_c, geom.out_c, groups
    kernel = resample_kernel(weight, kernel_offset, geom.kernel, grid)  # (N, O, C/G, Kh, Kw)
    if data_offset is None:
        conv = dict(stride=geom.stride, padding=geom.padding, dilation=geom.dilation)
        if n == 0:  # no conv has zero groups; any one kernel gives the empty output
            kernel = resample_kernel(weight, kernel_offset.new_zeros(1, 2 * geom.taps), geom.kernel,
                                     grid)
        if kernel.shape[0] == 1:
            return F.conv2d(x, kernel[0], bias, groups=g, **conv)
        out = F.conv2d(x.reshape(1, n * c, *x.shape[2:]), kernel.flatten(0, 1),
                       None if bias is None else bias.repeat(n), groups=n * g, **conv)
        return out.view(n, o, geom.out_h, geom.out_w)
    columns = deform_sample(x, data_offset, geom.kernel, geom.stride, geom.padding,
                            geom.dilation)  # (N, C, KK, Ho, Wo)
    per_group = (c // g) * geom.taps
    out = torch.matmul(kernel.reshape(n, g, o // g, per_group),
                       columns.reshape(n, g, per_group, geom.out_h * geom.out_w))  # (N, G, O/G, L)
    out = out.reshape(n, o, geom.out_h, geom.out_w)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out
