"""OffsetStatsHook: known offsets give known statistics; a real training run logs them."""
import json
import math
import os.path as osp
from glob import glob
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from mmcv.ops import DeformConv2dPack, ModulatedDeformConv2dPack
from mmengine.hooks import Hook
from mmengine.registry import HOOKS
from torch import nn

from conftest import DCN_CONFIG
from deform_viz.hooks import OffsetStatsHook
from deform_viz.hooks.offset_stats_hook import offset_statistics

SCALE, SHIFT = 0.5, (0.3, -0.2)  # tap (i, j) moves by SCALE * (i - 1, j - 1) + SHIFT
MASK_LOGIT, KERNEL_SHIFT = 0.8, 0.25
GRID = np.array([(i - 1, j - 1) for i in range(3) for j in range(3)], dtype=np.float64)


def known_offsets():
    """(9, 2) offsets of the taps: the 3x3 kernel scaled by 1 + SCALE and shifted by SHIFT."""
    return SCALE * GRID + np.array(SHIFT)


def set_bias(predictor: nn.Module, bias: np.ndarray):
    nn.init.zeros_(predictor.weight)
    predictor.bias.data = torch.tensor(bias, dtype=torch.float32)


def reference(offsets, used=None):
    """The statistics of constant per-tap offsets (9, 2), by the definitions."""
    used = offsets if used is None else used
    positions = (GRID + used).reshape(3, 3, 2)
    gaps = [np.linalg.norm(positions[:, 1:] - positions[:, :-1], axis=-1),
            np.linalg.norm(positions[1:] - positions[:-1], axis=-1)]
    d_f = offsets.mean(axis=0)
    return dict(offset=np.linalg.norm(offsets, axis=1).mean(), d_f=np.linalg.norm(d_f),
                d_k=np.linalg.norm(offsets - d_f, axis=1).mean(),
                effective_dilation=np.concatenate([g.ravel() for g in gaps]).mean())


def test_statistics_of_hand_built_fields():
    offsets = torch.tensor(known_offsets(), dtype=torch.float64)
    field = offsets[None, :, :, None, None].expand(2, 9, 2, 3, 4)  # 2 deform groups, 3 x 4 cells
    d_f = field.mean(1)
    stats = offset_statistics(dict(offset=field, d_f=d_f, d_k=field - d_f[:, None]), (3, 3), (1, 1))
    want = reference(known_offsets())
    assert want['effective_dilation'] == pytest.approx(1 + SCALE)  # a shift leaves the gaps alone
    counts = dict(offset=2 * 9 * 12, d_f=2 * 12, d_k=2 * 9 * 12, effective_dilation=2 * 12)
    assert {name: count for name, (total, count) in stats.items()} == counts
    for name, (total, count) in stats.items():
        assert total.item() / count == pytest.approx(want[name], rel=1e-12)

    # what the layer samples with decides the dilation: d_f only is a pure shift
    used = d_f[:, None].expand_as(field)
    stats = offset_statistics(dict(offset=field, offset_used=used, d_f=d_f, d_k=field - d_f[:, None]),
                              (3, 3), (2, 2))
    total, count = stats['effective_dilation']
    assert total.item() / count == pytest.approx(2.0, rel=1e-12)

    stats = offset_statistics(dict(mask=torch.full((1, 9, 2, 2), 0.25),
                                   kernel_offset=torch.full((9, 2), 3.0)), (3, 3), (1, 1))
    assert list(stats) == ['mask', 'kernel_offset']
    assert stats['mask'][0].item() / stats['mask'][1] == 0.25
    assert stats['kernel_offset'][0].item() / stats['kernel_offset'][1] == pytest.approx(3 * 2**0.5)


