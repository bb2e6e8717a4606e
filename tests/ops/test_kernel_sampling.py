"""Deformable Kernels' kernel sampling: rigid grids, bilinear weights, scope lifting; known answers."""
import pytest
import torch

from deform_viz.ops import (kernel_base_grid, kernel_sampling_corners, kernel_sampling_weights,
                            resample_kernel, scope_from_kernel)

DT = torch.float64


@pytest.mark.parametrize('kernel,scope,rows', [
    (3, 4, [0.5, 1.5, 2.5]),   # the official grid: start = (4 - 2 - 1) / 2
    (3, 5, [1., 2., 3.]),
    (3, 6, [1.5, 2.5, 3.5]),
    (2, 4, [1., 2.]),
    (1, 4, [1.5]),
    (3, 3, [0., 1., 2.]),
])
def test_centred_grid_is_unit_spaced_in_the_middle_of_the_scope(kernel, scope, rows):
    grid = kernel_base_grid(kernel, scope)  # 'centred' is the default
    expected = torch.tensor([[y, x] for y in rows for x in rows])
    assert torch.equal(grid, expected)
    assert torch.equal(kernel_base_grid(kernel, scope, 'centred'), expected)


@pytest.mark.parametrize('kernel,scope,rows', [
    (3, 4, [0., 1.5, 3.]),
    (3, 5, [0., 2., 4.]),
    (2, 4, [0., 3.]),
    (1, 4, [1.5]),
    (3, 3, [0., 1., 2.]),
])
def test_spread_grid_spans_the_scope(kernel, scope, rows):
    expected = torch.tensor([[y, x] for y in rows for x in rows])
    assert torch.equal(kernel_base_grid(kernel, scope, 'spread'), expected)


def test_rectangular_kernel_and_scope():
    assert torch.equal(kernel_base_grid((1, 3), (2, 3)), torch.tensor([[0.5, 0], [0.5, 1], [0.5, 2]]))
    assert torch.equal(kernel_base_grid((1, 2), (3, 5), 'spread'), torch.tensor([[1., 0], [1., 4]]))


def test_sampling_weights_bilinear_and_clipped():
    off = torch.tensor([[0.25, -0.5], [5.0, -7.0]], dtype=DT).view(2, 1, 2)
    b = kernel_sampling_weights(off, 1, 3).view(2, 3, 3)  # base (1, 1) on both grids
    expect0 = torch.zeros(3, 3, dtype=DT)
    expect0[1, 0], expect0[1, 1], expect0[2, 0], expect0[2, 1] = .375, .375, .125, .125
    assert torch.equal(b[0], expect0)
    expect1 = torch.zeros(3, 3, dtype=DT)
    expect1[2, 0] = 1  # clipped to the bottom-left corner
    assert torch.equal(b[1], expect1)
    assert torch.equal(kernel_sampling_weights(torch.zeros(9, 2), 3, 3), torch.eye(9))


def test_centred_zero_offsets_sit_between_cells():
    """K = 3, S = 4: tap (0, 0) at (0.5, 0.5) takes a quarter of cells 0, 1, 4 and 5."""
    cells, weights = kernel_sampling_corners(torch.zeros(9, 2), 3, 4)
    assert cells[0].tolist() == [0, 1, 4, 5]
    assert weights[0].tolist() == [0.25] * 4
    assert cells[8].tolist() == [10, 11, 14, 15]


def test_half_precision_offsets_sample_in_float32():
    offset = torch.full((9, 2), 0.3, dtype=torch.bfloat16)
    _, weights = kernel_sampling_corners(offset, 3, 4)
    assert weights.dtype == torch.float32


@pytest.mark.parametrize('grid', ['centred', 'spread'])
@pytest.mark.parametrize('scope', [3, 4, 5, (4, 6)])
def test_scope_from_kernel_samples_the_kernel_back(scope, grid):
    kernel = torch.randn(5, 2, 3, 3, dtype=DT)
    lifted = scope_from_kernel(kernel, scope, grid)
    sh, sw = (scope, scope) if isinstance(scope, int) else scope
    assert lifted.shape == (5, 2, sh, sw)
    torch.testing.assert_close(resample_kernel(lifted, torch.zeros(1, 18, dtype=DT), 3, grid)[0], kernel)


def test_scope_from_kernel_known_answers():
    kernel = torch.arange(9, dtype=DT).view(1, 1, 3, 3)
    # centred, S = 5: taps on cells 1..3, the kernel in the middle and zeros around it
    expected = torch.zeros(1, 1, 5, 5, dtype=DT)
    expected[..., 1:4, 1:4] = kernel
    torch.testing.assert_close(scope_from_kernel(kernel, 5), expected)
    # spread, S = 4: taps at 0, 1.5, 3 repeat the middle row and column
    spread = scope_from_kernel(kernel, 4, 'spread')
    torch.testing.assert_close(spread, kernel[..., [0, 1, 1, 2], :][..., [0, 1, 1, 2]])


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"grid must be one of \('centred', 'spread'\), got 'middle'"):
        kernel_base_grid(3, 4, 'middle')
    with pytest.raises(ValueError, match='scope 2x4 is smaller than the kernel 3x3'):
        kernel_base_grid(3, (2, 4))
    with pytest.raises(ValueError, match=r'kernel_size must be positive, got \(0, 3\)'):
        kernel_base_grid((0, 3), 4)
    with pytest.raises(ValueError, match=r'kernel_offset must have shape \(\.\.\., 9, 2\) for a 3x3 kernel'):
        kernel_sampling_weights(torch.zeros(4, 2), 3, 3)
    with pytest.raises(ValueError, match=r'kernel_offset must have shape \(N, 18\) for a 3x3 kernel, got \(1, 9\)'):
        resample_kernel(torch.zeros(2, 2, 4, 4), torch.zeros(1, 9), 3)
    with pytest.raises(ValueError, match=r'scope must be an int or a pair of ints, got \(4, 4, 4\)'):
        kernel_sampling_weights(torch.zeros(9, 2), 3, (4, 4, 4))
