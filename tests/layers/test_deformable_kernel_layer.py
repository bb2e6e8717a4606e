"""DeformableKernel layer: registry, initial equivalence to nn.Conv2d, init_weights, mmdet ResNet, errors."""
import pytest
import torch
import torch.nn.functional as F
from mmcv.cnn import build_conv_layer
from mmengine.registry import MODELS
from ops.helpers import LAYOUTS, check_layouts_and_empty_batch
from torch import nn

from deform_viz.layers import DeformableKernel

pytestmark = pytest.mark.usefixtures('single_thread')


def build(**kwargs):
    cfg = dict(type='DeformableKernel')
    cfg.update(kwargs.pop('cfg', {}))
    args = dict(kernel_size=3, stride=1, padding=1, dilation=1, bias=False)
    args.update(kwargs)
    return build_conv_layer(cfg, args.pop('in_channels', 8), args.pop('out_channels', 8), **args)


@pytest.mark.parametrize('name', ['DeformableKernel', 'DK'])
def test_registered_in_root_models(name):
    assert MODELS.get(name) is DeformableKernel
    layer = build_conv_layer(dict(type=name, mode='global', scope=4), 4, 6, kernel_size=3,
                             stride=2, padding=1, dilation=1, bias=False)
    assert isinstance(layer, DeformableKernel) and layer.mode == 'global'


@pytest.mark.parametrize('mode', ['local', 'global'])
@pytest.mark.parametrize('deform_data', [False, True])
def test_attributes_and_parameters(mode, deform_data):
    layer = build(cfg=dict(mode=mode, scope=(4, 5), deform_data=deform_data,
                           deform_groups=2 if deform_data else 1),
                  stride=2, padding=2, dilation=2, groups=2, in_channels=8, out_channels=6)
    assert layer.kernel_size == (3, 3) and layer.stride == (2, 2)
    assert layer.padding == (2, 2) and layer.dilation == (2, 2)
    assert layer.scope == (4, 5) and layer.groups == 2
    assert layer.deform_groups == (2 if deform_data else 1) and layer.deform_data is deform_data
    assert layer.variant == ('dcn-' if deform_data else '') + f'dkernel-{mode}-s4x5'
    assert layer.grid == 'centred'
    assert layer.weight.shape == (6, 4, 4, 5)
    if mode == 'local':
        assert isinstance(layer.conv_offset, nn.Conv2d) and layer.conv_offset.out_channels == 18
        assert layer.conv_offset.stride == (2, 2) and layer.conv_offset.dilation == (2, 2)
    else:
        assert isinstance(layer.conv_offset, nn.Linear) and layer.conv_offset.out_features == 18
    if deform_data:
        assert layer.conv_data_offset.out_channels == 36
    else:
        assert layer.conv_data_offset is None
    x = torch.randn(2, 8, 9, 10)
    assert layer(x).shape == (2, 6, 5, 5)
    keys = set(layer.state_dict())
    assert {'weight', 'conv_offset.weight', 'conv_offset.bias'} <= keys
    assert ('conv_data_offset.weight' in keys) is deform_data


@pytest.mark.parametrize('mode', ['local', 'global'])
@pytest.mark.parametrize('deform_data', [False, True])
@pytest.mark.parametrize('stride,padding,dilation,groups,kernel', [
    (1, 1, 1, 1, 3), (2, 1, 1, 1, 3), (1, 2, 2, 4, 3), (2, 1, 1, 8, 3), (1, 0, 1, 1, 1),
    (1, 1, 1, 1, 2)])