class TinyDetector(nn.Module):
    """Four deformable layers with known, constant offsets behind mmdet's data preprocessor."""

    def __init__(self):
        super().__init__()
        from mmdet.models.data_preprocessors import DetDataPreprocessor

        from deform_viz.layers import DeformableKernel, DFOnlyDCN
        self.data_preprocessor = DetDataPreprocessor(pad_size_divisor=8)
        dcn = DeformConv2dPack(3, 4, 3, padding=1)
        dcnv2 = ModulatedDeformConv2dPack(4, 4, 3, stride=2, padding=1)
        df_only = DFOnlyDCN(4, 4, 3, padding=1)
        dkernel = DeformableKernel(4, 4, 3, padding=1, mode='local', scope=4)
        packed = known_offsets().ravel()  # mmcv's layout: y0, x0, y1, x1, ...
        set_bias(dcn.conv_offset, packed)
        set_bias(dcnv2.conv_offset, np.concatenate([packed, np.full(9, MASK_LOGIT)]))
        set_bias(df_only.conv_offset, packed)
        set_bias(dkernel.conv_offset, np.full(18, KERNEL_SHIFT))
        self.backbone = nn.Sequential(dcn, dcnv2, df_only, dkernel)


def batch_of(sizes):
    from mmdet.structures import DetDataSample
    inputs = [torch.rand(3, h, w) * 255 for h, w in sizes]
    samples = [DetDataSample(metainfo=dict(img_shape=(h, w))) for h, w in sizes]
    return dict(inputs=inputs, data_samples=samples)


@pytest.fixture
def runner(tmp_path):
    from mmengine.logging import MessageHub, MMLogger
    from mmengine.visualization import Visualizer
    name = f'offset-stats-{tmp_path.name}'
    return SimpleNamespace(
        model=TinyDetector(), iter=0,
        visualizer=Visualizer(name=name, vis_backends=[dict(type='LocalVisBackend')],
                              save_dir=str(tmp_path / 'vis')),
        message_hub=MessageHub.get_instance(name), logger=MMLogger.get_instance(name))


def run_iter(hook, runner, sizes):
    hook.before_train_iter(runner, runner.iter)
    hooked = any(m._forward_hooks for m in runner.model.modules())
    with torch.no_grad():
        data = runner.model.data_preprocessor(batch_of(sizes), True)
        runner.model.backbone(data['inputs'])
    hook.after_train_iter(runner, runner.iter)
    runner.iter += 1
    return hooked


def test_known_offsets_give_known_scalars(runner, tmp_path, caplog):
    hook = HOOKS.build(dict(type='OffsetStatsHook', interval=3))
    hook.before_train(runner)
    # iteration 1 (the first) and 3 are recorded; images padded to 24 x 32
    assert [run_iter(hook, runner, [(17, 30), (24, 21)]) for _ in range(4)] == \
        [True, False, True, False]
    assert not any(m._forward_hooks for m in runner.model.modules())
    with open(tmp_path / 'vis' / 'vis_data' / 'scalars.json') as f:
        lines = [json.loads(line) for line in f]
    assert [line['step'] for line in lines] == [1, 3]
    scalars = lines[1]
    full, df_only = reference(known_offsets()), reference(known_offsets(), known_offsets().mean(0))
    want = {}
    for layer in ('backbone.0', 'backbone.1', 'backbone.2'):
        for name, value in (df_only if layer == 'backbone.2' else full).items():
            want[f'offsets/{name}/{layer}'] = value
    want['offsets/mask/backbone.1'] = 1 / (1 + math.exp(-MASK_LOGIT))
    want['offsets/kernel_offset/backbone.3'] = KERNEL_SHIFT * 2**0.5
    for name in ('offset', 'd_f', 'd_k'):
        want[f'offsets/{name}/mean'] = full[name]
    want['offsets/effective_dilation/mean'] = (2 * 1.5 + 1.0) / 3
    want['offsets/mask/mean'] = want['offsets/mask/backbone.1']
    want['offsets/kernel_offset/mean'] = want['offsets/kernel_offset/backbone.3']
    assert sorted(scalars) == sorted(want) + ['step']
    for key, value in want.items():
        assert scalars[key] == pytest.approx(value, rel=1e-6), key
    assert runner.message_hub.get_scalar('offsets/mask/mean').current() == \
        pytest.approx(want['offsets/mask/mean'], rel=1e-6)


def test_bad_options():
    with pytest.raises(ValueError, match='OffsetStatsHook: interval must be a positive integer'):
        OffsetStatsHook(interval=0)
    with pytest.raises(ValueError, match='OffsetStatsHook: bad regular expression'):
        OffsetStatsHook(layers='re:(')


