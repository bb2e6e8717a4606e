"""DecomposedDCN / DFOnlyDCN / DKOnlyDCN: projection, mmcv compatibility, mmdet integration."""
import copy

import pytest
import torch
import torch.nn.functional as F
from mmcv import ops as mmcv_ops
from mmcv.cnn import build_conv_layer
from ops.helpers import LAYOUTS, check_layouts_and_empty_batch, relative_error
from torch import nn

from deform_viz.layers import DecomposedDCN, DFOnlyDCN, DKOnlyDCN

pytestmark = pytest.mark.usefixtures('single_thread')


def randomize_offsets(layer, scale=0.3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.conv_offset.weight.copy_(torch.randn(layer.conv_offset.weight.shape, generator=gen) * scale)
        layer.conv_offset.bias.copy_(torch.randn(layer.conv_offset.bias.shape, generator=gen))
    return layer


def project_by_hand(offset, component, taps=9):
    """d_f (mean over the taps) or d_k (offset minus that mean) of mmcv-layout offsets."""
    if component == 'full':
        return offset
    n, c, h, w = offset.shape
    fields = offset.view(n, c // (2 * taps), taps, 2, h, w)
    mean = fields.mean(dim=2, keepdim=True)
    return (mean.expand_as(fields) if component == 'd_f' else fields - mean).reshape(n, c, h, w)


def mmcv_reference(layer, x, component, modulated):
    """mmcv's op with the offsets of ``layer`` (ours or mmcv's) projected by hand."""
    out = layer.conv_offset(x)
    if modulated:
        o1, o2, logits = out.chunk(3, dim=1)
        return mmcv_ops.modulated_deform_conv2d(
            x, project_by_hand(torch.cat((o1, o2), 1), component), logits.sigmoid(), layer.weight,
            layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups, layer.deform_groups)
    out = mmcv_ops.deform_conv2d(x, project_by_hand(out, component), layer.weight, layer.stride,
                                 layer.padding, layer.dilation, layer.groups, layer.deform_groups)
    bias = getattr(layer, 'bias', None)  # mmcv's DCN has none
    return out if bias is None else out + bias.view(1, -1, 1, 1)


def shift_bilinear(x, dy, dx):
    """``out[..., q] = bilinear(x, q + (dy, dx))``, zero outside; x needs a zero border wider than the shift."""
    out = torch.zeros_like(x)
    fy, fx = int(torch.floor(torch.tensor(dy))), int(torch.floor(torch.tensor(dx)))
    ay, ax = dy - fy, dx - fx
    for cy, wy in ((0, 1 - ay), (1, ay)):
        for cx, wx in ((0, 1 - ax), (1, ax)):
            out += wy * wx * torch.roll(x, shifts=(-(fy + cy), -(fx + cx)), dims=(2, 3))
    return out


# --------------------------------------------------------------------------- construction
def test_variants_attributes_and_state_dict_keys():
    cases = [(DecomposedDCN, {}, 'dcn', 'full'), (DFOnlyDCN, {}, 'dcn-df', 'd_f'),
             (DKOnlyDCN, {}, 'dcn-dk', 'd_k'), (DecomposedDCN, dict(modulated=True), 'dcnv2', 'full'),
             (DFOnlyDCN, dict(modulated=True, bias=True), 'dcnv2-df', 'd_f'),
             (DecomposedDCN, dict(component='d_k', modulated=True), 'dcnv2-dk', 'd_k'),
             (DecomposedDCN, dict(component='df'), 'dcn-df', 'd_f'),  # legacy spelling
             (DKOnlyDCN, dict(component='dk'), 'dcn-dk', 'd_k')]
    for cls, kwargs, variant, component in cases:
        layer = cls(8, 4, 3, stride=2, padding=1, dilation=1, deform_groups=2, **kwargs)
        assert (layer.variant, layer.component) == (variant, component)
        assert layer.kernel_size == (3, 3) and layer.stride == (2, 2) and layer.padding == (1, 1)
        assert layer.dilation == (1, 1) and layer.groups == 1 and layer.deform_groups == 2
        k = 3 if kwargs.get('modulated') else 2
        expected = {'weight': (4, 8, 3, 3), 'conv_offset.weight': (k * 2 * 9, 8, 3, 3),
                    'conv_offset.bias': (k * 2 * 9,)}
        if kwargs.get('bias'):
            expected['bias'] = (4,)
        assert {key: tuple(v.shape) for key, v in layer.state_dict().items()} == expected


def test_clear_errors():
    with pytest.raises(ValueError, match=r"unknown offset component 'dkernel'; expected one of "
                                         r"\('full', 'd_f', 'd_k'\)"):
        DecomposedDCN(4, 4, 3, component='dkernel')
    with pytest.raises(ValueError, match=r"DFOnlyDCN: unknown backend 'cuda'; expected one of "
                                         r"\('auto', 'torch', 'mmcv'\)"):
        DFOnlyDCN(4, 4, 3, backend='cuda')
    with pytest.raises(ValueError, match="DKOnlyDCN always uses component='d_k', got 'd_f'; use DecomposedDCN"):
        DKOnlyDCN(4, 4, 3, component='df')
    with pytest.raises(ValueError, match="DFOnlyDCN always uses component='d_f', got 'full'"):
        DFOnlyDCN(4, 4, 3, component='full')
    with pytest.raises(ValueError, match='in_channels=6 is not divisible by groups=4'):
        DecomposedDCN(6, 8, 3, groups=4)
    with pytest.raises(ValueError, match='out_channels=6 is not divisible by groups=4'):
        DecomposedDCN(8, 6, 3, groups=4)
    with pytest.raises(ValueError, match='in_channels=6 is not divisible by deform_groups=4'):
        DecomposedDCN(6, 6, 3, deform_groups=4)
    layer = DecomposedDCN(4, 4, 3, padding=1)
    layer.conv_offset = nn.Conv2d(4, 17, 3, padding=1)  # a wrongly shaped predictor
    with pytest.raises(ValueError, match='offset has 17 channels; a 3x3 kernel needs 2\\*deform_groups\\*9'):
        layer(torch.randn(1, 4, 5, 5))


def test_init_weights_zeroes_offsets_after_kaiming():
    layer = DKOnlyDCN(4, 4, 3, padding=1, modulated=True)
    nn.init.kaiming_normal_(layer.conv_offset.weight)  # what mmdet's ResNet init_cfg does to nn.Conv2d
    layer.init_weights()
    assert not layer.conv_offset.weight.any() and not layer.conv_offset.bias.any()


# --------------------------------------------------------------------------- semantics
@pytest.mark.parametrize('cls', [DecomposedDCN, DFOnlyDCN, DKOnlyDCN])
@pytest.mark.parametrize('modulated', [False, True])
def test_zero_offsets_equal_conv2d(cls, modulated):
    layer = cls(4, 6, 3, stride=2, padding=2, dilation=2, groups=2, deform_groups=2, bias=True,
                modulated=modulated, backend='torch').double()
    nn.init.normal_(layer.bias)
    x = torch.randn(2, 4, 9, 8, dtype=torch.float64)
    ref = F.conv2d(x, layer.weight, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups)
    if modulated:  # zero mask logits: every sample weighted by sigmoid(0) = 1/2
        ref = F.conv2d(x, layer.weight / 2, layer.bias, layer.stride, layer.padding, layer.dilation, 2)
    torch.testing.assert_close(layer(x), ref)


@pytest.mark.parametrize('backend', ['torch', 'mmcv'])
@pytest.mark.parametrize('modulated', [False, True])
def test_layers_sample_with_their_component(modulated, backend):
    """Each layer equals mmcv's op fed with its predicted offsets, projected by hand."""
    full = randomize_offsets(DecomposedDCN(4, 6, 3, padding=1, deform_groups=2, modulated=modulated,
                                           bias=True).double())
    nn.init.normal_(full.bias)
    x = torch.randn(2, 4, 6, 7, dtype=torch.float64)
    for cls, component in ((DecomposedDCN, 'full'), (DFOnlyDCN, 'd_f'), (DKOnlyDCN, 'd_k')):
        layer = cls(4, 6, 3, padding=1, deform_groups=2, modulated=modulated, bias=True,
                    backend=backend).double()
        layer.load_state_dict(full.state_dict())
        torch.testing.assert_close(layer(x), mmcv_reference(full, x, component, modulated))


@pytest.mark.parametrize('mean_shift', [(1.0, -2.0), (0.3, 1.6)], ids=['integer', 'fractional'])
def test_df_only_with_constant_offsets_is_a_shifted_conv(mean_shift):
    """Constant offsets (different per tap) reduce to one shift d_f: a conv of the shifted input."""
    layer = DFOnlyDCN(3, 5, 3, padding=1).double()
    taps = torch.randn(9, 2, dtype=torch.float64)
    taps = taps - taps.mean(0) + torch.tensor(mean_shift, dtype=torch.float64)
    with torch.no_grad():
        layer.conv_offset.bias.copy_(taps.reshape(-1))
    x = torch.randn(2, 3, 7, 8, dtype=torch.float64)
    pad = 4
    shifted = shift_bilinear(F.pad(x, (pad,) * 4), *mean_shift)
    full = F.conv2d(shifted, layer.weight)
    expected = full[:, :, pad - 1:pad - 1 + 7, pad - 1:pad - 1 + 8]
    torch.testing.assert_close(layer(x), expected)
    if mean_shift == (1.0, -2.0):  # integer: nn.Conv2d on the shifted input, nothing interpolated
        conv = nn.Conv2d(3, 5, 3, bias=False).double()
        conv.weight.data.copy_(layer.weight.data)
        shifted_int = torch.roll(F.pad(x, (pad,) * 4), shifts=(-1, 2), dims=(2, 3))  # x[q + (1, -2)]
        torch.testing.assert_close(layer(x), conv(shifted_int)[:, :, pad - 1:pad - 1 + 7, pad - 1:pad - 1 + 8])


def test_dk_only_with_equal_offsets_is_a_plain_conv():
    layer = DKOnlyDCN(3, 5, 3, padding=1).double()
    with torch.no_grad():
        layer.conv_offset.bias.copy_(torch.tensor([0.7, -1.3]).repeat(9))  # d_f takes it all
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(layer(x), F.conv2d(x, layer.weight, padding=1))


@pytest.mark.parametrize('backend', ['torch', 'mmcv'])
@pytest.mark.parametrize('cls', [DFOnlyDCN, DKOnlyDCN])
@pytest.mark.parametrize('modulated', [False, True])
def test_gradients_through_the_projection_gradcheck(cls, modulated, backend):
    """Input, weight and offset-predictor gradients of the whole layer against finite differences."""
    layer = randomize_offsets(cls(2, 2, 3, padding=1, modulated=modulated, backend=backend).double())
    names = ['weight', 'conv_offset.weight', 'conv_offset.bias']
    params = dict(layer.named_parameters())

    def forward(x, *tensors):
        return torch.func.functional_call(layer, dict(zip(names, tensors)), (x,))

    x = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(forward, (x, *(params[n].detach().requires_grad_() for n in names)))


# --------------------------------------------------------------------------- mmcv
@pytest.mark.parametrize('modulated', [False, True], ids=['DCN', 'DCNv2'])
def test_mmcv_checkpoint_loads_strict_and_outputs_match(modulated):
    pack = mmcv_ops.ModulatedDeformConv2dPack if modulated else mmcv_ops.DeformConv2dPack
    args = dict(in_channels=8, out_channels=6, kernel_size=3, stride=1, padding=1, dilation=1,
                groups=2, deform_groups=2, bias=False)
    theirs = randomize_offsets(pack(**args))
    state = copy.deepcopy(theirs.state_dict())
    x = torch.randn(2, 8, 7, 9, requires_grad=True)
    ref = theirs(x)
    for cls, component in ((DecomposedDCN, 'full'), (DFOnlyDCN, 'd_f'), (DKOnlyDCN, 'd_k')):
        for backend in ('torch', 'mmcv'):
            ours = cls(**args, modulated=modulated, backend=backend)
            ours.load_state_dict(state, strict=True)
            out = ours(x)
            if component == 'full':
                torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
                grads = torch.autograd.grad(out.sum(), [x, ours.weight, ours.conv_offset.weight])
                ref_grads = torch.autograd.grad(ref.sum(), [x, theirs.weight, theirs.conv_offset.weight],
                                                retain_graph=True)
                for a, b in zip(grads, ref_grads):
                    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)
            else:
                torch.testing.assert_close(out, mmcv_reference(theirs, x, component, modulated), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('stride', [1, 2])
@pytest.mark.parametrize('size', [(2, 2), (1, 5), (4, 1)], ids=['2x2', '1x5', '4x1'])
@pytest.mark.parametrize('modulated', [False, True], ids=['dcn', 'dcnv2'])
def test_maps_smaller_than_the_kernel_on_mmcv_backend(modulated, size, stride):
    """mmcv's v1 op refuses them; the layer pads as mmcv's DCN does, equal to the torch path."""
    x = torch.randn(2, 4, *size, dtype=torch.float64)
    layer = randomize_offsets(DFOnlyDCN(4, 6, 3, stride=stride, padding=1, modulated=modulated,
                                        bias=True).double())
    nn.init.normal_(layer.bias)
    results = []
    for backend in ('torch', 'mmcv'):
        layer.backend = backend
        leaf = x.clone().requires_grad_()
        out = layer(leaf)
        results.append([out] + list(torch.autograd.grad(out.square().sum(), [leaf] + list(layer.parameters()))))
    expected_size = tuple((s + 2 - 3) // stride + 1 for s in size)
    assert results[1][0].shape == (2, 6, *expected_size)
    for name, a, b in zip(['out', 'x'] + [n for n, _ in layer.named_parameters()], *results):
        torch.testing.assert_close(b, a, msg=lambda m: f'{name}: {m}')


@pytest.mark.parametrize('backend', ['torch', 'mmcv'])
@pytest.mark.parametrize('layout', LAYOUTS[1:])
def test_memory_layouts_and_batch_size_zero(layout, backend):
    layer = randomize_offsets(DKOnlyDCN(4, 6, 3, padding=1, deform_groups=2, modulated=True,
                                        backend=backend))
    check_layouts_and_empty_batch(layer, 4, 6, layout)


def test_registered_for_build_conv_layer():
    for name, cls in (('DecomposedDCN', DecomposedDCN), ('DFOnlyDCN', DFOnlyDCN), ('DKOnlyDCN', DKOnlyDCN)):
        layer = build_conv_layer(dict(type=name, deform_groups=1, modulated=True), 8, 8, kernel_size=3,
                                 stride=1, padding=1, dilation=1, bias=False)
        assert type(layer) is cls and layer.modulated
    legacy = build_conv_layer(dict(type='DecomposedDCN', component='df'), 8, 8, kernel_size=3)
    assert (legacy.component, legacy.variant) == ('d_f', 'dcn-df')


@pytest.mark.parametrize('dcn_type', ['DFOnlyDCN', 'DKOnlyDCN'])
def test_mmdet_resnet_with_variant(dcn_type):
    from mmdet.models.backbones import ResNet
    backbone = ResNet(depth=50, base_channels=16, out_indices=(0, 1, 2, 3),
                      dcn=dict(type=dcn_type, deform_groups=1, fallback_on_stride=False),
                      stage_with_dcn=(False, True, True, True))
    backbone.init_weights()
    layers = [m for m in backbone.modules() if isinstance(m, DecomposedDCN)]
    assert len(layers) == 4 + 6 + 3
    assert all(not m.conv_offset.weight.any() and not m.conv_offset.bias.any() for m in layers)
    assert any(m.stride == (2, 2) for m in layers)  # the first block of c3-c5 strides in its 3x3
    outs = backbone(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(1, 64, 16, 16), (1, 128, 8, 8), (1, 256, 4, 4), (1, 512, 2, 2)]


# --------------------------------------------------------------------------- detector
DETECTOR_VARIANTS = {  # variant key -> backbone.dcn
    'dcn': dict(type='DecomposedDCN'),
    'dcn-df': dict(type='DFOnlyDCN'),
    'dcn-dk': dict(type='DKOnlyDCN'),
    'dcnv2': dict(type='DecomposedDCN', modulated=True),
    'dcnv2-df': dict(type='DFOnlyDCN', modulated=True),
    'dcnv2-dk': dict(type='DKOnlyDCN', modulated=True),
    'dkernel-local-s4': dict(type='DeformableKernel', mode='local', scope=4),
    'dkernel-global-s4': dict(type='DeformableKernel', mode='global', scope=4),
    'dcn-dkernel-local-s4': dict(type='DeformableKernel', mode='local', scope=4, deform_data=True),
}


@pytest.fixture(scope='module')
def detector_parts():
    """mmdet's Faster R-CNN R-50-FPN config (width 16, no pretrained weights), a 2-image batch,
    and the state dict and image features of that plain detector."""
    from mmdet.registry import MODELS
    from mmdet.structures import DetDataSample
    from mmdet.utils import register_all_modules
    from mmengine.hub import get_config
    from mmengine.structures import InstanceData
    register_all_modules()
    model = get_config('mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py').model
    # zero_init_residual would zero every bottleneck's last BN, leaving the 3x3 convs no
    # gradient in the first step
    model.backbone.update(base_channels=16, init_cfg=None, zero_init_residual=False)
    model.neck.update(in_channels=[64, 128, 256, 512], out_channels=32)
    model.rpn_head.update(in_channels=32, feat_channels=32)
    model.roi_head.bbox_roi_extractor.out_channels = 32
    model.roi_head.bbox_head.update(in_channels=32, fc_out_channels=64, num_classes=3)
    model.train_cfg.rpn_proposal.update(nms_pre=200, max_per_img=100)
    model.train_cfg.rcnn.sampler.num = 64
    model.test_cfg.rpn.update(nms_pre=200, max_per_img=50)
    gen = torch.Generator().manual_seed(0)
    inputs, samples = [], []
    for h, w in ((96, 128), (128, 96)):
        sample = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), scale_factor=(1.0, 1.0)))
        sample.gt_instances = InstanceData(bboxes=torch.tensor([[8., 10., 60., 70.], [30., 20., 90., 80.]]),
                                           labels=torch.tensor([0, 2]))
        samples.append(sample)
        inputs.append(torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen))
    data = dict(inputs=inputs, data_samples=samples)
    torch.manual_seed(0)
    plain = MODELS.build(model)
    plain.init_weights()
    plain.eval()
    with torch.no_grad():
        features = plain.extract_feat(plain.data_preprocessor(data, False)['inputs'])
    return model, data, plain.state_dict(), features


