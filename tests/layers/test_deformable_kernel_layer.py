"""DeformableKernel layer: registry, initial equivalence to nn.Conv2d, init_weights, mmdet ResNet, errors."""
import pytest
import torch
import torch.nn.functional as F
from mmcv.cnn import build_conv_layer
from mmengine.registry import MODELS
from torch import nn

from deform_viz.layers import DeformableKernel
from deform_viz.ops.deformable_kernel import deformable_kernel_local, resample_kernel


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
    assert layer.variant == ('dcn_' if deform_data else '') + f'dk_{mode}'
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


@pytest.mark.parametrize('mode', ['local', 'global'])
def test_initial_layer_with_larger_scope_samples_the_scope(mode):
    layer = DeformableKernel(4, 6, 3, padding=1, scope=5, mode=mode)
    x = torch.randn(1, 4, 7, 7)
    kernel = resample_kernel(layer.weight, torch.zeros(1, 18), 3)[0]
    torch.testing.assert_close(kernel[:, :, 1, 1], layer.weight[:, :, 2, 2])
    torch.testing.assert_close(layer(x), F.conv2d(x, kernel, padding=1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('mode', ['local', 'global'])
@pytest.mark.parametrize('deform_data', [False, True])
def test_offset_predictors_learn_from_zero_init(mode, deform_data):
    """Zero offsets put taps on kinks and borders; the predictors must still get a gradient."""
    layer = DeformableKernel(4, 4, 3, padding=1, scope=3, mode=mode, deform_data=deform_data)
    layer(torch.randn(2, 4, 6, 6)).square().sum().backward()
    assert layer.conv_offset.weight.grad.abs().sum() > 0
    assert layer.weight.grad.abs().sum() > 0
    if deform_data:
        assert layer.conv_data_offset.weight.grad.abs().sum() > 0


def test_layer_uses_predicted_offsets():
    torch.manual_seed(0)
    layer = DeformableKernel(4, 6, 3, padding=1, scope=4, chunk_size=5)
    nn.init.normal_(layer.conv_offset.weight, std=0.3)
    x = torch.randn(2, 4, 6, 7)
    kernel_offset, data_offset = layer.predict_offsets(x)
    assert kernel_offset.shape == (2, 18, 6, 7) and data_offset is None
    expected = deformable_kernel_local(x, layer.weight, kernel_offset, 3, padding=1)
    torch.testing.assert_close(layer(x), expected)
    layer.init_weights()
    assert not layer.conv_offset.weight.any() and not layer.conv_offset.bias.any()


def test_mmdet_resnet_with_local_dk():
    from mmdet.models.backbones import ResNet
    model = ResNet(depth=50, base_channels=16, out_indices=(0, 1, 2, 3),
                   dcn=dict(type='DeformableKernel', mode='local', scope=4),
                   stage_with_dcn=(False, True, True, True), init_cfg=None)
    layers = [m for m in model.modules() if isinstance(m, DeformableKernel)]
    assert len(layers) == 4 + 6 + 3
    assert all(m.variant == 'dk_local' and m.scope == (4, 4) for m in layers)
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
    assert all(torch.isfinite(o).all() for o in outs)


def test_mmdet_resnet_global_dcn_dk_trains():
    from mmdet.models.backbones import ResNet
    model = ResNet(depth=50, base_channels=8, out_indices=(3, ), num_stages=4,
                   dcn=dict(type='DK', mode='global', scope=4, deform_data=True),
                   stage_with_dcn=(False, False, False, True), init_cfg=None)
    model.init_weights()
    model.train()
    out = model(torch.randn(2, 3, 64, 64))[0]
    out.mean().backward()
    layer = next(m for m in model.modules() if isinstance(m, DeformableKernel))
    assert layer.variant == 'dcn_dk_global'
    assert layer.conv_offset.weight.grad is not None and layer.conv_data_offset.weight.grad is not None


@pytest.mark.parametrize('kwargs,message', [
    (dict(cfg=dict(mode='locale')), r"mode must be one of \('local', 'global'\), got 'locale'"),
    (dict(cfg=dict(scope=2)), r'scope \(2, 2\) must be at least the kernel size \(3, 3\)'),
    (dict(cfg=dict(scope=(4, 2))), 'must be at least the kernel size'),
    (dict(groups=3), r'divisible by groups \(3\)'),
    (dict(cfg=dict(deform_groups=2)), 'deform_groups=2 needs deform_data=True'),
    (dict(cfg=dict(deform_groups=3, deform_data=True)), r'divisible by deform_groups \(3\)'),
    (dict(cfg=dict(backend='mmcv')), "backend must be one of .* got 'mmcv'"),
    (dict(cfg=dict(chunk_size=0)), 'chunk_size must be a positive'),
])
def test_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build(**kwargs)


def test_wrong_input_channels():
    with pytest.raises(ValueError, match=r'expects \(N, 8, H, W\) input'):
        build()(torch.randn(1, 4, 5, 5))


@pytest.mark.parametrize('mode', ['local', 'global'])
@pytest.mark.parametrize('scope,groups', [(4, 1), (5, 2), (6, 8)], ids=['s4', 's5-grouped', 's6-depthwise'])
def test_loading_a_kxk_conv_maps_it_into_the_scope(mode, scope, groups):
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=groups, bias=False)
    layer = build(cfg=dict(mode=mode, scope=scope), groups=groups)
    result = layer.load_state_dict(conv.state_dict(), strict=False)
    assert result.missing_keys == ['conv_offset.weight', 'conv_offset.bias'] and not result.unexpected_keys
    assert layer.weight.shape[2:] == (scope, scope)
    x = torch.randn(2, 8, 7, 9)
    torch.testing.assert_close(layer(x), conv(x), rtol=1e-5, atol=1e-5)  # offsets are zero


def test_resnet_with_dk_starts_from_a_plain_resnet_checkpoint(tmp_path):
    """The path of the COCO DK configs: backbone init_cfg=Pretrained on an ordinary ResNet."""
    from mmdet.models.backbones import ResNet
    plain = ResNet(depth=50, base_channels=8, out_indices=(1, 2, 3), init_cfg=None)
    plain.init_weights()
    torch.save(plain.state_dict(), tmp_path / 'plain.pth')
    dk = ResNet(depth=50, base_channels=8, out_indices=(1, 2, 3),
                dcn=dict(type='DK', mode='local', scope=4), stage_with_dcn=(False, True, True, True),
                init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'plain.pth')))
    dk.init_weights()
    plain.eval(), dk.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(dk(x), plain(x)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
