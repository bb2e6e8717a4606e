"""Every layer variant under autocast (CPU bfloat16, CUDA float16), on CUDA against CPU, and the
``backend='auto'`` routing of the DCN layers. CUDA cases skip where no GPU is present."""
import pytest
import torch
from mmcv.cnn import build_conv_layer
from ops.helpers import AUTOCAST, AUTOCAST_RTOL, needs_cuda, relative_error

from deform_viz.layers import DecomposedDCN, decomposed_dcn
from deform_viz.ops._sampling import bilinear_taps, gather_rows, input_rows
from deform_viz.ops.offset_fields import project_offsets

pytestmark = pytest.mark.usefixtures('single_thread')

LAYERS = {  # variant key -> conv layer config
    'dcn': dict(type='DecomposedDCN', deform_groups=2),
    'dcn-df': dict(type='DFOnlyDCN'),
    'dcn-dk': dict(type='DKOnlyDCN', groups=2),
    'dcnv2': dict(type='DecomposedDCN', modulated=True),
    'dcnv2-df': dict(type='DFOnlyDCN', modulated=True, deform_groups=2),
    'dcnv2-dk': dict(type='DKOnlyDCN', modulated=True),
    'dkernel-local-s4': dict(type='DeformableKernel', mode='local', scope=4),
    'dkernel-global-s4': dict(type='DeformableKernel', mode='global', scope=4, groups=2),
    'dcn-dkernel-local-s4': dict(type='DeformableKernel', mode='local', scope=4, deform_data=True),
    'dcn-dkernel-global-s4': dict(type='DeformableKernel', mode='global', scope=4, deform_data=True),
}

# Offsets whose full, d_f and d_k parts all keep >= 0.15 away from integers (bilinear kinks):
# d_f = 1.45, d_k = 0.3 (six taps) or -0.6 (three), plus integers summing to zero over the taps.
_D_K = torch.tensor([0.3] * 6 + [-0.6] * 3)
_WHOLE = torch.tensor([1., -1, 2, -2, 0, 0, 1, -1, 0])


def build(variant, backend=None):
    cfg = dict(LAYERS[variant])
    groups = cfg.pop('groups', 1)
    if backend is not None and not cfg['type'].startswith('Deformable'):
        cfg['backend'] = backend
    layer = build_conv_layer(cfg, 8, 8, kernel_size=3, stride=1, padding=1, dilation=1,
                             groups=groups, bias=True)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        layer.bias.copy_(torch.randn(8, generator=gen))
        for name in ('conv_offset', 'conv_data_offset'):
            predictor = getattr(layer, name, None)
            if predictor is None:
                continue
            # small weights: offsets vary by a few hundredths around the bias, never reaching a kink
            predictor.weight.copy_(torch.randn(predictor.weight.shape, generator=gen) * 0.003)
            if isinstance(layer, DecomposedDCN) or name == 'conv_data_offset':
                per_tap = torch.stack([1.45 + _D_K + _WHOLE, 1.45 + _D_K.flip(0) - _WHOLE], dim=1)
            else:  # kernel offsets: centred taps (0.5, 1.5, 2.5) moved by +-0.25, inside the scope
                per_tap = torch.tensor([[0.25, -0.25]]).expand(9, 2)
            offsets = per_tap.reshape(-1).repeat(predictor.bias.numel() // 18)
            predictor.bias.copy_(torch.cat([offsets, torch.zeros(predictor.bias.numel() - offsets.numel())]))
    return layer


def forward_backward(layer, x, cot):
    """Output and the gradients of x and of every parameter for the cotangent ``cot``."""
    x = x.detach().requires_grad_()
    out = layer(x)
    return [out] + list(torch.autograd.grad(out, [x] + list(layer.parameters()), cot.to(out.dtype)))


# the DCN layers on CUDA also through mmcv's op (backend='auto'), which casts to the offsets' dtype
AUTOCAST_CASES = [pytest.param(*case.values, 'torch', marks=case.marks, id=case.id) for case in AUTOCAST]
AUTOCAST_CASES.append(pytest.param('cuda', torch.float16, 'auto', marks=needs_cuda, id='cuda-fp16-auto'))
# mmcv's CPU kernels have no bfloat16: the mmcv path runs them in float32 under autocast
AUTOCAST_CASES.append(pytest.param('cpu', torch.bfloat16, 'mmcv', id='cpu-bf16-mmcv'))


@pytest.mark.parametrize('device,dtype,backend', AUTOCAST_CASES)
@pytest.mark.parametrize('variant', list(LAYERS))
def test_autocast_matches_float32(variant, device, dtype, backend):
    """As under AMP: float32 parameters, the layer (offset predictors included) under autocast.
    Output in autocast's dtype; output and every gradient within AUTOCAST_RTOL of float32."""
    layer = build(variant, backend=backend).to(device)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 8, 9, 10, generator=gen).to(device)
    cot = torch.randn(2, 8, 9, 10, generator=gen).to(device)
    expected = forward_backward(layer, x, cot)
    with torch.autocast(device, dtype=dtype):
        got = forward_backward(layer, x, cot)
    assert got[0].dtype == dtype
    names = ['output', 'x'] + [name for name, _ in layer.named_parameters()]
    for name, a, b in zip(names, got, expected):
        assert relative_error(a, b) < AUTOCAST_RTOL, name