@pytest.mark.slow
@pytest.mark.parametrize('variant', list(DETECTOR_VARIANTS))
def test_faster_rcnn_with_variant_trains_and_predicts(variant, detector_parts):
    """Loaded with a plain detector's weights, every variant starts as that detector (zero offset
    predictors; DCNv2's mask of 1/2 compensated by doubled weights; DK maps the 3x3 weights into
    its scope), then takes a training step and predicts."""
    from mmdet.registry import MODELS
    from mmengine.registry import MODELS as ROOT_MODELS
    model_cfg, data, plain_state, plain_features = detector_parts
    cfg = copy.deepcopy(model_cfg)  # ConfigDict.update would merge into an earlier variant's dcn
    cfg.backbone.dcn = dict(DETECTOR_VARIANTS[variant], fallback_on_stride=False)
    cfg.backbone.stage_with_dcn = (False, True, True, True)
    model = MODELS.build(cfg)
    model.init_weights()
    layer_type = ROOT_MODELS.get(cfg.backbone.dcn['type'])
    deformable = [m for m in model.backbone.modules() if isinstance(m, layer_type)]
    assert len(deformable) == 4 + 6 + 3 and {m.variant for m in deformable} == {variant}
    missing = model.load_state_dict(plain_state, strict=False).missing_keys
    assert missing and all('offset' in key for key in missing)
    with torch.no_grad():
        for m in deformable:
            if getattr(m, 'modulated', False):
                m.weight.mul_(2)
    model.eval()
    with torch.no_grad():
        features = model.extract_feat(model.data_preprocessor(data, False)['inputs'])
    errors = [relative_error(a, b) for a, b in zip(features, plain_features)]
    assert max(errors) < 1e-5, errors  # float32 sums in another order

    model.train()
    losses = model(**model.data_preprocessor(data, True), mode='loss')
    loss, _ = model.parse_losses(losses)
    assert torch.isfinite(loss)
    loss.backward()
    for m in deformable:
        for name, p in m.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    model.eval()
    with torch.no_grad():
        results = model(**model.data_preprocessor(data, False), mode='predict')
    assert len(results) == 2 and all(r.pred_instances.bboxes.shape[1] == 4 for r in results)


