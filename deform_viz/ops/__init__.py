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

from .deformable_kernel import (deformable_kernel_global, deformable_kernel_local,  # noqa: E402
                                kernel_base_grid, kernel_sampling_corners, kernel_sampling_weights,
                                resample_kernel)
__all__ += ['deformable_kernel_global', 'deformable_kernel_local', 'kernel_base_grid',
            'kernel_sampling_corners', 'kernel_sampling_weights', 'resample_kernel']
