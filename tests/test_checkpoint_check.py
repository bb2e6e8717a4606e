"""DeformableCheckpointGuard on single layers, loaded the way mmengine's runner loads a checkpoint
(after_load_checkpoint, then mmengine's own state-dict loader)."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from mmcv.ops import DeformConv2dPack, ModulatedDeformConv2dPack
from mmengine.config import Config
from mmengine.runner.checkpoint import _load_checkpoint_to_model

from deform_viz.checkpoint_check import CheckpointMismatchError, DeformableCheckpointGuard, deformable_layers
from deform_viz.layers import DecomposedDCN, DeformableKernel, DFOnlyDCN


class Block(nn.Module):
    """A rigid 1x1 conv, then the 3x3 layer under test (named ``conv2`` as in mmdet's ResNet)."""

    def __init__(self, conv2: nn.Module, channels: int = 4):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 1)
        self.conv2 = conv2


def load(model: nn.Module, trained: nn.Module) -> None:
    guard = DeformableCheckpointGuard()
    runner = SimpleNamespace(model=model, cfg=Config(dict(load_from='trained.pth')), work_dir='.')
    guard.after_load_checkpoint(runner, {})
    _load_checkpoint_to_model(model, {'state_dict': trained.state_dict()})


def fix_for(model: nn.Module, trained: nn.Module) -> str:
    with pytest.raises(CheckpointMismatchError) as info:
        load(model, trained)
    return str(info.value).split('\nLikely fix: ')[1]


def test_every_deformable_layer_type_is_recognised():
    layers = [DeformConv2dPack(4, 4, 3, padding=1), ModulatedDeformConv2dPack(4, 4, 3, padding=1),
              DecomposedDCN(4, 4, 3, padding=1), DFOnlyDCN(4, 4, 3, padding=1),
              DeformableKernel(4, 4, 3, padding=1, scope=4), nn.Conv2d(4, 4, 3, padding=1)]
    model = nn.Sequential(*layers)
    assert [name for name, _ in deformable_layers(model)] == ['0', '1', '2', '3', '4']


def test_matching_checkpoint_loads_and_leaves_no_hooks():
    model, trained = Block(DFOnlyDCN(4, 4, 3, padding=1)), Block(DecomposedDCN(4, 4, 3, padding=1))
    nn.init.normal_(trained.conv2.conv_offset.weight)
    load(model, trained)  # a full DCN's tensors are a d_f-only layer's: test-time projection
    assert torch.equal(model.conv2.conv_offset.weight, trained.conv2.conv_offset.weight)
    assert not model._load_state_dict_post_hooks and not model.conv2._load_state_dict_pre_hooks


def test_message_names_layer_tensors_and_shapes():
    model, trained = Block(DFOnlyDCN(4, 4, 3, padding=1)), Block(DFOnlyDCN(4, 4, 3, padding=1, modulated=True))
    with pytest.raises(CheckpointMismatchError) as info:
        load(model, trained)
    assert str(info.value).splitlines()[:2] == [
        'trained.pth does not fit 1 deformable layer(s) of the model (loaded anyway, these tensors would '
        'keep their initial values, offset predictors zero, and the results would not be those of this '
        'model):',
        '  conv2 (DFOnlyDCN): conv_offset.weight (27, 4, 3, 3) in the checkpoint, (18, 4, 3, 3) here; '
        'conv_offset.bias (27) in the checkpoint, (18) here']


@pytest.mark.parametrize('layer, trained, fix', [
    (DFOnlyDCN(4, 4, 3, padding=1), DFOnlyDCN(4, 4, 3, padding=1, modulated=True),
     "the checkpoint was trained with a modulated DCN (DCNv2, offsets and masks): set modulated=True "
     "(mmcv: type='DCNv2')"),
    (ModulatedDeformConv2dPack(4, 4, 3, padding=1, bias=False), DeformConv2dPack(4, 4, 3, padding=1),
     "the checkpoint was trained with DCN v1 (offsets, no masks): set modulated=False (mmcv: type='DCN')"),
    (DecomposedDCN(4, 4, 3, padding=1), DecomposedDCN(4, 4, 3, padding=1, deform_groups=2),
     'the checkpoint was trained with deform_groups=2'),
    (DeformableKernel(4, 4, 3, padding=1, scope=4), DeformableKernel(4, 4, 3, padding=1, scope=5),
     'the checkpoint was trained with a 5x5 kernel scope: set scope=(5, 5)'),
    (DeformableKernel(4, 4, 3, padding=1, scope=4), DeformableKernel(4, 4, 3, padding=1, scope=4, mode='global'),
     "the checkpoint's Deformable Kernel predicts offsets globally: set mode='global'"),
    (DeformableKernel(4, 4, 3, padding=1, scope=4, deform_data=True), DeformableKernel(4, 4, 3, padding=1, scope=4),
     'the checkpoint was trained without data offsets: set deform_data=False'),
    (DeformableKernel(4, 4, 3, padding=1, scope=4), nn.Conv2d(4, 4, 3, padding=1, bias=False),
     'the checkpoint has no offset predictor here: it was trained with a rigid conv in this stage (a baseline, '
     'or another stage_with_dcn); evaluate it with its own config'),
], ids=['v2-into-v1', 'v1-into-v2', 'deform-groups', 'dk-scope', 'dk-mode', 'dk-data-offsets', 'rigid-into-dk'])
def test_likely_fix(layer, trained, fix):
    assert fix_for(Block(layer), Block(trained)) == fix


def test_rigid_conv_weight_mapped_into_the_dk_scope_is_not_a_mismatch():
    """DeformableKernel maps a K x K weight into its scope on load: only the missing offset
    predictor is reported, not the weight's other shape."""
    with pytest.raises(CheckpointMismatchError) as info:
        load(Block(DeformableKernel(4, 4, 3, padding=1, scope=4)), Block(nn.Conv2d(4, 4, 3, padding=1, bias=False)))
    assert '  conv2 (DeformableKernel): conv_offset.weight missing; conv_offset.bias missing\n' in str(info.value)


def test_other_mismatches_stay_warnings():
    model, trained = Block(DFOnlyDCN(4, 4, 3, padding=1)), Block(DFOnlyDCN(4, 4, 3, padding=1))
    trained.conv1 = nn.Conv2d(4, 8, 1)  # a rigid layer of another shape: mmengine warns, loads the rest
    nn.init.normal_(trained.conv2.weight)
    load(model, trained)
    assert torch.equal(model.conv2.weight, trained.conv2.weight)
    assert model.conv1.weight.shape == (4, 4, 1, 1)
