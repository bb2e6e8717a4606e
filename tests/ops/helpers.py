"""Helpers for the op and layer tests: devices, autocast settings, memory layouts, error measure."""
import pytest
import torch

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason='needs a CUDA GPU (torch.cuda.is_available() is False)')

#: (device, autocast dtype) pairs: CPU bfloat16 runs everywhere, CUDA float16 where a GPU is.
AUTOCAST = [pytest.param('cpu', torch.bfloat16, id='cpu-bf16'),
            pytest.param('cuda', torch.float16, id='cuda-fp16', marks=needs_cuda)]

#: Largest relative error (Frobenius norm of the difference over that of the float32 result)
#: allowed for outputs and gradients under autocast. The half types keep 8 (bfloat16) or 11
#: (float16) significant bits, a rounding of 0.4 % / 0.05 %; measured on CPU bfloat16: under
#: 0.8 % for the ops, under 1.4 % for whole layers (whose offset predictors run in bfloat16 too).
#: Inputs keep sampling positions away from bilinear kinks, where a rounded offset would flip a
#: gradient (as it does for mmcv's op, or for float32 with rounded offsets).
AUTOCAST_RTOL = 0.03


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| (Frobenius, in float64)."""
    expected = expected.detach().double().cpu()
    return ((actual.detach().double().cpu() - expected).norm() / expected.norm()).item()


def relayout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values in another memory layout: 'contiguous', 'non_contiguous' (W and H
    strides swapped, as torchvision's tests do) or 'channels_last'. Keeps requires_grad."""
    if layout == 'contiguous':
        out = t.detach().contiguous()
    elif layout == 'non_contiguous':
        out = t.detach().transpose(-1, -2).contiguous().transpose(-1, -2)
        assert not out.is_contiguous()
    else:
        out = t.detach().contiguous(memory_format=torch.channels_last)
    return out.requires_grad_(t.requires_grad)


LAYOUTS = ['contiguous', 'non_contiguous', 'channels_last']


def check_layouts_and_empty_batch(layer, in_channels: int, out_channels: int, layout: str) -> None:
    """``layer`` on a (2, C, 6, 7) input gives the same output in ``layout`` as contiguous, and an
    empty batch gives empty outputs and input gradients (3x3, padding 1: same spatial size)."""
    x = torch.randn(2, in_channels, 6, 7)
    torch.testing.assert_close(layer(relayout(x, layout)), layer(x))
    empty = torch.zeros(0, in_channels, 6, 7, requires_grad=True)
    out = layer(empty)
    assert out.shape == (0, out_channels, 6, 7)
    grad, = torch.autograd.grad(out.sum(), empty)
    assert grad.shape == (0, in_channels, 6, 7)
