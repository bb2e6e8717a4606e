"""Deformable conv whose predicted offsets can be reduced to d_f or d_k before sampling.

``DecomposedDCN`` is a drop-in for mmcv's ``DCN`` (``DeformConv2dPack``) and, with
``modulated=True``, ``DCNv2`` (``ModulatedDeformConv2dPack``): same constructor, same
``conv_offset`` predictor, same state dict. Before sampling, the offsets are projected with
:func:`deform_viz.ops.offset_fields.project_offsets`:

- ``component='full'``: the offsets as predicted (the plain DCN);
- ``component='d_f'``:  every tap gets d_f, the mean offset over the K*K taps ("revisiting" Eq. 2);
- ``component='d_k'``:  every tap gets its offset minus d_f (Eq. 3).

The legacy spellings ``'df'`` and ``'dk'`` are read as ``'d_f'`` and ``'d_k'``.

Because the state dict is mmcv's, a checkpoint trained with ``DCN``/``DCNv2`` loads into
``DFOnlyDCN``/``DKOnlyDCN`` unchanged, which is the test-time projection ablation.
"""
import math
from typing import Optional

import torch
import torch.nn.functional as F
from mmcv.ops import ModulatedDeformConv2d, deform_conv2d, modulated_deform_conv2d
from mmengine.registry import MODELS
from torch import Tensor, nn

from ..ops.deform_conv import deform_conv2d_torch
from ..ops.offset_fields import project_offsets
from ..ops.utils import autocast_dtype, conv_output_size
from ..variants import component_name, dcn_variant

BACKENDS = ('auto', 'torch', 'mmcv')


