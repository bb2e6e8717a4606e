"""Deformable Kernels ops against a slow, obvious reference (values and gradients), plus gradcheck.

The reference builds the full kernel of every output location tap by tap with scalar bilinear
interpolation of the scope, samples the input point by point (zero outside the image, bilinear for
DCN data offsets) and accumulates the convolution sum by explicit loops. Its rigid tap grid is
written from the official implementation's formula (hangg7/deformable-kernels,
``modules/deform_kernel.py``), not from the package's code.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from ops.helpers import AUTOCAST, AUTOCAST_RTOL, LAYOUTS, needs_cuda, relative_error, relayout

from deform_viz.ops import deformable_kernel as dk_ops
from deform_viz.ops import deformable_kernel_global, deformable_kernel_local

DT = torch.float64
GRIDS = ['centred', 'spread']

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


def _base(k, s, i, grid):
    """Scope coordinate of rigid tap i of K along an axis of S cells."""
    if grid == 'centred':  # official: start = (S - (K - 1) * weight_dilate - 1) / 2, weight_dilate = 1
        start = (s - (k - 1) * 1 - 1) / 2
        return start + i * 1
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
                 data_offset=None, grid='centred'):
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
                        tap = _scope_value(weight, _base(k, s_h, i, grid) + off[2 * t],
                                           _base(k, s_w, j, grid) + off[2 * t + 1])  # (O, C/G)
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
def clean_kernel_offsets(shape, k, scope, gen, grid='centred'):
    """Offsets (N, 2K^2, ...) whose positions keep >= 0.1 away from integers and the clip borders.

    Positions are drawn in cells -1 .. S-1 (cell -1 and cell S-1 lie outside [0, S-1]: clipped).
    """
    n, rest = shape[0], shape[2:]
    cell = torch.randint(-1, scope, (n, k * k, 2) + tuple(rest), generator=gen).to(DT)
    pos = cell + 0.1 + 0.8 * torch.rand(cell.shape, generator=gen, dtype=DT)
    base = torch.tensor([[_base(k, scope, i, grid), _base(k, scope, j, grid)]
                         for i in range(k) for j in range(k)], dtype=DT)
    return (pos - base.view(1, k * k, 2, *([1] * len(rest)))).reshape(shape)


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


def make_case(case, local, seed=0, size=(5, 6), n=1, grid='centred'):
    k, s, stride, padding, dilation, groups, cin, cout = case
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cin, *size, generator=gen, dtype=DT)
    weight = torch.randn(cout, cin // groups, s, s, generator=gen, dtype=DT)
    ho, wo = (out_size(v, k, stride, padding, dilation) for v in size)
    shape = (n, 2 * k * k, ho, wo) if local else (n, 2 * k * k)
    offset = clean_kernel_offsets(shape, k, s, gen, grid)
    conv = dict(kernel_size=k, stride=stride, padding=padding, dilation=dilation, groups=groups,
                grid=grid)
    return x, weight, offset, conv


def _grads(out, inputs, gen_seed=1):
    cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(gen_seed), dtype=out.dtype)
    grads = torch.autograd.grad(out, inputs, cot, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, inputs)]


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize('grid', GRIDS)
@pytest.mark.parametrize('case', CASES, ids=IDS)
@pytest.mark.parametrize('local', [True, False], ids=['local', 'global'])
def test_matches_reference(case, local, grid):
    x, weight, offset, conv = make_case(case, local, n=2 if local else 1, grid=grid)
    inputs = [t.requires_grad_() for t in (x, weight, offset)]
    op = deformable_kernel_local if local else deformable_kernel_global
    extra = dict(chunk_size=7) if local else {}
    out = op(*inputs, **conv, **extra)
    ref = reference_dk(*inputs, conv['kernel_size'], conv['stride'], conv['padding'],
                       conv['dilation'], conv['groups'], grid=grid)
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


def _mean_of_neighbours(weight, dim):
    """Interpolation half-way between neighbouring cells along dim: S cells -> S-1."""
    size = weight.shape[dim]
    return (weight.narrow(dim, 0, size - 1) + weight.narrow(dim, 1, size - 1)) / 2


@pytest.mark.parametrize('grid', GRIDS)
def test_larger_scope_at_zero_offsets_samples_scope_grid(grid):
    """S = 4 > K = 3, zero offsets: centred taps at 0.5, 1.5, 2.5 average neighbouring cells;
    spread taps at 0, 1.5, 3 keep the border cells and average the two middle ones."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 6, 6, generator=gen, dtype=DT)
    weight = torch.randn(2, 3, 4, 4, generator=gen, dtype=DT)
    if grid == 'centred':
        kernel = _mean_of_neighbours(_mean_of_neighbours(weight, 2), 3)
    else:
        rows = torch.cat([weight[:, :, :1], _mean_of_neighbours(weight[:, :, 1:3], 2), weight[:, :, 3:]], 2)
        kernel = torch.cat([rows[..., :1], _mean_of_neighbours(rows[..., 1:3], 3), rows[..., 3:]], 3)
    ref = F.conv2d(x, kernel, padding=1)
    chosen = {} if grid == 'centred' else dict(grid=grid)  # centred is the default
    out = deformable_kernel_local(x, weight, torch.zeros(1, 18, 6, 6, dtype=DT), 3, padding=1, **chosen)
    torch.testing.assert_close(out, ref)
    out = deformable_kernel_global(x, weight, torch.zeros(1, 18, dtype=DT), 3, padding=1, **chosen)
    torch.testing.assert_close(out, ref)


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
        assert abs(grad[0, channel, 2, 2].item()) > 1e-3  # else the comparison below proves nothing
        assert grad[0, channel, 2, 2].item() == pytest.approx(one_sided.item(), rel=1e-4)
        outward = (loss(offset - step) - loss(offset)).item()
        assert outward == 0.0  # beyond the border the tap does not move