def test_mmengine_dcn_offset_lr_mult_treats_it_like_mmcv_dcn():
    """paramwise_cfg.dcn_offset_lr_mult (and the DCN exemptions of bias_lr_mult) apply to our
    layer exactly as to mmcv's DCN/DCNv2, so swapping the layer type changes no learning rate."""
    from mmengine.optim import build_optim_wrapper
    cfg = dict(optimizer=dict(type='SGD', lr=0.1),
               paramwise_cfg=dict(dcn_offset_lr_mult=0.5, bias_lr_mult=2.0))

    def learning_rates(layer_type, **kwargs):
        model = nn.Sequential(build_conv_layer(dict(type=layer_type, **kwargs), 4, 4, 3, padding=1))
        groups = build_optim_wrapper(model, cfg).optimizer.param_groups
        by_id = {id(p): g['lr'] for g in groups for p in g['params']}
        return {name: by_id[id(p)] for name, p in model.named_parameters()}

    for ours, theirs in ((dict(type='DecomposedDCN'), 'DCN'),
                         (dict(type='DKOnlyDCN', modulated=True, bias=True), 'DCNv2')):
        mine = learning_rates(ours.pop('type'), **ours)
        assert mine['0.conv_offset.weight'] == mine['0.conv_offset.bias'] == pytest.approx(0.05)
        assert mine == learning_rates(theirs, **({'bias': True} if theirs == 'DCNv2' else {}))
