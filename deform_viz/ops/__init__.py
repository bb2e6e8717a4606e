"""Functional ops on tensors: offset-field geometry, fast deformable conv, deformable kernels.

Modules: :mod:`.offset_fields` (d_f / d_k, divergence, kernel extent), :mod:`.deform_conv`
(DCN v1/v2 in PyTorch), :mod:`.kernel_sampling` (where Deformable Kernels' taps sit in the
scope), :mod:`.deformable_kernel` (local and global DK convolutions), :mod:`.utils` (argument and
precision helpers). Modules starting with ``_`` are internal to this package.
"""
from .deform_conv import deform_conv2d_torch, deform_sample
from .deformable_kernel import deformable_kernel_global, deformable_kernel_local
from .kernel_sampling import (GRIDS, kernel_base_grid, kernel_sampling_corners,
                              kernel_sampling_weights, resample_kernel, scope_from_kernel)
from .offset_fields import (divergence, effective_dilation, extent_radius, kernel_extent,
                            merge_offsets, offset_df, offset_dk, project_offsets,
                            sampling_positions, split_offsets)

__all__ = [
    'divergence', 'effective_dilation', 'extent_radius', 'kernel_extent', 'merge_offsets',
    'offset_df', 'offset_dk', 'project_offsets', 'sampling_positions', 'split_offsets',
    'deform_conv2d_torch', 'deform_sample',
    'deformable_kernel_global', 'deformable_kernel_local',
    'GRIDS', 'kernel_base_grid', 'kernel_sampling_corners', 'kernel_sampling_weights',
    'resample_kernel', 'scope_from_kernel',
]
