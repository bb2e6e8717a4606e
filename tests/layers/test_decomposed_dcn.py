"""DecomposedDCN / DFOnlyDCN / DKOnlyDCN: projection, mmcv compatibility, mmdet integration."""
import copy

import pytest
import torch
import torch.nn.functional as F
from mmcv.cnn import build_conv_layer
from torch import nn

from deform_viz.layers import DecomposedDCN, DFOnlyDCN, DKOnlyDCN
from deform_viz.ops.deform_conv import deform_conv2d_torch
from deform_viz.ops.offset_fields import project_offsets


pytestmark = pytest.mark.usefixtures('single_thread')


def randomize_offsets(layer, scale=0.3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.conv_offset.weight.copy_(torch.randn(layer.conv_offset.weight.shape, generator=gen) * scale)
        layer.conv_offset.bias.copy_(torch.randn(layer.conv_offset.bias.shape, generator=gen))
    return layer


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
    cases = [(DecomposedDCN, {}, 'dcn', 'full'), (DFOnlyDCN, {}, 'dcn_df', 'df'),
             (DKOnlyDCN, {}, 'dcn_dk', 'dk'), (DecomposedDCN, dict(modulated=True), 'dcnv2', 'full'),
             (DFOnlyDCN, dict(modulated=True, bias=True), 'dcnv2_df', 'df'),
             (DecomposedDCN, dict(component='dk', modulated=True), 'dcnv2_dk', 'dk')]
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
    with pytest.raises(ValueError, match=r"unknown component 'dkernel'.*\('full', 'df', 'dk'\)"):
        DecomposedDCN(4, 4, 3, component='dkernel')
    with pytest.raises(ValueError, match=r"unknown backend 'cuda'.*\('auto', 'torch', 'mmcv'\)"):
        DFOnlyDCN(4, 4, 3, backend='cuda')
    with pytest.raises(ValueError, match="DKOnlyDCN always uses component='dk'"):
        DKOnlyDCN(4, 4, 3, component='df')
    with pytest.raises(ValueError, match='in_channels=6 is not divisible by groups=4'):
        DecomposedDCN(6, 8, 3, groups=4)
    with pytest.raises(ValueError, match='out_channels=6 is not divisible by groups=4'):
        DecomposedDCN(8, 6, 3, groups=4)
    with pytest.raises(ValueError, match='in_channels=6 is not divisible by deform_groups=4'):
        DecomposedDCN(6, 6, 3, deform_groups=4)
    layer = DecomposedDCN(4, 4, 3, padding=1)
    layer.conv_offset = nn.Conv2d(4, 17, 3, padding=1)  # a wrongly shaped predictor
    with pytest.raises(ValueError, match='offset has 17 channels'):
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


@pytest.mark.parametrize('modulated', [False, True])
def test_df_plus_dk_is_the_prediction_and_layers_use_their_part(modulated):
    full = randomize_offsets(DecomposedDCN(4, 4, 3, padding=1, deform_groups=2, modulated=modulated).double())
    x = torch.randn(1, 4, 6, 7, dtype=torch.float64)
    offset, mask = full.offsets(x)
    d_f, d_k = project_offsets(offset, 3, 'df'), project_offsets(offset, 3, 'dk')
    torch.testing.assert_close(d_f + d_k, offset, rtol=0, atol=1e-12)
    for cls, part in ((DFOnlyDCN, d_f), (DKOnlyDCN, d_k)):
        layer = cls(4, 4, 3, padding=1, deform_groups=2, modulated=modulated).double()
        layer.load_state_dict(full.state_dict())
        expected = deform_conv2d_torch(x, part, full.weight, padding=1, mask=mask)
        torch.testing.assert_close(layer(x), expected)


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


def test_offsets_get_gradients_through_the_projection():
    for cls in (DFOnlyDCN, DKOnlyDCN):
        layer = cls(4, 4, 3, padding=1, modulated=True)
        layer(torch.randn(1, 4, 6, 6)).square().sum().backward()
        assert layer.conv_offset.weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------- mmcv
@pytest.fixture(scope='module')
def mmcv_ops():
    return pytest.importorskip('mmcv.ops', reason='mmcv with compiled ops is not installed')


@pytest.mark.parametrize('modulated', [False, True], ids=['DCN', 'DCNv2'])
def test_mmcv_checkpoint_loads_strict_and_outputs_match(modulated, mmcv_ops):
    pack = mmcv_ops.ModulatedDeformConv2dPack if modulated else mmcv_ops.DeformConv2dPack
    args = dict(in_channels=8, out_channels=6, kernel_size=3, stride=1, padding=1, dilation=1,
                groups=2, deform_groups=2, bias=False)
    theirs = randomize_offsets(pack(**args))
    state = copy.deepcopy(theirs.state_dict())
    x = torch.randn(2, 8, 7, 9, requires_grad=True)
    ref = theirs(x)
    offset = theirs.conv_offset(x)
    for cls, component in ((DecomposedDCN, 'full'), (DFOnlyDCN, 'df'), (DKOnlyDCN, 'dk')):
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
            else:  # mmcv's op with the projected offsets
                if modulated:
                    o1, o2, m = offset.chunk(3, dim=1)
                    expected = mmcv_ops.modulated_deform_conv2d(
                        x, project_offsets(torch.cat((o1, o2), 1), 3, component), m.sigmoid(), theirs.weight,
                        None, 1, 1, 1, 2, 2)
                else:
                    expected = mmcv_ops.deform_conv2d(x, project_offsets(offset, 3, component), theirs.weight,
                                                      1, 1, 1, 2, 2)
                torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_registered_for_build_conv_layer(mmcv_ops):
    from mmcv.cnn import build_conv_layer
    for name, cls in (('DecomposedDCN', DecomposedDCN), ('DFOnlyDCN', DFOnlyDCN), ('DKOnlyDCN', DKOnlyDCN)):
        layer = build_conv_layer(dict(type=name, deform_groups=1, modulated=True), 8, 8, kernel_size=3,
                                 stride=1, padding=1, dilation=1, bias=False)
        assert type(layer) is cls and layer.modulated


@pytest.mark.parametrize('dcn_type', ['DFOnlyDCN', 'DKOnlyDCN'])
def test_mmdet_resnet_with_variant(dcn_type, mmcv_ops):
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
DETECTOR_VARIANTS = {
    'dcn': dict(type='DecomposedDCN'),
    'dcn_df': dict(type='DFOnlyDCN'),
    'dcn_dk': dict(type='DKOnlyDCN'),
    'dcnv2': dict(type='DecomposedDCN', modulated=True),
    'dcnv2_df': dict(type='DFOnlyDCN', modulated=True),
    'dcnv2_dk': dict(type='DKOnlyDCN', modulated=True),
    'dkernel_local_s4': dict(type='DeformableKernel', mode='local', scope=4),
    'dkernel_global_s4': dict(type='DeformableKernel', mode='global', scope=4),
    'dcn_dkernel_local_s4': dict(type='DeformableKernel', mode='local', scope=4, deform_data=True),
}


@pytest.fixture(scope='module')
def detector_parts(mmcv_ops):
    """mmdet's Faster R-CNN R-50-FPN config (width 16, no pretrained weights) and a 2-image batch."""
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
    return model, dict(inputs=inputs, data_samples=samples)


@pytest.mark.slow
@pytest.mark.parametrize('variant', list(DETECTOR_VARIANTS))
def test_faster_rcnn_with_variant_trains_and_predicts(variant, detector_parts):
    from mmdet.registry import MODELS
    from mmengine.registry import MODELS as ROOT_MODELS
    layer_cfg = DETECTOR_VARIANTS[variant]
    if ROOT_MODELS.get(layer_cfg['type']) is None:
        pytest.skip(f"{layer_cfg['type']} is not registered (its layer has not landed)")
    model_cfg, data = detector_parts
    cfg = copy.deepcopy(model_cfg)  # ConfigDict.update would merge into an earlier variant's dcn
    cfg.backbone.dcn = dict(layer_cfg, fallback_on_stride=False)
    cfg.backbone.stage_with_dcn = (False, True, True, True)
    torch.manual_seed(0)
    model = MODELS.build(cfg)
    model.init_weights()
    deformable = [m for m in model.backbone.modules() if type(m).__name__ == ROOT_MODELS.get(layer_cfg['type']).__name__]
    assert len(deformable) == 4 + 6 + 3
    model.train()
    batch = model.data_preprocessor(data, True)
    losses = model(**batch, mode='loss')
    loss, _ = model.parse_losses(losses)
    assert torch.isfinite(loss)
    loss.backward()
    offset_grads = [p.grad for m in deformable for name, p in m.named_parameters() if 'offset' in name]
    assert offset_grads and all(g is not None and torch.isfinite(g).all() for g in offset_grads)
    assert sum(g.abs().sum() for g in offset_grads) > 0
    model.eval()
    with torch.no_grad():
        results = model(**model.data_preprocessor(data, False), mode='predict')
    assert len(results) == 2 and all('bboxes' in r.pred_instances for r in results)


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