def test_registered_for_mmdet_configs():
    from mmdet.registry import HOOKS as MMDET_HOOKS
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')
    hook = MMDET_HOOKS.build(dict(type='OffsetStatsHook', interval=7, layers='layer4'))
    assert type(hook) is OffsetStatsHook and hook.interval == 7


class ForwardHookProbe(Hook):
    """Whether any forward hook is attached when each training iteration starts."""
    priority = 'LOWEST'  # after OffsetStatsHook attached its own
    seen = []

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        model = runner.model
        ForwardHookProbe.seen.append(any(m._forward_hooks for m in model.modules()))


@pytest.mark.slow
def test_training_run_logs_the_statistics(synthetic_data_root, tmp_path):
    """4 iterations of the CPU DCNv2 detector from zero offsets, recorded at 1, 2 and 4."""
    from deform_viz.engine import load_config, train, use_synthetic_data
    HOOKS.register_module(name='ForwardHookProbeForTest', module=ForwardHookProbe, force=True)
    ForwardHookProbe.seen = []
    cfg = load_config(DCN_CONFIG, work_dir=str(tmp_path / 'work'))
    use_synthetic_data(cfg, synthetic_data_root, (96, 96))
    # from scratch (zero offsets at iteration 1), so BN statistics are learned and nothing frozen
    cfg.model.backbone.update(init_cfg=None, norm_eval=False, frozen_stages=-1)
    cfg.model.backbone.dcn = dict(type='DecomposedDCN', modulated=True, deform_groups=1,
                                  fallback_on_stride=False)
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=4)
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = cfg.default_hooks.checkpoint = None
    cfg.param_scheduler = None  # no warm-up, and offsets at 10^4 x the LR: they move at once
    cfg.optim_wrapper.paramwise_cfg = dict(custom_keys=dict(conv_offset=dict(lr_mult=1e4)))
    cfg.custom_hooks = [dict(type='OffsetStatsHook', interval=2),
                        dict(type='ForwardHookProbeForTest')]
    runner = train(cfg)

    assert ForwardHookProbe.seen == [True, True, False, True]
    assert not any(m._forward_hooks for m in runner.model.modules())
    scalars_file, = glob(osp.join(cfg.work_dir, '*', 'vis_data', 'scalars.json'))
    with open(scalars_file) as f:
        lines = [json.loads(line) for line in f]
    logged = {line['step']: line for line in lines if 'offsets/offset/mean' in line}
    assert sorted(logged) == [1, 2, 4]
    layers = [f'backbone.layer{s}.{b}.conv2' for s, n in ((2, 4), (3, 6), (4, 3)) for b in range(n)]
    names = ('offset', 'd_f', 'd_k', 'effective_dilation', 'mask')
    for line in logged.values():
        assert sorted(line) == sorted([f'offsets/{n}/{layer}' for n in names
                                       for layer in layers + ['mean']] + ['step'])
        for name in names:
            per_layer = [line[f'offsets/{name}/{layer}'] for layer in layers]
            assert line[f'offsets/{name}/mean'] == pytest.approx(np.mean(per_layer), rel=1e-12)
        for layer in layers:  # the length of a mean is at most the mean length
            assert line[f'offsets/d_f/{layer}'] <= line[f'offsets/offset/{layer}'] + 1e-12

    first, last = logged[1], logged[4]
    for layer in layers:  # zero-initialised predictors: a plain conv with mask 0.5
        assert [first[f'offsets/{n}/{layer}'] for n in names] == [0.0, 0.0, 0.0, 1.0, 0.5]
    assert last['offsets/offset/mean'] > 1e-3 and last['offsets/d_k/mean'] > 1e-3
    assert abs(last['offsets/effective_dilation/mean'] - 1.0) > 1e-5
    assert abs(last['offsets/mask/mean'] - 0.5) > 1e-5
    assert runner.message_hub.get_scalar('offsets/offset/mean').current() == \
        last['offsets/offset/mean']
    log_file, = glob(osp.join(cfg.work_dir, '*', '*.log'))
    with open(log_file) as f:
        log = f.read()
    assert ('OffsetStatsHook: iter 1, mean over layers: offset 0, d_f 0, d_k 0, '
            'effective_dilation 1, mask 0.5\n') in log
    assert log.count('OffsetStatsHook: iter') == 3