def test_initial_layer_equals_conv2d(mode, deform_data, stride, padding, dilation, groups, kernel):
    layer = DeformableKernel(8, 16, kernel, stride, padding, dilation, groups, bias=True, mode=mode,
                             deform_data=deform_data)
    conv = nn.Conv2d(8, 16, kernel, stride, padding, dilation, groups)
    conv.load_state_dict(dict(weight=layer.weight, bias=layer.bias))
    x = torch.randn(2, 8, 9, 11)
    torch.testing.assert_close(layer(x), conv(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('grid,scope,kernel', [
    ('centred', 5, lambda w: w[:, :, 1:4, 1:4]),          # taps on cells 1, 2, 3
    ('spread', 5, lambda w: w[:, :, ::2, ::2]),           # taps on cells 0, 2, 4
    ('centred', 4, lambda w: (w[:, :, :-1, :-1] + w[:, :, 1:, :-1] + w[:, :, :-1, 1:] + w[:, :, 1:, 1:]) / 4),
])
@pytest.mark.parametrize('mode', ['local', 'global'])
def test_initial_layer_with_larger_scope_samples_the_scope(mode, grid, scope, kernel):
    layer = DeformableKernel(4, 6, 3, padding=1, scope=scope, mode=mode, grid=grid).double()
    x = torch.randn(1, 4, 7, 7, dtype=torch.float64)
    torch.testing.assert_close(layer(x), F.conv2d(x, kernel(layer.weight), padding=1))


def set_constant_offsets(predictor, dy, dx):
    """A zero-weight predictor whose bias gives every tap (and location) the offset (dy, dx)."""
    with torch.no_grad():
        predictor.weight.zero_()
        predictor.bias.copy_(torch.tensor([dy, dx]).repeat(predictor.bias.numel() // 2))


@pytest.mark.parametrize('mode', ['local', 'global'])
def test_layer_samples_the_scope_at_its_predicted_kernel_offsets(mode):
    """S = 5, centred taps on cells 1..3: kernel offsets (+1, -1) move them to rows 2..4 and
    columns 0..2, (0.5, 0) to half-way between rows 1..3 and 2..4."""
    layer = DeformableKernel(4, 6, 3, padding=1, scope=5, mode=mode, chunk_size=5).double()
    x = torch.randn(2, 4, 6, 7, dtype=torch.float64)
    w = layer.weight
    set_constant_offsets(layer.conv_offset, 1.0, -1.0)
    torch.testing.assert_close(layer(x), F.conv2d(x, w[:, :, 2:5, 0:3], padding=1))
    set_constant_offsets(layer.conv_offset, 0.5, 0.0)
    torch.testing.assert_close(layer(x), F.conv2d(x, (w[:, :, 1:4, 1:4] + w[:, :, 2:5, 1:4]) / 2, padding=1))
    kernel_offset, data_offset = layer.predict_offsets(x)
    assert kernel_offset.shape == ((2, 18, 6, 7) if mode == 'local' else (2, 18)) and data_offset is None


@pytest.mark.parametrize('mode', ['local', 'global'])
def test_data_offsets_shift_the_input(mode):
    """DCN + DK with kernel offsets (1, 1) (S = 5) and data offsets (2, -1): the conv of the input
    shifted by (2, -1) with the scope's lower-right 3x3 block."""
    layer = DeformableKernel(3, 5, 3, padding=1, scope=5, mode=mode, deform_data=True).double()
    set_constant_offsets(layer.conv_offset, 1.0, 1.0)
    set_constant_offsets(layer.conv_data_offset, 2.0, -1.0)
    x = torch.randn(1, 3, 7, 8, dtype=torch.float64)
    pad = 4
    shifted = torch.roll(F.pad(x, (pad,) * 4), shifts=(-2, 1), dims=(2, 3))  # x[q + (2, -1)]
    full = F.conv2d(shifted, layer.weight[:, :, 2:5, 2:5])
    torch.testing.assert_close(layer(x), full[:, :, pad - 1:pad - 1 + 7, pad - 1:pad - 1 + 8])


@pytest.mark.parametrize('mode', ['local', 'global'])
@pytest.mark.parametrize('deform_data', [False, True])
def test_offset_predictor_gradients_at_zero_init_match_forward_differences(mode, deform_data):
    """Zero offsets put data taps on integer kinks, where the right derivative is used (as mmcv
    does), and centred kernel taps (S = 4) inside cells: the predictor biases' gradient equals
    the forward difference of the loss, entry by entry. No padding: a data tap at -1 (a padding
    row) is outside the map and gets no gradient, where the forward difference would see one."""
    torch.manual_seed(0)
    layer = DeformableKernel(3, 4, 3, scope=4, mode=mode, deform_data=deform_data).double()
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    predictors = [layer.conv_offset] + ([layer.conv_data_offset] if deform_data else [])

    def loss():
        return layer(x).square().sum()

    grads = torch.autograd.grad(loss(), [p.bias for p in predictors])
    h = 1e-7
    for predictor, grad in zip(predictors, grads):
        base = loss().item()
        for i in range(predictor.bias.numel()):
            with torch.no_grad():
                predictor.bias[i] += h
                step = (loss().item() - base) / h
                predictor.bias[i] -= h
            assert grad[i].item() == pytest.approx(step, rel=1e-4, abs=1e-5), (predictor, i)
    assert grads[0].abs().max() > 1  # else the comparison proves little


@pytest.mark.parametrize('layout', LAYOUTS[1:])
@pytest.mark.parametrize('mode', ['local', 'global'])
def test_memory_layouts_and_batch_size_zero(mode, layout):
    layer = DeformableKernel(4, 6, 3, padding=1, scope=4, mode=mode, deform_data=True)
    for predictor in (layer.conv_offset, layer.conv_data_offset):
        nn.init.normal_(predictor.weight, std=0.1)
    check_layouts_and_empty_batch(layer, 4, 6, layout)


def test_init_weights_zeroes_the_predictors():
    layer = DeformableKernel(4, 6, 3, padding=1, scope=4, deform_data=True)
    nn.init.normal_(layer.conv_offset.weight)
    nn.init.normal_(layer.conv_data_offset.bias)
    layer.init_weights()
    for predictor in (layer.conv_offset, layer.conv_data_offset):
        assert not predictor.weight.any() and not predictor.bias.any()


def test_mmdet_resnet_with_local_dk():
    from mmdet.models.backbones import ResNet
    model = ResNet(depth=50, base_channels=16, out_indices=(0, 1, 2, 3),
                   dcn=dict(type='DeformableKernel', mode='local', scope=4),
                   stage_with_dcn=(False, True, True, True), init_cfg=None)
    layers = [m for m in model.modules() if isinstance(m, DeformableKernel)]
    assert len(layers) == 4 + 6 + 3
    assert all(m.variant == 'dkernel-local-s4' and m.scope == (4, 4) for m in layers)
    assert layers[0].stride == (2, 2)  # first block of c3 downsamples in its 3x3 conv
    for m in layers:  # as if a previous init or checkpoint left the predictors non-zero
        nn.init.normal_(m.conv_offset.weight)
    model.init_weights()  # Kaiming on every nn.Conv2d, then the children's init_weights
    assert all(not m.conv_offset.weight.any() and not m.conv_offset.bias.any() for m in layers)
    model.eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(1, 64, 16, 24), (1, 128, 8, 12), (1, 256, 4, 6),
                                             (1, 512, 2, 3)]


@pytest.mark.parametrize('kwargs,message', [
    (dict(cfg=dict(mode='locale')), r"DeformableKernel mode must be one of \('local', 'global'\), got 'locale'"),
    (dict(cfg=dict(scope=2)), 'scope 2x2 is smaller than the kernel 3x3; the scope must be at least the kernel size'),
    (dict(cfg=dict(scope=(4, 2))), 'scope 4x2 is smaller than the kernel 3x3'),
    (dict(cfg=dict(scope=(4, 4, 4))), r'scope must be an int or a pair of ints, got \(4, 4, 4\)'),
    (dict(cfg=dict(grid='even')), r"DeformableKernel grid must be one of \('centred', 'spread'\), got 'even'"),
    (dict(groups=3), r'in_channels \(8\) and out_channels \(8\) must be divisible by groups \(3\)'),
    (dict(cfg=dict(deform_groups=2)), 'deform_groups=2 needs deform_data=True'),
    (dict(cfg=dict(deform_groups=3, deform_data=True)), r'in_channels \(8\) must be divisible by deform_groups \(3\)'),
    (dict(cfg=dict(chunk_size=0)), 'chunk_size must be a positive number of locations, got 0'),
])
def test_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build(**kwargs)


def test_removed_backend_argument_is_an_error():
    with pytest.raises(TypeError, match="unexpected keyword argument 'backend'"):
        build(cfg=dict(backend='torch'))


def test_wrong_input_channels():
    with pytest.raises(ValueError, match=r'DeformableKernel expects \(N, 8, H, W\) input, got \(1, 4, 5, 5\)'):
        build()(torch.randn(1, 4, 5, 5))


@pytest.mark.parametrize('grid', ['centred', 'spread'])
@pytest.mark.parametrize('mode', ['local', 'global'])
@pytest.mark.parametrize('scope,groups', [(4, 1), (5, 2), (6, 8)], ids=['s4', 's5-grouped', 's6-depthwise'])
def test_loading_a_kxk_conv_maps_it_into_the_scope(mode, scope, groups, grid):
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=groups, bias=False)
    layer = build(cfg=dict(mode=mode, scope=scope, grid=grid), groups=groups)
    result = layer.load_state_dict(conv.state_dict(), strict=False)
    assert result.missing_keys == ['conv_offset.weight', 'conv_offset.bias'] and not result.unexpected_keys
    assert layer.weight.shape[2:] == (scope, scope)
    x = torch.randn(2, 8, 7, 9)
    torch.testing.assert_close(layer(x), conv(x), rtol=1e-5, atol=1e-5)  # offsets are zero


@pytest.mark.parametrize('dcn', [dict(mode='local'), dict(mode='global', deform_data=True),
                                 dict(mode='local', grid='spread')], ids=['local', 'dcn-global', 'local-spread'])
def test_resnet_with_dk_starts_from_a_plain_resnet_checkpoint(dcn, tmp_path):
    """The path of the COCO DK configs: backbone init_cfg=Pretrained on an ordinary ResNet."""
    from mmdet.models.backbones import ResNet
    plain = ResNet(depth=50, base_channels=8, out_indices=(1, 2, 3), init_cfg=None)
    plain.init_weights()
    torch.save(plain.state_dict(), tmp_path / 'plain.pth')
    dk = ResNet(depth=50, base_channels=8, out_indices=(1, 2, 3),
                dcn=dict(type='DK', scope=4, **dcn), stage_with_dcn=(False, True, True, True),
                init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'plain.pth')))
    dk.init_weights()
    plain.eval(), dk.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(dk(x), plain(x)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