@needs_cuda
@pytest.mark.parametrize('variant', list(LAYERS))
def test_cuda_matches_cpu(variant):
    """backend='auto': mmcv's CUDA op against the torch path on CPU (DK: the same op on both)."""
    layer = build(variant, backend='auto').double()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 8, 9, 10, generator=gen, dtype=torch.float64)
    cot = torch.randn(2, 8, 9, 10, generator=gen, dtype=torch.float64)
    expected = forward_backward(layer, x, cot)
    got = forward_backward(layer.cuda(), x.cuda(), cot.cuda())
    names = ['output', 'x'] + [name for name, _ in layer.named_parameters()]
    for name, a, b in zip(names, got, expected):
        torch.testing.assert_close(a.cpu(), b, msg=lambda m: f'{name}: {m}')


@pytest.fixture
def mmcv_calls(monkeypatch):
    """Names of the mmcv ops the DCN layers call, in order."""
    calls = []

    def recording(name, op):
        def call(*args, **kwargs):
            calls.append(name)
            return op(*args, **kwargs)
        return call

    for name in ('deform_conv2d', 'modulated_deform_conv2d'):
        monkeypatch.setattr(decomposed_dcn, name, recording(name, getattr(decomposed_dcn, name)))
    return calls


@pytest.mark.parametrize('modulated', [False, True], ids=['dcn', 'dcnv2'])
def test_auto_backend_runs_the_torch_path_on_cpu(modulated, mmcv_calls):
    layer = build('dcnv2' if modulated else 'dcn', backend='auto')
    x = torch.randn(1, 8, 5, 5)
    assert not layer.uses_mmcv(x)
    layer(x)
    assert mmcv_calls == []
    layer.backend = 'mmcv'
    layer(x)
    assert mmcv_calls == ['modulated_deform_conv2d' if modulated else 'deform_conv2d']
    assert not layer.uses_mmcv(x[:0])  # mmcv refuses an empty batch


@needs_cuda
@pytest.mark.parametrize('modulated', [False, True], ids=['dcn', 'dcnv2'])
def test_auto_backend_runs_mmcv_on_cuda(modulated, mmcv_calls):
    layer = build('dcnv2' if modulated else 'dcn', backend='auto').cuda()
    x = torch.randn(1, 8, 5, 5, device='cuda')
    assert layer.uses_mmcv(x)
    layer(x)
    assert mmcv_calls == ['modulated_deform_conv2d' if modulated else 'deform_conv2d']
    layer.backend = 'torch'
    layer(x)
    assert len(mmcv_calls) == 1


