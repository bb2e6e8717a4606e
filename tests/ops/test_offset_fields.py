"""Offset-field geometry: layout against mmcv's op, projection identities, known answers."""
import pytest
import torch
import torch.nn.functional as F
from mmcv.ops import deform_conv2d

from deform_viz.ops.offset_fields import (divergence, effective_dilation, extent_radius,
                                          kernel_extent, merge_offsets, offset_df, offset_dk,
                                          project_offsets, split_offsets)


def test_layout_matches_mmcv_dy_then_dx():
    """Shifting only tap n by (dy, dx) in our fields layout moves exactly that tap in mmcv's op."""
    torch.manual_seed(0)
    x = torch.randn(1, 1, 7, 7)
    weight = torch.zeros(1, 1, 3, 3)
    weight[0, 0, 0, 2] = 1.0  # only tap (i=0, j=2), n = 2
    fields = torch.zeros(1, 1, 9, 2, 7, 7)
    fields[:, :, 2, 0] = 1.0   # dy = +1
    fields[:, :, 2, 1] = -2.0  # dx = -2
    out = deform_conv2d(x, merge_offsets(fields), weight, 1, 1, 1, 1, 1)
    # tap (0, 2) samples x[p + (-1, +1) + (dy, dx)] = x[p + (0, -1)]
    expected = F.pad(x, (1, 0, 0, 0))[..., :, :7]
    assert torch.allclose(out, expected)


def test_split_merge_roundtrip_and_channel_check():
    offset = torch.randn(2, 2 * 2 * 9, 4, 5)
    fields = split_offsets(offset, 3)
    assert fields.shape == (2, 2, 9, 2, 4, 5)
    assert torch.equal(merge_offsets(fields), offset)
    with pytest.raises(ValueError, match='not a multiple of 2\\*K\\*K = 18'):
        split_offsets(torch.randn(1, 20, 3, 3), 3)


def test_projection_known_answer():
    """Tap n of a 3x3 kernel offset by (n, -2n) at one location and (1, 1) everywhere at the other:
    d_f = (4, -8) and (1, 1), d_k = (n - 4, 8 - 2n) and (0, 0)."""
    taps = torch.arange(9, dtype=torch.float64)
    fields = torch.zeros(1, 1, 9, 2, 1, 2, dtype=torch.float64)
    fields[0, 0, :, 0, 0, 0], fields[0, 0, :, 1, 0, 0] = taps, -2 * taps
    fields[0, 0, :, :, 0, 1] = 1
    offset = merge_offsets(fields)
    d_f = split_offsets(project_offsets(offset, 3, 'd_f'), 3)
    d_k = split_offsets(project_offsets(offset, 3, 'd_k'), 3)
    assert torch.equal(d_f[0, 0, :, :, 0, 0], torch.tensor([[4., -8.]] * 9, dtype=torch.float64))
    assert torch.equal(d_f[0, 0, :, :, 0, 1], torch.ones(9, 2, dtype=torch.float64))
    assert torch.equal(d_k[0, 0, :, :, 0, 0], torch.stack([taps - 4, 8 - 2 * taps], dim=1))
    assert torch.equal(d_k[0, 0, :, :, 0, 1], torch.zeros(9, 2, dtype=torch.float64))
    assert torch.equal(offset_df(fields)[0, 0, :, 0], torch.tensor([[4., 1.], [-8., 1.]], dtype=torch.float64))
    assert torch.equal(offset_dk(fields), d_k)
    assert project_offsets(offset, 3, 'full') is offset


@pytest.mark.parametrize('kernel_size', [1, 3, 5])
def test_df_plus_dk_is_the_offset_and_legacy_names_agree(kernel_size):
    offset = torch.randn(2, 2 * 3 * kernel_size ** 2, 4, 4, dtype=torch.float64)
    d_f, d_k = (project_offsets(offset, kernel_size, c) for c in ('d_f', 'd_k'))
    torch.testing.assert_close(d_f + d_k, offset, rtol=0, atol=1e-12)
    assert torch.equal(project_offsets(offset, kernel_size, 'df'), d_f)
    assert torch.equal(project_offsets(offset, kernel_size, 'dk'), d_k)


def test_unknown_component_names_the_choices():
    message = r"unknown offset component 'dkernel'; expected one of \('full', 'd_f', 'd_k'\)"
    with pytest.raises(ValueError, match=message):
        project_offsets(torch.zeros(1, 18, 2, 2), 3, 'dkernel')


def test_divergence_sign_of_sinks_and_sources():
    y, x = torch.meshgrid(torch.arange(9.), torch.arange(9.), indexing='ij')
    sink = torch.stack([4 - y, 4 - x])  # every arrow points at (4, 4)
    assert torch.allclose(divergence(sink), torch.full((9, 9), -2.0))
    assert torch.allclose(divergence(-sink), torch.full((9, 9), 2.0))
    assert torch.equal(divergence(torch.zeros(3, 2, 5, 5)), torch.zeros(3, 5, 5))


@pytest.mark.parametrize('dilation', [1, 2])
@pytest.mark.parametrize('scale', [0.5, 1.0, 3.0])
def test_scaled_kernel_extent_and_dilation(dilation, scale):
    """Offsets that scale the rigid grid by s scale width, height, radius and dilation by s."""
    from deform_viz.ops.offset_fields import rigid_grid
    grid = rigid_grid(3, dilation)                               # (9, 2)
    fields = ((scale - 1) * grid)[:, :, None, None].expand(9, 2, 3, 4)
    width, height = kernel_extent(fields, 3, dilation)
    rigid = 2 * dilation
    assert torch.allclose(width, torch.full((3, 4), scale * rigid))
    assert torch.allclose(height, torch.full((3, 4), scale * rigid))
    assert torch.allclose(extent_radius(fields, 3, dilation), torch.full((3, 4), scale * rigid))
    assert torch.allclose(effective_dilation(fields, 3, dilation), torch.full((3, 4), scale * dilation))


def test_folded_kernel_has_zero_radius():
    from deform_viz.ops.offset_fields import rigid_grid
    fields = (-3 * rigid_grid(3))[:, :, None, None].expand(9, 2, 1, 1)  # mirrored: width, height < 0
    width, _ = kernel_extent(fields, 3)
    assert width.item() < 0
    assert extent_radius(fields * torch.tensor([1.0, 0.0])[:, None, None], 3).item() == 0
