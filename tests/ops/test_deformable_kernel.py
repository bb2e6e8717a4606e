"""Deformable Kernels ops against a slow, obvious reference (values and gradients), plus gradcheck.

The reference builds the full kernel of every output location tap by tap with scalar bilinear
interpolation of the scope, samples the input point by point (zero outside the image, bilinear for
DCN data offsets) and accumulates the convolution sum by explicit loops.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from deform_viz.ops.deformable_kernel import (deformable_kernel_global, deformable_kernel_local,
                                              kernel_base_grid, kernel_sampling_weights,
                                              resample_kernel)

DT = torch.float64


pytestmark = pytest.mark.usefixtures('single_thread')


# ----------------------------------------------------------------------------- reference
def _lerp_1d(p, size):
    """[(index, weight)] interpolating position p (0-d tensor) on 0..size-1, clipped to the ends."""
    if size == 1:
        return [(0, 1.0)]
    p = torch.clamp(p, 0, size - 1)
    low = min(math.floor(p.item()), size - 2)
    frac = p - low
    return [(low, 1 - frac), (low + 1, frac)]


def _base(k, s, i):
    return (s - 1) / 2 if k == 1 else i * (s - 1) / (k - 1)


def _scope_value(weight, py, px):
    """Bilinear sample (O, C/G) of the scope weights at (py, px), scope coordinates."""
    value = 0
    for iy, wy in _lerp_1d(py, weight.shape[2]):
        for ix, wx in _lerp_1d(px, weight.shape[3]):
            value = value + wy * wx * weight[:, :, iy, ix]
    return value


def _pixel(x, b, y, xx):
    """x[b, :, y, xx] for integer (y, xx), zero outside the image."""
    if 0 <= y < x.shape[2] and 0 <= xx < x.shape[3]:
        return x[b, :, y, xx]
    return torch.zeros(x.shape[1], dtype=x.dtype)


def _data_value(x, b, py, px):
    """Bilinear sample (C,) of x[b] at real position (py, px); corners outside the image are zero."""
    y0, x0 = math.floor(py.item()), math.floor(px.item())
    fy, fx = py - y0, px - x0
    return ((1 - fy) * (1 - fx) * _pixel(x, b, y0, x0) + (1 - fy) * fx * _pixel(x, b, y0, x0 + 1)
            + fy * (1 - fx) * _pixel(x, b, y0 + 1, x0) + fy * fx * _pixel(x, b, y0 + 1, x0 + 1))


def reference_dk(x, weight, kernel_offset, k, stride=1, padding=0, dilation=1, groups=1,
                 data_offset=None):
    """Slow DK: kernel_offset (N, 2K^2, Ho, Wo) local or (N, 2K^2) global; square K only."""
    n_img, c, h, w = x.shape
    o, s_h, s_w = weight.shape[0], weight.shape[2], weight.shape[3]
    ho = (h + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    wo = (w + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    cg, og = c // groups, o // groups
    images = []
    for b in range(n_img):
        rows = []
        for oy in range(ho):
            cols = []
            for ox in range(wo):
                off = kernel_offset[b] if kernel_offset.dim() == 2 else kernel_offset[b, :, oy, ox]
                acc = torch.zeros(o, dtype=x.dtype)
                for i in range(k):
                    for j in range(k):
                        t = i * k + j
                        tap = _scope_value(weight, _base(k, s_h, i) + off[2 * t],
                                           _base(k, s_w, j) + off[2 * t + 1])  # (O, C/G)
                        y, xx = oy * stride - padding + i * dilation, ox * stride - padding + j * dilation
                        if data_offset is None:
                            sample = _pixel(x, b, y, xx)
                        else:
                            dgroups = data_offset.shape[1] // (2 * k * k)
                            parts = []
                            for d in range(dgroups):
                                ch = (d * k * k + t) * 2
                                dy, dx = data_offset[b, ch, oy, ox], data_offset[b, ch + 1, oy, ox]
                                cd = c // dgroups
                                parts.append(_data_value(x, b, y + dy, xx + dx)[d * cd:(d + 1) * cd])
                            sample = torch.cat(parts)
                        for g in range(groups):
                            acc = acc + F.pad(tap[g * og:(g + 1) * og] @ sample[g * cg:(g + 1) * cg],
                                              (g * og, o - (g + 1) * og))
                cols.append(acc)
            rows.append(torch.stack(cols, -1))
        images.append(torch.stack(rows, -2))
    return torch.stack(images)


# ----------------------------------------------------------------------------- helpers
def clean_kernel_offsets(shape, k, scope, gen):
    """Offsets (N, 2K^2, ...) whose positions keep >= 0.1 away from integers and the clip borders.

    Positions are drawn in cells -1 .. S-1 (cell -1 and cell S-1 lie outside [0, S-1]: clipped).
    """
    n, rest = shape[0], shape[2:]
    cell = torch.randint(-1, scope, (n, k * k, 2) + tuple(rest), generator=gen).to(DT)
    pos = cell + 0.1 + 0.8 * torch.rand(cell.shape, generator=gen, dtype=DT)
    base = kernel_base_grid(k, scope, dtype=DT).view(1, k * k, 2, *([1] * len(rest)))
    return (pos - base).reshape(shape)


def clean_data_offsets(shape, gen, scale=1.5):
    """Data offsets whose fractional parts keep >= 0.1 away from integers (bilinear kinks)."""
    whole = torch.randint(-2, 2, shape, generator=gen).to(DT)
    return whole + 0.1 + 0.8 * torch.rand(shape, generator=gen, dtype=DT)


def out_size(size, k, stride, padding, dilation):
    return (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1


# (K, S, stride, padding, dilation, groups, C_in, C_out)
CASES = [
    (3, 3, 1, 1, 1, 1, 2, 3),
    (3, 4, 2, 1, 1, 1, 2, 2),
    (3, 5, 1, 2, 2, 2, 4, 2),  # grouped, dilated
    (3, 4, 1, 1, 1, 3, 3, 6),  # depthwise, channel multiplier 2
    (1, 1, 1, 0, 1, 1, 2, 2),
    (1, 3, 2, 0, 1, 1, 2, 3),
]
IDS = ['k3s3', 'k3s4-stride2', 'k3s5-dil2-grouped', 'k3s4-depthwise', 'k1s1', 'k1s3-stride2']


def make_case(case, local, seed=0, size=(5, 6), n=1):
    k, s, stride, padding, dilation, groups, cin, cout = case
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cin, *size, generator=gen, dtype=DT)
    weight = torch.randn(cout, cin // groups, s, s, generator=gen, dtype=DT)
    ho, wo = (out_size(v, k, stride, padding, dilation) for v in size)
    shape = (n, 2 * k * k, ho, wo) if local else (n, 2 * k * k)
    offset = clean_kernel_offsets(shape, k, s, gen)
    conv = dict(kernel_size=k, stride=stride, padding=padding, dilation=dilation, groups=groups)
    return x, weight, offset, conv


def _grads(out, inputs, gen_seed=1):
    cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(gen_seed), dtype=out.dtype)
    grads = torch.autograd.grad(out, inputs, cot, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, inputs)]


# ----------------------------------------------------------------------------- tests
def test_base_grid_spacing():
    assert torch.equal(kernel_base_grid(3, 3)[:, 0], torch.tensor([0., 0, 0, 1, 1, 1, 2, 2, 2]))
    assert torch.allclose(kernel_base_grid(3, 4)[:3, 1], torch.tensor([0., 1.5, 3.]))
    assert torch.equal(kernel_base_grid(1, 4), torch.tensor([[1.5, 1.5]]))
    assert torch.equal(kernel_base_grid((1, 3), (2, 3)), torch.tensor([[0.5, 0], [0.5, 1], [0.5, 2]]))


def test_sampling_weights_bilinear_and_clipped():
    off = torch.tensor([[0.25, -0.5], [5.0, -7.0]], dtype=DT).view(2, 1, 2)
    b = kernel_sampling_weights(off, 1, 3).view(2, 3, 3)  # base (1, 1)
    expect0 = torch.zeros(3, 3, dtype=DT)
    expect0[1, 0], expect0[1, 1], expect0[2, 0], expect0[2, 1] = .375, .375, .125, .125
    assert torch.allclose(b[0], expect0)
    expect1 = torch.zeros(3, 3, dtype=DT)
    expect1[2, 0] = 1  # clipped to the bottom-left corner
    assert torch.equal(b[1], expect1)
    assert torch.equal(kernel_sampling_weights(torch.zeros(9, 2), 3, 3), torch.eye(9))


@pytest.mark.parametrize('case', CASES, ids=IDS)
@pytest.mark.parametrize('local', [True, False], ids=['local', 'global'])
def test_matches_reference(case, local):
    x, weight, offset, conv = make_case(case, local, n=2 if local else 1)
    inputs = [t.requires_grad_() for t in (x, weight, offset)]
    op = deformable_kernel_local if local else deformable_kernel_global
    extra = dict(chunk_size=7) if local else {}
    out = op(*inputs, **conv, **extra)
    ref = reference_dk(*inputs, conv['kernel_size'], conv['stride'], conv['padding'],
                       conv['dilation'], conv['groups'])
    torch.testing.assert_close(out, ref)
    for got, want, name in zip(_grads(out, inputs), _grads(ref, inputs), ('x', 'weight', 'offset')):
        torch.testing.assert_close(got, want, msg=lambda m: f'grad {name}: {m}')


@pytest.mark.parametrize('case', [CASES[0], CASES[1], CASES[2], CASES[3], CASES[5]],
                         ids=[IDS[0], IDS[1], IDS[2], IDS[3], IDS[5]])
@pytest.mark.parametrize('local', [True, False], ids=['local', 'global'])
def test_gradcheck(case, local):
    x, weight, offset, conv = make_case(case, local, seed=3, size=(3, 3), n=1 if local else 2)
    bias = torch.randn(weight.shape[0], dtype=DT)
    op = deformable_kernel_local if local else deformable_kernel_global
    extra = dict(chunk_size=4) if local else {}

    def fn(x, weight, offset, bias):
        return op(x, weight, offset, bias=bias, **conv, **extra)

    assert torch.autograd.gradcheck(fn, [t.requires_grad_() for t in (x, weight, offset, bias)])


@pytest.mark.parametrize('stride,padding', [(1, 1), (2, 0)])
def test_chunked_equals_unchunked(stride, padding):
    x, weight, offset, conv = make_case((3, 4, stride, padding, 1, 2, 4, 6), True, n=2,
                                        size=(9, 7))
    inputs = [t.requires_grad_() for t in (x, weight, offset)]
    outs = [deformable_kernel_local(*inputs, **conv, chunk_size=c) for c in (1, 5, 10 ** 6)]
    grads = [_grads(out, inputs) for out in outs]
    for out, grad in zip(outs[:2], grads[:2]):
        torch.testing.assert_close(out, outs[2], rtol=1e-12, atol=1e-12)
        for a, b in zip(grad, grads[2]):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('case', [CASES[1], CASES[2], CASES[3]], ids=['full', 'grouped', 'depthwise'])
def test_channels_last_weight_gives_same_values_and_a_gradient_in_its_layout(case):
    """DeformableKernel keeps local scope weights channels-last so the op copies no weights; either
    layout gives the same numbers, and the op's weight gradient comes out channels-last (so
    autograd need not copy it into the parameter's layout either)."""
    x, weight, offset, conv = make_case(case, True, n=2)
    results = []
    for w in (weight, weight.contiguous(memory_format=torch.channels_last)):
        inputs = [t.clone(memory_format=torch.preserve_format).requires_grad_() for t in (x, w, offset)]
        out = deformable_kernel_local(*inputs, **conv, chunk_size=5)
        results.append([out] + _grads(out, inputs))
    grad_w = results[1][2]
    assert grad_w.is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('wanted', [(0, ), (1, ), (2, ), (0, 2)], ids=['x', 'weight', 'offset', 'x+offset'])