def make_dcn_case(size, seed, grid='centred', n=1):
    """x (N, 4, H, W), scope weights (4, 2, 4, 4) (groups 2), local and global kernel offsets,
    data offsets with 2 deform groups; 3x3 kernel, padding 1."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, *size, generator=gen, dtype=DT)
    weight = torch.randn(4, 2, 4, 4, generator=gen, dtype=DT)
    kernel_local = clean_kernel_offsets((n, 18) + size, 3, 4, gen, grid)
    kernel_global = clean_kernel_offsets((n, 18), 3, 4, gen, grid)
    data = clean_data_offsets((n, 2 * 2 * 9) + size, gen)
    return x, weight, kernel_local, kernel_global, data


DCN_CONV = dict(kernel_size=3, stride=1, padding=1, dilation=1, groups=2)


@pytest.mark.parametrize('grid', GRIDS)
@pytest.mark.parametrize('local', [True, False], ids=['local', 'global'])
def test_dcn_dk_matches_reference(local, grid):
    x, weight, kernel_local, kernel_global, data = make_dcn_case((4, 5), seed=5, grid=grid)
    op = deformable_kernel_local if local else deformable_kernel_global
    inputs = [t.requires_grad_() for t in (x, weight, kernel_local if local else kernel_global, data)]
    out = op(*inputs[:3], data_offset=inputs[3], grid=grid, **DCN_CONV)
    ref = reference_dk(*inputs[:3], 3, 1, 1, 1, 2, data_offset=inputs[3], grid=grid)
    torch.testing.assert_close(out, ref)
    for got, want, name in zip(_grads(out, inputs), _grads(ref, inputs),
                               ('x', 'weight', 'kernel_offset', 'data_offset')):
        torch.testing.assert_close(got, want, msg=lambda m: f'grad {name}: {m}')


@pytest.mark.parametrize('local', [True, False], ids=['local', 'global'])
def test_dcn_dk_gradcheck(local):
    x, weight, kernel_local, kernel_global, data = make_dcn_case((3, 3), seed=6)
    op = deformable_kernel_local if local else deformable_kernel_global

    def fn(x, weight, kernel_offset, data_offset):
        return op(x, weight, kernel_offset, data_offset=data_offset, **DCN_CONV)

    inputs = [t.requires_grad_() for t in (x, weight, kernel_local if local else kernel_global, data)]
    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize('stride', [1, 2])
def test_dcn_dk_chunked_equals_unchunked(stride):
    """Chunks re-sample their rows with shifted dy offsets; any chunking gives the same result."""
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
    x, weight, offset, conv = make_case((3, 4, 2, 1, 1, 1, 3, 4), True, n=2)
    zeros = torch.zeros(2, 18, *offset.shape[2:], dtype=DT)
    torch.testing.assert_close(deformable_kernel_local(x, weight, offset, data_offset=zeros, **conv),
                               deformable_kernel_local(x, weight, offset, **conv))


# ----------------------------------------------------------------------------- torchvision-style cases
# (op, kernel_offset shape, data offsets?) for a (N, 4, 5, 6) input, 3x3 kernel, padding 1, groups 2
OPS = [pytest.param(deformable_kernel_local, True, False, id='local'),
       pytest.param(deformable_kernel_global, False, False, id='global'),
       pytest.param(deformable_kernel_local, True, True, id='dcn-local'),
       pytest.param(deformable_kernel_global, False, True, id='dcn-global')]


def make_op_inputs(local, deform_data, n=2, dtype=DT, device='cpu'):
    x, weight, kernel_local, kernel_global, data = make_dcn_case((5, 6), seed=11, n=n)
    inputs = dict(x=x, weight=weight, kernel_offset=kernel_local if local else kernel_global)
    if deform_data:
        inputs['data_offset'] = data
    return {k: v.to(device, dtype).requires_grad_() for k, v in inputs.items()}


@pytest.mark.parametrize('op,local,deform_data', OPS)
def test_batch_size_zero(op, local, deform_data):
    inputs = make_op_inputs(local, deform_data, n=0)
    bias = torch.randn(4, dtype=DT, requires_grad=True)
    out = op(**inputs, bias=bias, **DCN_CONV)
    assert out.shape == (0, 4, 5, 6)
    leaves = list(inputs.values()) + [bias]
    grads = torch.autograd.grad(out.sum(), leaves, allow_unused=True)
    for leaf, grad in zip(leaves, grads):
        assert grad is None or (grad.shape == leaf.shape and not grad.any())
    assert grads[0].shape == (0, 4, 5, 6) and torch.equal(grads[1], torch.zeros_like(inputs['weight']))


@pytest.mark.parametrize('layout', LAYOUTS[1:])
@pytest.mark.parametrize('op,local,deform_data', OPS)
def test_memory_layouts_give_the_same_result(op, local, deform_data, layout):
    inputs = make_op_inputs(local, deform_data)
    extra = dict(chunk_size=7) if local else {}
    out = op(**inputs, **DCN_CONV, **extra)
    grads = _grads(out, list(inputs.values()))
    moved = {k: relayout(v, layout) if v.dim() == 4 else v for k, v in inputs.items()}
    out_moved = op(**moved, **DCN_CONV, **extra)
    torch.testing.assert_close(out_moved, out)
    for name, a, b in zip(inputs, _grads(out_moved, list(moved.values())), grads):
        torch.testing.assert_close(a, b, msg=lambda m: f'grad {name}: {m}')


@pytest.mark.parametrize('device,dtype', AUTOCAST)
@pytest.mark.parametrize('op,local,deform_data', OPS)
def test_autocast_matches_float32(op, local, deform_data, device, dtype):
    """The same float32 inputs inside autocast: output in autocast's dtype, values and gradients
    within AUTOCAST_RTOL of float32."""
    inputs = make_op_inputs(local, deform_data, dtype=torch.float32, device=device)
    bias = torch.randn(4, device=device, requires_grad=True)
    leaves = list(inputs.values()) + [bias]
    out = op(**inputs, bias=bias, **DCN_CONV)
    cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(device)
    expected = torch.autograd.grad(out, leaves, cot)
    with torch.autocast(device, dtype=dtype):
        low = op(**inputs, bias=bias, **DCN_CONV)
    assert low.dtype == dtype
    assert relative_error(low, out) < AUTOCAST_RTOL
    for name, a, b in zip(list(inputs) + ['bias'], torch.autograd.grad(low, leaves, cot.to(dtype)), expected):
        assert a.dtype == torch.float32, name
        assert relative_error(a, b) < AUTOCAST_RTOL, name


@needs_cuda
@pytest.mark.parametrize('op,local,deform_data', OPS)
def test_cuda_matches_cpu(op, local, deform_data):
    inputs = make_op_inputs(local, deform_data)
    out = op(**inputs, **DCN_CONV)
    expected = _grads(out, list(inputs.values()))
    cuda = {k: v.detach().cuda().requires_grad_() for k, v in inputs.items()}
    out_cuda = op(**cuda, **DCN_CONV)
    torch.testing.assert_close(out_cuda.cpu(), out)
    cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=DT).cuda()
    for name, a, b in zip(inputs, torch.autograd.grad(out_cuda, list(cuda.values()), cot), expected):
        torch.testing.assert_close(a.cpu(), b, msg=lambda m: f'grad {name}: {m}')


# ----------------------------------------------------------------------------- chunks per device
C3_AT_800X1333 = dict(in_channels=128, kernel_size=3, scope=4, locations=100 * 168)


@pytest.fixture
def chunk_sizes(monkeypatch):
    """The chunk_size every LocalDK call gets, in order."""
    sizes = []
    real = dk_ops.LocalDK

    class Recording:
        @staticmethod
        def apply(*args):
            sizes.append(args[-1])
            return real.apply(*args)

    monkeypatch.setattr(dk_ops, 'LocalDK', Recording)
    return sizes


@pytest.mark.parametrize('deform_data', [False, True], ids=['local', 'dcn-local'])
def test_cpu_keeps_cache_sized_chunks(chunk_sizes, deform_data):
    """On CPU the default chunk is default_chunk_size's, whatever the device's memory."""
    inputs = make_op_inputs(True, deform_data)
    deformable_kernel_local(**inputs, **DCN_CONV)
    assert chunk_sizes == [dk_ops.default_chunk_size(4, 3, 4)]


def test_cuda_chunks_are_whole_images_where_they_fit():
    """c3 of an 800x1333 image: CPU-sized chunks are 7 rows (15 chunks a pass per image); on
    any GPU of 16 GB or more a float16 image is one chunk, on smaller ones the chunks shrink to
    fit and never below one location."""
    assert dk_ops.default_chunk_size(128, 3, 4) // 168 == 7
    gib = 2 ** 30
    for memory, deform_groups in ((16 * gib, 0), (141 * gib, 0), (16 * gib, 1)):
        assert dk_ops.cuda_chunk_size(**C3_AT_800X1333, element_size=2, deform_groups=deform_groups,
                                      total_memory=memory) == 100 * 168
    small = dk_ops.cuda_chunk_size(**C3_AT_800X1333, element_size=4, total_memory=4 * gib)
    assert 168 <= small < 100 * 168
    assert dk_ops.cuda_chunk_size(**C3_AT_800X1333, element_size=4, total_memory=1) == 1


@needs_cuda
@pytest.mark.parametrize('deform_data', [False, True], ids=['local', 'dcn-local'])
def test_cuda_local_dk_never_waits_for_the_device(chunk_sizes, deform_data):
    """Forward and backward of local DK (and DCN + DK) on a c3-sized map with no host-device
    synchronisation at all (a blocking copy or a read of a device value raises), one chunk per
    image."""
    gen = torch.Generator().manual_seed(3)
    n, c, h, w = 2, 128, 100, 168
    x = torch.randn(n, c, h, w, generator=gen).cuda().requires_grad_()
    weight = (torch.randn(c, c, 4, 4, generator=gen) * 0.02).cuda().requires_grad_()
    kernel = (torch.rand(n, 18, h, w, generator=gen) - 0.5).cuda().requires_grad_()
    data = (torch.rand(n, 18, h, w, generator=gen) * 2 - 1).cuda().requires_grad_() if deform_data else None
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        out = deformable_kernel_local(x, weight, kernel, 3, 1, 1, data_offset=data)
        out.backward(torch.ones_like(out))
    finally:
        torch.cuda.set_sync_debug_mode('default')
    assert chunk_sizes == [h * w]
    assert torch.isfinite(x.grad).all() and torch.isfinite(kernel.grad).all()


X, OFFSETS = torch.zeros(1, 4, 6, 6), torch.zeros(1, 18, 6, 6)


@pytest.mark.parametrize('args,kwargs,message', [
    ((torch.zeros(4, 6, 6), torch.zeros(4, 4, 3, 3), OFFSETS), {}, r'x must be \(N, C, H, W\), got shape \(4, 6, 6\)'),
    ((X, torch.zeros(4, 4, 9), OFFSETS), {}, r'weight must be \(O, C/groups, Sh, Sw\), got shape \(4, 4, 9\)'),
    ((X, torch.zeros(4, 4, 2, 2), OFFSETS), {}, 'scope 2x2 is smaller than the kernel 3x3'),
    ((X, torch.zeros(4, 1, 3, 3), OFFSETS), dict(groups=3), r'must be divisible by groups \(3\)'),
    ((X, torch.zeros(4, 2, 3, 3), OFFSETS), {}, 'weight has 2 input channels per group; x has 4 channels'),
    ((torch.zeros(1, 4, 1, 1), torch.zeros(4, 4, 3, 3), OFFSETS), dict(padding=0),
     'input 1x1 is too small for kernel 3x3'),
    ((X, torch.zeros(4, 4, 3, 3), torch.zeros(1, 18, 5, 5)), {},
     r'local \(N, 2\*Kh\*Kw, Ho, Wo\) kernel_offset must have shape \(1, 18, 6, 6\)'),
    ((X, torch.zeros(4, 4, 3, 3), OFFSETS), dict(data_offset=torch.zeros(1, 17, 6, 6)),
     r'data_offset must have shape \(N, 2\*deform_groups\*9, 6, 6\)'),
    ((X, torch.zeros(4, 4, 4, 4), OFFSETS), dict(grid='even'),
     r"grid must be one of \('centred', 'spread'\), got 'even'"),
    ((X, torch.zeros(4, 4, 3, 3, dtype=DT), OFFSETS), {},
     'weight has dtype torch.float64 but the input has torch.float32'),
])
def test_local_errors_name_the_problem(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        deformable_kernel_local(*args, 3, **{'padding': 1, **kwargs})


def test_global_errors_name_the_problem():
    with pytest.raises(ValueError, match=r'global \(N, 2\*Kh\*Kw\) kernel_offset must have shape \(1, 18\)'):
        deformable_kernel_global(X, torch.zeros(4, 4, 3, 3), torch.zeros(1, 9), 3, padding=1)
    with pytest.raises(ValueError, match=r'data_offset must have shape .* got \(2, 18, 6, 6\)'):
        deformable_kernel_global(X, torch.zeros(4, 4, 3, 3), torch.zeros(1, 18), 3, padding=1,
                                 data_offset=torch.zeros(2, 18, 6, 6))
