"""Functional ops on tensors: offset-field geometry, fast deformable conv, deformable kernels."""
from .offset_fields import (divergence, effective_dilation, extent_radius, kernel_extent,
                            merge_offsets, offset_df, offset_dk, project_offsets,
                            sampling_positions, split_offsets)

__all__ = [
    'divergence', 'effective_dilation', 'extent_radius', 'kernel_extent', 'merge_offsets',
    'offset_df', 'offset_dk', 'project_offsets', 'sampling_positions', 'split_offsets',
]

from .deform_conv import deform_conv2d_torch, deform_sample  # noqa: E402
__all__ += ['deform_conv2d_torch', 'deform_sample']