def test_partial_gradients_match_full(wanted):
    """Backward skips work for inputs that need no gradient; what it returns must not change."""
    x, weight, offset, conv = make_case(CASES[2], True, n=2)
    inputs = [t.clone().requires_grad_() for t in (x, weight, offset)]
    full = _grads(deformable_kernel_local(*inputs, **conv, chunk_size=5), inputs)
    part_inputs = [t.clone().requires_grad_(i in wanted) for i, t in enumerate((x, weight, offset))]
    out = deformable_kernel_local(*part_inputs, **conv, chunk_size=5)
    part = _grads(out, [part_inputs[i] for i in wanted])
    for i, grad in zip(wanted, part):
        torch.testing.assert_close(grad, full[i], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('stride,padding,dilation,groups', [
    (1, 1, 1, 1), (2, 1, 1, 1), (1, 2, 2, 4), (2, 2, 2, 16), (1, 0, 1, 2)])
@pytest.mark.parametrize('local', [True, False], ids=['local', 'global'])
def test_zero_offsets_equal_conv2d(stride, padding, dilation, groups, local):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 11, 13, generator=gen)
    weight = torch.randn(32, 16 // groups, 3, 3, generator=gen)
    bias = torch.randn(32, generator=gen)
    ref = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    if local:
        offset = torch.zeros(2, 18, *ref.shape[2:])
        out = deformable_kernel_local(x, weight, offset, 3, stride, padding, dilation, groups, bias)
    else:
        out = deformable_kernel_global(x, weight, torch.zeros(2, 18), 3, stride, padding, dilation,
                                       groups, bias)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_larger_scope_at_zero_offsets_samples_scope_grid():
    """S > K, zero offsets: the conv whose taps are the bilinear samples of the scope grid."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 6, 6, generator=gen, dtype=DT)
    weight = torch.randn(2, 3, 4, 4, generator=gen, dtype=DT)
    mid = (weight[:, :, 1:2] + weight[:, :, 2:3]) / 2  # rows at 1.5
    rows = torch.cat([weight[:, :, :1], mid, weight[:, :, 3:]], 2)
    kernel = torch.cat([rows[..., :1], (rows[..., 1:2] + rows[..., 2:3]) / 2, rows[..., 3:]], 3)
    ref = F.conv2d(x, kernel, padding=1)
    out = deformable_kernel_local(x, weight, torch.zeros(1, 18, 6, 6, dtype=DT), 3, padding=1)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(resample_kernel(weight, torch.zeros(1, 18, dtype=DT), 3)[0], kernel)


def test_border_gradient_is_inward_one_sided_derivative():
    """Zero offsets, S = K: corner taps sit on the clip border and get the inward slope."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 5, 5, generator=gen, dtype=DT)
    weight = torch.randn(3, 2, 3, 3, generator=gen, dtype=DT)
    offset = torch.zeros(1, 18, 5, 5, dtype=DT, requires_grad=True)

    def loss(off):
        return deformable_kernel_local(x, weight, off, 3, padding=1).square().sum()

    grad, = torch.autograd.grad(loss(offset), offset)
    h = 1e-6
    for channel, inward in [(0, 1), (1, 1), (16, -1), (17, -1)]:  # tap 0 (y, x), tap 8 (y, x)
        step = torch.zeros_like(offset)
        step[0, channel, 2, 2] = inward * h
        one_sided = inward * (loss(offset + step) - loss(offset)) / h
        assert abs(grad[0, channel, 2, 2].item()) > 1e-3
        assert grad[0, channel, 2, 2].item() == pytest.approx(one_sided.item(), rel=1e-4)
        outward = (loss(offset - step) - loss(offset)).item()
        assert outward == 0.0  # beyond the border the tap does not move


def make_dcn_case(size, seed):
    """x (1, 4, H, W), scope weights (4, 2, 4, 4) (groups 2), local and global kernel offsets,
    data offsets with 2 deform groups; 3x3 kernel, padding 1."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, *size, generator=gen, dtype=DT)
    weight = torch.randn(4, 2, 4, 4, generator=gen, dtype=DT)
    kernel_local = clean_kernel_offsets((1, 18) + size, 3, 4, gen)
    kernel_global = clean_kernel_offsets((1, 18), 3, 4, gen)
    data = clean_data_offsets((1, 2 * 2 * 9) + size, gen)
    return x, weight, kernel_local, kernel_global, data


DCN_CONV = dict(kernel_size=3, stride=1, padding=1, dilation=1, groups=2)


@pytest.mark.parametrize('local', [True, False], ids=['local', 'global'])
def test_dcn_dk_matches_reference(local):
    pytest.importorskip('deform_viz.ops.deform_conv')
    x, weight, kernel_local, kernel_global, data = make_dcn_case((4, 5), seed=5)
    op = deformable_kernel_local if local else deformable_kernel_global
    inputs = [t.requires_grad_() for t in (x, weight, kernel_local if local else kernel_global, data)]
    out = op(*inputs[:3], data_offset=inputs[3], **DCN_CONV)
    ref = reference_dk(*inputs[:3], 3, 1, 1, 1, 2, data_offset=inputs[3])
    torch.testing.assert_close(out, ref)
    for got, want, name in zip(_grads(out, inputs), _grads(ref, inputs),
                               ('x', 'weight', 'kernel_offset', 'data_offset')):
        torch.testing.assert_close(got, want, msg=lambda m: f'grad {name}: {m}')


@pytest.mark.parametrize('local', [True, False], ids=['local', 'global'])
def test_dcn_dk_gradcheck(local):
    pytest.importorskip('deform_viz.ops.deform_conv')
    x, weight, kernel_local, kernel_global, data = make_dcn_case((3, 3), seed=6)
    op = deformable_kernel_local if local else deformable_kernel_global

    def fn(x, weight, kernel_offset, data_offset):
        return op(x, weight, kernel_offset, data_offset=data_offset, **DCN_CONV)

    inputs = [t.requires_grad_() for t in (x, weight, kernel_local if local else kernel_global, data)]
    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize('stride', [1, 2])
def test_dcn_dk_chunked_equals_unchunked(stride):
    """Chunks re-sample their rows with shifted dy offsets; any chunking gives the same result."""
    pytest.importorskip('deform_viz.ops.deform_conv')
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 4, 7, 6, generator=gen, dtype=DT)
    weight = torch.randn(6, 4, 4, 4, generator=gen, dtype=DT)
    ho, wo = out_size(7, 3, stride, 1, 1), out_size(6, 3, stride, 1, 1)
    kernel = clean_kernel_offsets((2, 18, ho, wo), 3, 4, gen)
    data = clean_data_offsets((2, 18, ho, wo), gen)
    inputs = [t.requires_grad_() for t in (x, weight, kernel, data)]
    outs = [deformable_kernel_local(*inputs[:3], 3, stride, 1, data_offset=inputs[3], chunk_size=c)
            for c in (1, wo * 2, 10 ** 6)]
    grads = [_grads(out, inputs) for out in outs]
    for out, grad in zip(outs[:2], grads[:2]):
        torch.testing.assert_close(out, outs[2], rtol=1e-12, atol=1e-12)
        for a, b in zip(grad, grads[2]):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    only_offsets = [t.detach().requires_grad_(i == 3) for i, t in enumerate(inputs)]
    out = deformable_kernel_local(*only_offsets[:3], 3, stride, 1, data_offset=only_offsets[3],
                                  chunk_size=wo)
    torch.testing.assert_close(_grads(out, only_offsets[3:])[0], grads[2][3])


def test_zero_data_offsets_equal_plain_dk():
    pytest.importorskip('deform_viz.ops.deform_conv')
    x, weight, offset, conv = make_case((3, 4, 2, 1, 1, 1, 3, 4), True, n=2)
    zeros = torch.zeros(2, 18, *offset.shape[2:], dtype=DT)
    torch.testing.assert_close(deformable_kernel_local(x, weight, offset, data_offset=zeros, **conv),
                               deformable_kernel_local(x, weight, offset, **conv))


def test_errors():
    x = torch.randn(1, 4, 6, 6)
    with pytest.raises(ValueError, match='scope 2x2 is smaller than the kernel 3x3'):
        deformable_kernel_local(x, torch.randn(4, 4, 2, 2), torch.zeros(1, 18, 6, 6), 3, padding=1)
    with pytest.raises(ValueError, match=r'kernel_offset must have shape \(1, 18, 6, 6\)'):
        deformable_kernel_local(x, torch.randn(4, 4, 3, 3), torch.zeros(1, 18, 5, 5), 3, padding=1)
    with pytest.raises(ValueError, match=r'kernel_offset must have shape \(1, 18\)'):
        deformable_kernel_global(x, torch.randn(4, 4, 3, 3), torch.zeros(1, 9), 3, padding=1)
    with pytest.raises(ValueError, match='divisible by groups'):
        deformable_kernel_local(x, torch.randn(4, 1, 3, 3), torch.zeros(1, 18, 6, 6), 3, 1, 1,
                                groups=3)
    with pytest.raises(ValueError, match='data_offset must have shape'):
        deformable_kernel_local(x, torch.randn(4, 4, 3, 3), torch.zeros(1, 18, 6, 6), 3, padding=1,
                                data_offset=torch.zeros(1, 17, 6, 6))
    with pytest.raises(ValueError, match=r'\(\.\.\., 9, 2\)'):
        kernel_sampling_weights(torch.zeros(4, 2), 3, 3)