@MODELS.register_module()
class DecomposedDCN(ModulatedDeformConv2d):
    """DCN (v1, or v2 with ``modulated=True``) that samples with the full, d_f or d_k offsets.

    A subclass of mmcv's ``ModulatedDeformConv2d`` (the weight and optional bias of both DCN
    forms), so code that recognises mmcv's DCNs treats it as one, e.g. mmengine's optimizer
    constructor with ``paramwise_cfg=dict(dcn_offset_lr_mult=...)``.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, deform_groups,
        bias: as mmcv's ``DeformConv2dPack`` (``bias`` is also allowed for v1 here).
        component: ``'full'``, ``'d_f'`` or ``'d_k'`` (legacy ``'df'``, ``'dk'``): which part of
            the predicted offsets is used.
        modulated: DCNv2 (``conv_offset`` also predicts a sigmoid mask per tap).
        backend: ``'torch'`` (:func:`deform_conv2d_torch`), ``'mmcv'`` (mmcv's compiled op) or
            ``'auto'``: mmcv's op for CUDA tensors, the torch path otherwise. Both take maps
            smaller than the kernel (mmcv's v1 op after padding them, as mmcv's ``DCN`` does).
        im2col_step: passed to mmcv's v1 op (as in mmcv).

    Shapes: input ``(N, in_channels, H, W)`` -> ``(N, out_channels, Ho, Wo)``;
    ``conv_offset(x)`` gives ``(N, k*deform_groups*Kh*Kw, Ho, Wo)`` with k = 2 (v1) or 3 (v2).
    """

    _version = 2  # state-dict version of mmcv's Pack layers, so saved metadata matches theirs
    fixed_component = None  # set by the subclasses that pin the component

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, deform_groups: int = 1, bias: bool = False, *,
                 component: Optional[str] = None, modulated: bool = False, backend: str = 'auto',
                 im2col_step: int = 32):
        name = type(self).__name__
        if component is not None:
            component = component_name(component)
        if self.fixed_component is not None:
            if component not in (None, self.fixed_component):
                raise ValueError(f'{name} always uses component={self.fixed_component!r}, got '
                                 f'{component!r}; use DecomposedDCN to choose the component')
            component = self.fixed_component
        component = 'full' if component is None else component
        if backend not in BACKENDS:
            raise ValueError(f'{name}: unknown backend {backend!r}; expected one of {BACKENDS}')
        for what, channels in (('in_channels', in_channels), ('out_channels', out_channels)):
            if channels % groups:
                raise ValueError(f'{name}: {what}={channels} is not divisible by groups={groups}')
        if in_channels % deform_groups:
            raise ValueError(f'{name}: in_channels={in_channels} is not divisible by '
                             f'deform_groups={deform_groups}')
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                         deform_groups, bias)  # weight, bias and the geometry attributes, as mmcv
        self.component, self.modulated, self.backend = component, modulated, backend
        self.im2col_step = im2col_step

        taps = self.kernel_size[0] * self.kernel_size[1]
        self.conv_offset = nn.Conv2d(in_channels, (3 if modulated else 2) * deform_groups * taps,
                                     self.kernel_size, self.stride, self.padding, self.dilation, bias=True)
        self.reset_parameters()

    @property
    def variant(self) -> str:
        """The key of :mod:`deform_viz.variants`: ``'dcn'``, ``'dcn-df'``, ... ``'dcnv2-dk'``."""
        return dcn_variant(self.modulated, self.component)

    def reset_parameters(self) -> None:
        """mmcv's initialisation of the main weight (v1: Kaiming uniform; v2: U(+-1/sqrt(fan_in))),
        zero bias, zero offset predictor."""
        if self.modulated:
            bound = 1 / math.sqrt(self.in_channels * self.kernel_size[0] * self.kernel_size[1])
            nn.init.uniform_(self.weight, -bound, bound)
        else:
            nn.init.kaiming_uniform_(self.weight, nonlinearity='relu')
        if self.bias is not None:
            nn.init.zeros_(self.bias)
        self.init_weights()

    def init_weights(self) -> None:
        """Zero the offset predictor, so the layer starts as a plain conv (v2: mask 0.5).

        mmdet's ResNet Kaiming-initialises every ``nn.Conv2d`` (``conv_offset`` included) and
        then calls its children's ``init_weights``; this is where the offsets get zeroed again.
        """
        if not hasattr(self, 'conv_offset'):  # called by mmcv's __init__, before conv_offset exists
            return
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def offsets(self, x: Tensor):
        """Predicted (unprojected) offsets ``(N, 2*G*K*K, Ho, Wo)`` and mask ``(N, G*K*K, Ho, Wo)`` or None."""
        out = self.conv_offset(x)
        if not self.modulated:
            return out, None
        o1, o2, mask = torch.chunk(out, 3, dim=1)
        return torch.cat((o1, o2), dim=1), torch.sigmoid(mask)

    def forward(self, x: Tensor) -> Tensor:
        offset, mask = self.offsets(x)
        offset = project_offsets(offset, self.kernel_size, self.component)
        if self.uses_mmcv(x):
            return self._mmcv_forward(x, offset, mask)
        return deform_conv2d_torch(x, offset, self.weight, self.bias, self.stride, self.padding,
                                   self.dilation, self.groups, mask)

    def uses_mmcv(self, x: Tensor) -> bool:
        """Whether ``forward(x)`` runs mmcv's op (else :func:`deform_conv2d_torch`, which is
        numerically equal). mmcv's ops refuse an empty batch; the torch path returns one."""
        wanted = self.backend == 'mmcv' or (self.backend == 'auto' and x.is_cuda)
        return wanted and x.shape[0] > 0

    def _mmcv_forward(self, x: Tensor, offset: Tensor, mask) -> Tensor:
        dtype = autocast_dtype(x.device.type)
        if dtype is None:
            return self._mmcv_op(x, offset, mask, self.weight, self.bias)
        # mmcv casts input and weight to the offsets' dtype, so under autocast its kernel would
        # compute sampling positions in half precision (1/4 px steps at x >= 256). Run it in
        # float32 outside autocast instead, and hand autocast's dtype on like the other layers.
        with torch.autocast(x.device.type, enabled=False):
            out = self._mmcv_op(x.float(), offset.float(), None if mask is None else mask.float(),
                                self.weight.float(), None if self.bias is None else self.bias.float())
        return out.to(dtype)

    def _mmcv_op(self, x: Tensor, offset: Tensor, mask, weight: Tensor, bias) -> Tensor:
        # mmcv's kernels index their inputs as contiguous memory: other layouts give wrong numbers
        x, offset = x.contiguous(), offset.contiguous()
        if self.modulated:
            mask = mask.contiguous()
            return modulated_deform_conv2d(x, offset, mask, weight, bias, self.stride,
                                           self.padding, self.dilation, self.groups, self.deform_groups)
        # mmcv's v1 op refuses maps smaller than the kernel. Pad them at the bottom and right, as
        # mmcv's DeformConv2dPack does: the op reads zeros beyond the map anyway. The offsets are
        # padded to the padded map's output size (mmcv pads them like the input, which only fits
        # stride 1), and the extra output rows and columns are cut off.
        out_h, out_w = offset.shape[2:]
        pad_h = max(self.kernel_size[0] - x.shape[2], 0)
        pad_w = max(self.kernel_size[1] - x.shape[3], 0)
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
            padded_h, padded_w = conv_output_size(x.shape[2:], self.kernel_size, self.stride,
                                                  self.padding, self.dilation)
            offset = F.pad(offset, (0, padded_w - out_w, 0, padded_h - out_h))
        out = deform_conv2d(x, offset, weight, self.stride, self.padding, self.dilation,
                            self.groups, self.deform_groups, False, self.im2col_step)
        if pad_h or pad_w:
            out = out[:, :, :out_h, :out_w]
        # mmcv's output has the offsets' dtype: a float32 bias must not promote a half output
        return out if bias is None else out + bias.to(out.dtype).view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        s = (f'{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, '
             f'stride={self.stride}, padding={self.padding}, dilation={self.dilation}')
        if self.groups != 1:
            s += f', groups={self.groups}'
        return (s + f', deform_groups={self.deform_groups}, bias={self.bias is not None}, '
                f'component={self.component!r}, modulated={self.modulated}, backend={self.backend!r}')


@MODELS.register_module()
class DFOnlyDCN(DecomposedDCN):
    """:class:`DecomposedDCN` that samples every tap at p0 + rigid tap + d_f(p0) (a shifted kernel)."""
    fixed_component = 'd_f'


@MODELS.register_module()
class DKOnlyDCN(DecomposedDCN):
    """:class:`DecomposedDCN` that samples with d_k = offset - d_f (the kernel shape, not its shift)."""
    fixed_component = 'd_k'
