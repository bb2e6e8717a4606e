"""deform_viz.ops.deform_conv against a slow obvious reference, gradcheck and mmcv's CPU ops."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from mmcv import ops as mmcv_ops
from ops.helpers import AUTOCAST, AUTOCAST_RTOL, LAYOUTS, needs_cuda, relative_error, relayout

from deform_viz.ops import deform_conv
from deform_viz.ops.deform_conv import deform_conv2d_torch, deform_sample

pytestmark = pytest.mark.usefixtures('single_thread')


# --------------------------------------------------------------------------- slow reference
def bilinear_reference(image, y, x):
    """mmcv's bilinear sample of ``image`` (C, H, W) at scalar tensors (y, x): (C,)."""
    channels, height, width = image.shape
    if y.item() <= -1 or y.item() >= height or x.item() <= -1 or x.item() >= width:
        return image.new_zeros(channels) * (y + x)  # zero, still attached to the graph
    y_low, x_low = math.floor(y.item()), math.floor(x.item())
    ly, lx = y - y_low, x - x_low
    value = image.new_zeros(channels)
    for cy, wy in ((y_low, 1 - ly), (y_low + 1, ly)):
        for cx, wx in ((x_low, 1 - lx), (x_low + 1, lx)):
            if 0 <= cy < height and 0 <= cx < width:  # corners outside the map count as 0
                value = value + wy * wx * image[:, cy, cx]
    return value


def deform_conv_reference(x, offset, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
                          mask=None):
    """Loops over images, output locations, deform groups and taps; one GEMV per location and group."""
    n, c, h, w = x.shape
    cout, cin_g, kh, kw = weight.shape
    ho, wo = offset.shape[2:]
    dgroups = offset.shape[1] // (2 * kh * kw)
    cg = c // dgroups
    out = x.new_zeros(n, cout, ho, wo)
    for b, oy, ox in itertools.product(range(n), range(ho), range(wo)):
        samples = []  # (dgroups * kh * kw) vectors of cg channels
        for g, i, j in itertools.product(range(dgroups), range(kh), range(kw)):
            tap = (g * kh + i) * kw + j
            y = oy * stride - padding + i * dilation + offset[b, 2 * tap, oy, ox]
            xx = ox * stride - padding + j * dilation + offset[b, 2 * tap + 1, oy, ox]
            value = bilinear_reference(x[b, g * cg:(g + 1) * cg], y, xx)
            samples.append(value if mask is None else value * mask[b, tap, oy, ox])
        columns = torch.stack(samples).view(dgroups, kh, kw, cg).permute(0, 3, 1, 2).reshape(c, kh, kw)
        outs = cout // groups
        for gr in range(groups):
            kernel = weight[gr * outs:(gr + 1) * outs].reshape(outs, -1)
            out[b, gr * outs:(gr + 1) * outs, oy, ox] = kernel @ columns[gr * cin_g:(gr + 1) * cin_g].reshape(-1)
    if bias is not None:
        out = out + bias[:, None, None]
    return out


