"""Layer description, selection and the recorders' attach / reset / stop bookkeeping."""
import pytest
import torch
from mmcv.ops import DeformConv2dPack, ModulatedDeformConv2dPack
from torch import nn

from deform_viz.hooks import LayerRecording, describe_deformable, select_offset_layers


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1),
                                      DeformConv2dPack(4, 4, 3, padding=1),
                                      ModulatedDeformConv2dPack(4, 4, 3, stride=2, padding=1))
        self.neck = DeformConv2dPack(4, 4, 3, padding=1)


def test_mmcv_layers_get_variant_keys():
    assert describe_deformable(DeformConv2dPack(4, 4, 3)) == dict(
        kind='dcn', variant='dcn', modulated=False, component='full')
    assert describe_deformable(ModulatedDeformConv2dPack(4, 4, 3)) == dict(
        kind='dcn', variant='dcnv2', modulated=True, component='full')
    assert describe_deformable(nn.Conv2d(4, 4, 3)) is None


def test_selection_defaults_to_the_backbone_and_follows_the_patterns():
    model = Model()
    names = [r.name for r in select_offset_layers(model, None, ['offset'], owner='Test')]
    assert names == ['backbone.1', 'backbone.2']
    names = [r.name for r in select_offset_layers(model, ['neck', 'backbone.2'], ['offset'], 'Test')]
    assert names == ['neck', 'backbone.2']
    masks = select_offset_layers(model, None, ['mask'], owner='Test')
    assert [(r.name, r.components) for r in masks] == [('backbone.2', ['mask'])]
    with pytest.raises(ValueError, match=r"Test: layers pattern 'head' matches no deformable layer"
                       r".*deformable layers: backbone\.1, backbone\.2, neck"):
        select_offset_layers(model, 'head', ['offset'], owner='Test')
    with pytest.raises(ValueError, match='Test: none of the selected layers has any of the '
                       r"components \['kernel_offset'\]"):
        select_offset_layers(model, None, ['kernel_offset'], owner='Test')
    with pytest.raises(ValueError, match=r'Test: the model \(Sequential\) has no deformable layer '
                       r"in its backbone \(deformable layers elsewhere: \['1'\]\)"):
        select_offset_layers(nn.Sequential(nn.Conv2d(3, 3, 1), DeformConv2dPack(3, 3, 3)), None,
                             ['offset'], owner='Test')


def test_forward_hooks_exist_only_between_start_and_stop():
    model = Model()
    recording = LayerRecording('Test', None, ['offset', 'mask', 'd_f'])
    hooked = lambda: sorted(n for n, m in model.named_modules() if m._forward_hooks)  # noqa: E731
    assert len(recording) == 0 and hooked() == []
    recording.start(model)
    assert hooked() == ['backbone.1', 'backbone.1.conv_offset', 'backbone.2',
                        'backbone.2.conv_offset']
    with torch.no_grad():
        model.backbone(torch.randn(2, 3, 12, 12))
    first, second = list(recording)
    assert first.batch_size == 2 and (first.in_size, first.out_size) == ((12, 12), (12, 12))
    assert (second.in_size, second.out_size) == ((12, 12), (6, 6))
    info, fields = second.image_fields(1, (12, 12), (9, 7))  # valid cells: ceil(9/2) x ceil(7/2)
    assert info['shape'] == [5, 4] and info['variant'] == 'dcnv2'
    assert info['input_stride'] == 1 and info['output_stride'] == 2
    assert {c: tuple(t.shape) for c, t in fields.items()} == {
        'offset': (1, 9, 2, 5, 4), 'mask': (1, 9, 5, 4), 'd_f': (1, 2, 5, 4)}
    recording.reset()
    assert first.batch_size is None
    with pytest.raises(RuntimeError, match="layer 'backbone.1' did not run in this batch"):
        first.image_fields(0, (12, 12), (12, 12))
    recording.stop()
    assert len(recording) == 0 and hooked() == []
