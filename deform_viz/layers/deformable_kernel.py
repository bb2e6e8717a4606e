"""``DeformableKernel`` (alias ``DK``): a conv layer whose kernel is resampled from a larger scope.

Built by ``mmcv.cnn.build_conv_layer`` like mmcv's ``DeformConv2dPack``, so any mmdet backbone that
accepts ``dcn=`` can use it::

    backbone=dict(type='ResNet', depth=50,
                  dcn=dict(type='DeformableKernel', mode='local', scope=4),
                  stage_with_dcn=(False, True, True, True))

The math lives in :mod:`deform_viz.ops.deformable_kernel`.
"""
import math
from typing import Optional, Tuple

import torch
from mmengine.logging import print_log
from mmengine.registry import MODELS
from torch import Tensor, nn

from ..ops.deformable_kernel import deformable_kernel_global, deformable_kernel_local
from ..ops.kernel_sampling import GRIDS, check_scope, scope_from_kernel
from ..ops.utils import to_pair
from ..variants import dkernel_variant

MODES = ('local', 'global')


@MODELS.register_module(name=['DeformableKernel', 'DK'])
class DeformableKernel(nn.Module):
    """Deformable Kernels (Gao et al., ICLR 2020), local or global, optionally with DCN data offsets.

    The K x K taps sample an S x S scope of weights at ``base + kernel offset`` (scope cells,
    clipped to the scope, bilinear); the data grid stays rigid unless ``deform_data=True``, which
    adds DCN data offsets (DK paper Eq. 11). With zero offsets and S = K the layer is exactly
    ``nn.Conv2d`` with the same weights; with S > K its taps are bilinear samples of the scope at
    the rigid grid (``grid``).

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias:
            as ``nn.Conv2d`` (groups=1, grouped and depthwise all supported).
        deform_groups: groups of input channels sharing one set of data offsets; only meaningful
            with ``deform_data=True`` (kernel offsets are shared by all channels).
        mode: ``'local'`` (a K x K conv ``conv_offset`` at the layer's stride, padding and dilation
            predicts 2*K*K kernel offsets per output location) or ``'global'`` (global average
            pooling + ``nn.Linear`` ``conv_offset``: one offset set per image).
        scope: S or (Sh, Sw) >= kernel size; ``None`` means the kernel size (rigid scope). The DK
            paper's default for 3x3 kernels is 4.
        deform_data: also learn DCN data offsets (``conv_data_offset``, mmcv DCN layout
            2*deform_groups*K*K channels).
        chunk_size: output locations per chunk of the local op (bounds memory); ``None`` picks
            about 16 MB of columns per chunk on CPU and one chunk per image where it fits on a
            GPU (:func:`deform_viz.ops.deformable_kernel.cuda_chunk_size`).
        grid: the rigid tap grid in the scope: ``'centred'`` (default; the official DK code's
            unit-spaced taps centred in the scope, S = 4, K = 3: 0.5, 1.5, 2.5) or ``'spread'``
            (taps spread evenly over the scope: 0, 1.5, 3); see
            :mod:`deform_viz.ops.kernel_sampling`.

    The op is pure PyTorch on every device (mmcv has no deformable-kernel op) and runs under
    autocast.

    Loading a state dict whose ``weight`` is a K x K kernel of the same channels (an ImageNet
    ResNet checkpoint, say) maps it into the scope with :func:`deform_viz.ops.scope_from_kernel`
    for the layer's grid, so the layer starts as exactly that conv.

    Attributes read by the offset dump hook: ``kernel_size``, ``stride``, ``padding``,
    ``dilation`` (pairs), ``groups``, ``deform_groups``, ``mode``, ``scope`` (pair), ``grid``,
    ``deform_data`` and ``variant`` (the key of :mod:`deform_viz.variants`, e.g.
    ``'dkernel-local-s4'``, ``'dcn-dkernel-global-s4'``). Kernel offsets are in scope cells,
    data offsets in input pixels.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, deform_groups: int = 1, bias: bool = False,
                 mode: str = 'local', scope=None, deform_data: bool = False,
                 chunk_size: Optional[int] = None, grid: str = 'centred'):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"DeformableKernel mode must be one of {MODES}, got {mode!r}")
        if grid not in GRIDS:
            raise ValueError(f'DeformableKernel grid must be one of {GRIDS}, got {grid!r}')
        self.kernel_size = to_pair(kernel_size, 'kernel_size')
        self.scope = self.kernel_size if scope is None else to_pair(scope, 'scope')
        check_scope(self.kernel_size, self.scope)
        if groups < 1 or in_channels % groups or out_channels % groups:
            raise ValueError(f'in_channels ({in_channels}) and out_channels ({out_channels}) must '
                             f'be divisible by groups ({groups})')
        if deform_data:
            if deform_groups < 1 or in_channels % deform_groups:
                raise ValueError(f'in_channels ({in_channels}) must be divisible by deform_groups '
                                 f'({deform_groups})')
        elif deform_groups != 1:
            raise ValueError(f'deform_groups={deform_groups} needs deform_data=True: it groups '
                             f'channels for data offsets, kernel offsets are shared by all channels')
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f'chunk_size must be a positive number of locations, got {chunk_size}')
        self.in_channels, self.out_channels = in_channels, out_channels
        self.stride = to_pair(stride, 'stride')
        self.padding = to_pair(padding, 'padding')
        self.dilation = to_pair(dilation, 'dilation')
        self.groups, self.deform_groups = groups, deform_groups
        self.mode, self.deform_data, self.grid = mode, deform_data, grid
        self.chunk_size = chunk_size
        self.variant = dkernel_variant(mode, self.scope, deform_data)

        weight = torch.empty(out_channels, in_channels // groups, *self.scope)
        if mode == 'local':  # (O, S, S, C/G) in memory: the layout of the local op's GEMM, no copies
            weight = weight.contiguous(memory_format=torch.channels_last)
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        taps = self.kernel_size[0] * self.kernel_size[1]
        conv = dict(kernel_size=self.kernel_size, stride=self.stride, padding=self.padding,
                    dilation=self.dilation, bias=True)
        self.conv_offset = (nn.Conv2d(in_channels, 2 * taps, **conv) if mode == 'local' else
                            nn.Linear(in_channels, 2 * taps))
        self.conv_data_offset = (nn.Conv2d(in_channels, 2 * deform_groups * taps, **conv)
                                 if deform_data else None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Scope weights like ``nn.Conv2d`` with an S x S kernel; offset predictors zero."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.weight[0].numel())
            nn.init.uniform_(self.bias, -bound, bound)
        self.init_weights()

    def init_weights(self) -> None:
        """Zero the offset predictors (mmdet's ResNet Kaiming-inits every nn.Conv2d first)."""
        for predictor in (self.conv_offset, self.conv_data_offset):
            if predictor is not None:
                nn.init.zeros_(predictor.weight)
                nn.init.zeros_(predictor.bias)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + 'weight'
        weight = state_dict.get(key)
        if (weight is not None and self.scope != self.kernel_size and weight.dim() == 4
                and weight.shape[:2] == self.weight.shape[:2]
                and tuple(weight.shape[2:]) == self.kernel_size):
            state_dict[key] = scope_from_kernel(weight, self.scope, self.grid)
            print_log(f'{prefix}weight: mapped the {weight.shape[2]}x{weight.shape[3]} kernel into the '
                      f'{self.scope[0]}x{self.scope[1]} scope', logger='current')
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def predict_offsets(self, x: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """Kernel offsets ((N, 2*K*K, Ho, Wo) local, (N, 2*K*K) global; scope cells) and data
        offsets ((N, 2*deform_groups*K*K, Ho, Wo) input pixels, or None)."""
        if self.mode == 'local':
            kernel_offset = self.conv_offset(x)
        else:
            kernel_offset = self.conv_offset(x.mean(dim=(2, 3)))
        data_offset = self.conv_data_offset(x) if self.deform_data else None
        return kernel_offset, data_offset

    def forward(self, x: Tensor) -> Tensor:
        """x (N, in_channels, H, W) -> (N, out_channels, Ho, Wo)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f'{type(self).__name__} expects (N, {self.in_channels}, H, W) input, '
                             f'got {tuple(x.shape)}')
        kernel_offset, data_offset = self.predict_offsets(x)
        conv = dict(kernel_size=self.kernel_size, stride=self.stride, padding=self.padding,
                    dilation=self.dilation, groups=self.groups, bias=self.bias,
                    data_offset=data_offset, grid=self.grid)
        if self.mode == 'local':
            return deformable_kernel_local(x, self.weight, kernel_offset, chunk_size=self.chunk_size,
                                           **conv)
        return deformable_kernel_global(x, self.weight, kernel_offset, **conv)

    def extra_repr(self) -> str:
        s = (f'{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, '
             f'stride={self.stride}, padding={self.padding}, dilation={self.dilation}, '
             f'mode={self.mode!r}, scope={self.scope}, grid={self.grid!r}')
        if self.groups != 1:
            s += f', groups={self.groups}'
        if self.deform_data:
            s += f', deform_data=True, deform_groups={self.deform_groups}'
        if self.bias is None:
            s += ', bias=False'
        return s