def make_inputs(n=1, c=4, h=5, w=6, cout=4, k=3, stride=1, padding=1, dilation=1, groups=1,
                dgroups=1, modulated=False, bias=False, spread=1.5, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ho = (h + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    wo = (w + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    args = dict(
        x=torch.randn(n, c, h, w, generator=gen, dtype=dtype),
        offset=torch.randn(n, 2 * dgroups * k * k, ho, wo, generator=gen, dtype=dtype) * spread,
        weight=torch.randn(cout, c // groups, k, k, generator=gen, dtype=dtype),
        bias=torch.randn(cout, generator=gen, dtype=dtype) if bias else None,
        mask=torch.rand(n, dgroups * k * k, ho, wo, generator=gen, dtype=dtype) if modulated else None)
    conf = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    return {k: v.requires_grad_() for k, v in args.items() if v is not None}, conf


CASES = [
    dict(k=1, padding=0),
    dict(k=3),
    dict(k=3, stride=2, dilation=2, padding=2),
    dict(k=5, padding=2, h=6, w=5),
    dict(k=3, dgroups=2, modulated=True, bias=True),
    dict(k=3, groups=2, dgroups=2, cout=6),
    dict(k=3, groups=2, dgroups=1, stride=2, modulated=True, n=2),
    dict(k=3, spread=6.0, modulated=True),  # many samples leave the map
]


def ids(case):
    return '-'.join(f'{k}{v}' for k, v in case.items())


@pytest.mark.parametrize('case', CASES, ids=ids)
def test_matches_slow_reference_values_and_gradients(case):
    inputs, conf = make_inputs(**case)
    out = deform_conv2d_torch(**inputs, **conf)
    ref = deform_conv_reference(**inputs, **conf)
    torch.testing.assert_close(out, ref)
    grad = torch.randn_like(out)
    names = list(inputs)
    ours = torch.autograd.grad(out, [inputs[k] for k in names], grad)
    theirs = torch.autograd.grad(ref, [inputs[k] for k in names], grad)
    for name, a, b in zip(names, ours, theirs):
        torch.testing.assert_close(a, b, msg=lambda m: f'gradient of {name}: {m}')


@pytest.mark.parametrize('case', CASES, ids=ids)
def test_gradcheck(case):
    wide = max(case.get('groups', 1), case.get('dgroups', 1)) > 1
    inputs, conf = make_inputs(**{**case, 'c': 4 if wide else 2, 'cout': 2 * case.get('groups', 1),
                                  'h': 3, 'w': 4})
    names = list(inputs)

    def fn(*tensors):
        return deform_conv2d_torch(**dict(zip(names, tensors)), **conf)
    assert torch.autograd.gradcheck(fn, tuple(inputs[k] for k in names))


def test_deform_sample_gradcheck_and_layout():
    inputs, conf = make_inputs(c=4, dgroups=2, modulated=True, h=4, w=5, stride=2)
    x, offset, mask = inputs['x'], inputs['offset'], inputs['mask']
    cols = deform_sample(x, offset, 3, stride=2, padding=1, mask=mask)
    assert cols.shape == (1, 4, 9, *offset.shape[2:])
    # channels-last memory: the documented permute is free
    assert cols.permute(0, 3, 4, 2, 1).is_contiguous()
    # one tap of one location, checked by hand
    y = 0 * 2 - 1 + 1 + offset[0, 2 * 4, 0, 0]  # group 0, tap 4 (centre), location (0, 0)
    xx = 0 * 2 - 1 + 1 + offset[0, 2 * 4 + 1, 0, 0]
    expected = bilinear_reference(x[0, :2], y, xx) * mask[0, 4, 0, 0]
    torch.testing.assert_close(cols[0, :2, 4, 0, 0], expected)
    assert torch.autograd.gradcheck(
        lambda a, b, m: deform_sample(a, b, 3, stride=2, padding=1, mask=m), (x, offset, mask))


def test_chunked_columns_give_the_same_result(monkeypatch):
    inputs, conf = make_inputs(n=2, c=4, h=6, w=7, modulated=True, bias=True, dgroups=2, groups=2)
    out = deform_conv2d_torch(**inputs, **conf)
    grads = torch.autograd.grad(out.square().sum(), list(inputs.values()))
    monkeypatch.setattr(deform_conv, 'COLUMN_CHUNK_ELEMENTS', 4 * 9 * 5)  # 5 locations per chunk
    out_chunked = deform_conv2d_torch(**inputs, **conf)
    grads_chunked = torch.autograd.grad(out_chunked.square().sum(), list(inputs.values()))
    torch.testing.assert_close(out_chunked, out)
    for a, b in zip(grads_chunked, grads):
        torch.testing.assert_close(a, b)


def test_zero_offsets_equal_conv2d():
    inputs, conf = make_inputs(c=4, cout=6, groups=2, stride=2, dilation=2, padding=2, bias=True,
                               dtype=torch.float32, h=9, w=8)
    inputs['offset'] = torch.zeros_like(inputs['offset'])
    out = deform_conv2d_torch(**inputs, **conf)
    ref = F.conv2d(inputs['x'], inputs['weight'], inputs['bias'], **conf)
    torch.testing.assert_close(out, ref)


def test_integer_constant_offset_equals_conv_of_shifted_input():
    inputs, conf = make_inputs(c=3, cout=5, h=8, w=9, dtype=torch.float32)
    dy, dx = 2, -1
    offset = torch.zeros_like(inputs['offset'])
    offset[:, 0::2], offset[:, 1::2] = dy, dx
    out = deform_conv2d_torch(inputs['x'], offset, inputs['weight'], **conf)
    # out[y, x] = sum_ij w[i, j] * x[y - 1 + i + dy, x - 1 + j + dx], zero outside the map:
    # a plain convolution of a generously padded input, cropped with the shift
    pad = 4
    full = F.conv2d(F.pad(inputs['x'], (pad,) * 4), inputs['weight'])
    top, left = pad - 1 + dy, pad - 1 + dx
    torch.testing.assert_close(out, full[:, :, top:top + out.shape[2], left:left + out.shape[3]])


X, OFFSET, WEIGHT = (1, 4, 5, 5), (1, 18, 5, 5), (4, 4, 3, 3)  # shapes; padding 1 unless given


@pytest.mark.parametrize('shapes,kwargs,message', [
    (((1, 4, 5), OFFSET, WEIGHT), {}, r'expected 4-d input and offset \(N, C, H, W\), got \(1, 4, 5\)'),
    ((X, (1, 17, 5, 5), WEIGHT), {}, r'offset has 17 channels; a 3x3 kernel needs 2\*deform_groups\*9'),
    ((X, (1, 54, 5, 5), WEIGHT), {}, r'input channels \(4\) not divisible by deform_groups \(3'),
    (((1, 4, 2, 5), (1, 18, 1, 3), WEIGHT), dict(padding=0),
     r'input \(2, 5\) is too small for kernel \(3, 3\)'),
    ((X, (1, 18, 3, 3), WEIGHT), {}, r'offset must be \(N=1, 18, 5, 5\), got \(1, 18, 3, 3\)'),
    ((X, (2, 18, 5, 5), WEIGHT), {}, r'offset must be \(N=1, 18, 5, 5\), got \(2, 18, 5, 5\)'),
    ((X, OFFSET, WEIGHT), dict(mask=torch.ones(1, 18, 5, 5)),
     r'mask must be \(N, deform_groups\*K\*K, Ho, Wo\) = \(1, 9, 5, 5\), got \(1, 18, 5, 5\)'),
    ((X, OFFSET, (4, 4, 9)), {}, r'weight must be \(Cout, C/groups, Kh, Kw\), got \(4, 4, 9\)'),
    ((X, OFFSET, WEIGHT), dict(groups=3), r'weight \(4, 4, 3, 3\) does not fit input channels 4 with groups=3'),
    ((X, OFFSET, WEIGHT), dict(bias=torch.zeros(3)), r'bias must be \(4,\), got \(3,\)'),
    ((X, OFFSET, WEIGHT), dict(bias=torch.zeros(4, dtype=torch.float64)),
     'bias has dtype torch.float64 but the input has torch.float32; give them one dtype or run under torch.autocast'),
    ((X, OFFSET, WEIGHT), dict(stride=(1, 1, 1)), r'stride must be an int or a pair of ints, got \(1, 1, 1\)'),
])
def test_errors_name_the_problem(shapes, kwargs, message):
    x, offset, weight = (torch.zeros(shape) for shape in shapes)
    with pytest.raises(ValueError, match=message):
        deform_conv2d_torch(x, offset, weight, **{'padding': 1, **kwargs})


@pytest.mark.parametrize('modulated', [False, True], ids=['dcn', 'dcnv2'])
def test_batch_size_zero(modulated):
    inputs, conf = make_inputs(n=0, c=4, cout=6, groups=2, dgroups=2, modulated=modulated, bias=True)
    out = deform_conv2d_torch(**inputs, **conf)
    assert out.shape == (0, 6, 5, 6)
    grads = dict(zip(inputs, torch.autograd.grad(out.sum(), list(inputs.values()))))
    for name, grad in grads.items():
        assert grad.shape == inputs[name].shape and not grad.any(), name
    cols = deform_sample(inputs['x'], inputs['offset'], 3, padding=1)
    assert cols.shape == (0, 4, 9, 5, 6)


@pytest.mark.parametrize('layout', LAYOUTS[1:])
def test_memory_layouts_give_the_same_result(layout):
    inputs, conf = make_inputs(n=2, c=4, cout=6, groups=2, dgroups=2, modulated=True, bias=True)
    out = deform_conv2d_torch(**inputs, **conf)
    grads = torch.autograd.grad(out.square().sum(), list(inputs.values()))
    moved = {k: relayout(v, layout) if v.dim() == 4 else v for k, v in inputs.items()}
    out_moved = deform_conv2d_torch(**moved, **conf)
    torch.testing.assert_close(out_moved, out)
    for name, a, b in zip(inputs, torch.autograd.grad(out_moved.square().sum(), list(moved.values())), grads):
        torch.testing.assert_close(a, b, msg=lambda m: f'gradient of {name}: {m}')
    cols = deform_sample(moved['x'], moved['offset'], 3, padding=1, mask=moved['mask'])
    torch.testing.assert_close(cols, deform_sample(inputs['x'], inputs['offset'], 3, padding=1,
                                                   mask=inputs['mask']))


@pytest.mark.parametrize('device,dtype', AUTOCAST)
@pytest.mark.parametrize('case', [dict(), dict(modulated=True, bias=True, dgroups=2, groups=2, cout=8)],
                         ids=['dcn', 'dcnv2-grouped'])
def test_autocast_matches_float32(case, device, dtype):
    """The same float32 inputs inside autocast: output in autocast's dtype, values and gradients
    within AUTOCAST_RTOL of float32 (the weights stay float32 parameters, as under AMP)."""
    inputs, conf = make_inputs(n=2, c=8, h=9, w=10, dtype=torch.float32, **{'cout': 8, **case})
    inputs = {k: v.detach().to(device).requires_grad_() for k, v in inputs.items()}
    out = deform_conv2d_torch(**inputs, **conf)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(3)).to(device)
    expected = torch.autograd.grad(out, list(inputs.values()), grad)
    with torch.autocast(device, dtype=dtype):
        low = deform_conv2d_torch(**inputs, **conf)
    assert low.dtype == dtype
    assert relative_error(low, out) < AUTOCAST_RTOL
    for name, a, b in zip(inputs, torch.autograd.grad(low, list(inputs.values()), grad.to(dtype)), expected):
        assert a.dtype == torch.float32, name
        assert relative_error(a, b) < AUTOCAST_RTOL, name
    with torch.autocast(device, dtype=dtype):
        cols = deform_sample(inputs['x'], inputs['offset'], 3, padding=1, mask=inputs.get('mask'))
    assert cols.dtype == dtype
    assert relative_error(cols, deform_sample(inputs['x'], inputs['offset'], 3, padding=1,
                                              mask=inputs.get('mask'))) < AUTOCAST_RTOL


@pytest.mark.parametrize('device,dtype', AUTOCAST)
def test_autocast_keeps_sampling_positions_in_float32(device, dtype):
    """Row 300 + 0.3 of a map whose rows alternate 0 and 1: 0.3 of the way from a 0 row to a 1
    row. In half precision the position itself would round to 300 (bfloat16 steps by 2 there,
    float16 by 0.25) and the sample would read 0 (bfloat16) or 0.25 (float16)."""
    h = 400
    x = (torch.arange(h) % 2).float().view(1, 1, h, 1).expand(1, 1, h, 3).contiguous().to(device)
    offset = torch.zeros(1, 2, h, 3, device=device, dtype=dtype)  # as conv_offset gives them under AMP
    offset[:, 0] = 0.3
    with torch.autocast(device, dtype=dtype):
        cols = deform_sample(x, offset, 1)
    torch.testing.assert_close(cols[0, 0, 0, 300].float(), torch.full((3,), 0.3, device=device),
                               rtol=0, atol=2e-3)
    torch.testing.assert_close(cols[0, 0, 0, 301].float(), torch.full((3,), 0.7, device=device),
                               rtol=0, atol=4e-3)


@needs_cuda
@pytest.mark.parametrize('case', CASES, ids=ids)
def test_cuda_matches_cpu(case):
    inputs, conf = make_inputs(**case)
    out = deform_conv2d_torch(**inputs, **conf)
    grad = torch.randn_like(out)
    expected = torch.autograd.grad(out, list(inputs.values()), grad)
    cuda = {k: v.detach().cuda().requires_grad_() for k, v in inputs.items()}
    out_cuda = deform_conv2d_torch(**cuda, **conf)
    torch.testing.assert_close(out_cuda.cpu(), out)
    for name, a, b in zip(inputs, torch.autograd.grad(out_cuda, list(cuda.values()), grad.cuda()), expected):
        torch.testing.assert_close(a.cpu(), b, msg=lambda m: f'gradient of {name}: {m}')


# --------------------------------------------------------------------------- mmcv equality
MMCV_CASES = [
    dict(c=8, cout=8, h=9, w=11),
    dict(c=8, cout=4, h=9, w=11, stride=2, dilation=2, padding=2, dgroups=2, spread=4.0),
    dict(c=8, cout=8, h=7, w=8, groups=2, dgroups=2, n=2),
    dict(c=6, cout=6, h=7, w=8, k=5, padding=2, spread=3.0),
]


@pytest.mark.parametrize('modulated', [False, True], ids=['dcn', 'dcnv2'])
@pytest.mark.parametrize('case', MMCV_CASES, ids=ids)
def test_matches_mmcv_cpu_op(case, modulated):
    inputs, conf = make_inputs(**case, modulated=modulated, bias=modulated, dtype=torch.float32)
    names = list(inputs)
    out = deform_conv2d_torch(**inputs, **conf)
    stride, padding, dilation, groups = conf['stride'], conf['padding'], conf['dilation'], conf['groups']
    dgroups = case.get('dgroups', 1)
    if modulated:
        ref = mmcv_ops.modulated_deform_conv2d(inputs['x'], inputs['offset'], inputs['mask'], inputs['weight'],
                                               inputs['bias'], stride, padding, dilation, groups, dgroups)
    else:
        ref = mmcv_ops.deform_conv2d(inputs['x'], inputs['offset'], inputs['weight'], stride, padding,
                                     dilation, groups, dgroups)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    grad = torch.randn_like(out)
    ours = torch.autograd.grad(out, [inputs[k] for k in names], grad)
    theirs = torch.autograd.grad(ref, [inputs[k] for k in names], grad)
    for name, a, b in zip(names, ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3, msg=lambda m: f'gradient of {name}: {m}')