@pytest.mark.parametrize('modulated', [False, True], ids=['dcn', 'dcnv2'])
def test_mmcv_path_keeps_half_precision_half(modulated):
    """mmcv's op returns its offsets' dtype and casts float32 parameters to it; the v1 path adds
    the bias itself, which must not promote a float16 output to float32. mmcv's CPU kernels take
    float16, so this runs the code a GPU runs: float16 input and offsets with float32 parameters
    (as autocast used to hand them over), and a layer in float16 (``.half()``)."""
    layer = build('dcnv2' if modulated else 'dcn', backend='mmcv')
    x = torch.randn(2, 8, 9, 10, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        offset, mask = layer.offsets(x)
        offset = project_offsets(offset, layer.kernel_size, layer.component)
        expected = layer._mmcv_op(x, offset, mask, layer.weight, layer.bias)
        got = layer._mmcv_op(x.half(), offset.half(), None if mask is None else mask.half(), layer.weight,
                             layer.bias)
        assert layer.bias.dtype == torch.float32 and got.dtype == torch.float16
        assert relative_error(got, expected) < AUTOCAST_RTOL
        assert layer.half()(x.half()).dtype == torch.float16


WIDE_MAP = (1, 8, 12, 336)  # as wide as the stride-2 c3 block's input at 800x1333


def output_with_positions_in(layer, x, dtype):
    """``layer(x)`` in float64 with every sampling position rounded to ``dtype`` first, as a
    kernel computing positions in that dtype (mmcv's, in float16 under autocast) would."""
    layer, x = layer.double(), x.double()
    offset, mask = layer.offsets(x)
    offset = project_offsets(offset, layer.kernel_size, layer.component)
    geometry = (x.shape[2:], layer.kernel_size, layer.stride, layer.padding, layer.dilation)
    index, weights = bilinear_taps(offset.to(dtype), None if mask is None else mask.to(dtype), *geometry)
    n, c, _, _ = x.shape
    ho, wo = offset.shape[2:]
    cols = gather_rows(index, input_rows(x, layer.deform_groups), weights.double())
    cols = cols.view(n, ho * wo, -1)  # (N, L, KK*C), taps major
    weight = layer.weight.permute(0, 2, 3, 1).reshape(layer.out_channels, -1)  # groups == 1 here
    out = (cols @ weight.t()).view(n, ho, wo, -1).permute(0, 3, 1, 2)
    return out + layer.bias.view(1, -1, 1, 1)


@pytest.mark.parametrize('variant', ['dcn', 'dcn-df', 'dcnv2-dk'])
def test_float16_positions_cost_wide_maps_more_than_float16_values(variant):
    """The measurement behind the mmcv path's float32 geometry (docs/layers.md): sub-pixel
    offsets on a map 336 wide. float16 positions (1/4 px steps at x >= 256, 1/8 px from 128)
    move the output far more than rounding every value to float16 does."""
    layer = build(variant, backend='torch')
    x = torch.randn(WIDE_MAP, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    exact = output_with_positions_in(layer, x, torch.float64)
    torch.testing.assert_close(exact, layer(x))  # the emulation is the layer
    half_positions = relative_error(output_with_positions_in(layer, x, torch.float16), exact)
    with torch.autocast('cpu', dtype=torch.bfloat16):  # values in bfloat16, positions float32
        half_values = relative_error(layer.float()(x.float()), exact)
    # float16 values round 8x finer than bfloat16's
    assert half_positions > 4 * half_values / 8 and half_positions > 0.005, (half_positions, half_values)
    layer.backend = 'mmcv'  # mmcv's kernel given float16 computes its positions in float16: the same error
    mmcv_half = relative_error(layer.half()(x.half()), exact)
    assert mmcv_half == pytest.approx(half_positions, rel=0.2)
    print(f'{variant}: float16 positions {half_positions:.4f}, mmcv in float16 {mmcv_half:.4f}, '
          f'bfloat16 values {half_values:.4f}')


@needs_cuda
@pytest.mark.parametrize('variant', ['dcn', 'dcn-df', 'dcnv2-dk'])
def test_cuda_mmcv_path_samples_wide_maps_in_float32_under_autocast(variant):
    """backend='auto' under float16 autocast on the wide map: the output is float16 and as close
    to float64 as float16 values allow, a quarter of what float16 positions would cost."""
    layer = build(variant, backend='auto')
    x = torch.randn(WIDE_MAP, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    exact = output_with_positions_in(layer, x, torch.float64)
    half_positions = relative_error(output_with_positions_in(layer, x, torch.float16), exact)
    layer = layer.float().cuda()
    with torch.autocast('cuda', dtype=torch.float16):
        assert layer.uses_mmcv(x.cuda())
        got = layer(x.float().cuda())
    assert got.dtype == torch.float16
    assert relative_error(got, exact) < half_positions / 4
