"""deform_viz.engine: the Config editors, train / evaluate and their checkpoint guard, --amp on CPU."""
import glob
import math
import os.path as osp
import traceback

import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from conftest import CPU_CONFIG_DIR, REPO, synthetic_config
from deform_viz import engine
from deform_viz.checkpoint_check import CheckpointMismatchError, DeformableCheckpointGuard
from deform_viz.engine import (build_runner, evaluate, load_config, set_image_scale, set_schedule, train,
                               use_amp, use_synthetic_data)

DF_CONFIG = osp.join(CPU_CONFIG_DIR, 'faster-rcnn_r50-w16-dconv-df-c3-c5_fpn_synthetic.py')
CPU_CONFIGS = sorted(glob.glob(osp.join(CPU_CONFIG_DIR, '*.py')))
COCO_FASTER = osp.join(REPO, 'configs', 'revisiting_dcn', 'faster-rcnn_r50_fpn_2xb4-1x_coco.py')
COCO_KEYS = {f'coco/bbox_{k}' for k in ('mAP', 'mAP_50', 'mAP_75', 'mAP_s', 'mAP_m', 'mAP_l')}


# ------------------------------------------------------------------------------ editors
def _resize_scales(cfg, split):
    return [t['scale'] for t in cfg[f'{split}_dataloader'].dataset.pipeline if t['type'] == 'Resize']


def test_set_image_scale_finds_resize_by_type():
    cfg = Config.fromfile(DF_CONFIG)
    configured = [tuple(cfg.image_scale)]
    set_image_scale(cfg, (96, 96), splits=('test',))
    assert _resize_scales(cfg, 'test') == [(96, 96)]
    assert _resize_scales(cfg, 'train') == _resize_scales(cfg, 'val') == configured != [(96, 96)]
    set_image_scale(cfg, [64, 80])
    assert [_resize_scales(cfg, s) for s in ('train', 'val', 'test')] == [[(64, 80)]] * 3
    for split in ('train', 'val', 'test'):
        pipeline = cfg[f'{split}_dataloader'].dataset.pipeline
        pipeline[:] = [t for t in pipeline if t['type'] != 'Resize']
    with pytest.raises(ValueError, match=r'no Resize transform in the train/val/test pipelines to set '
                       r'the scale \(64, 64\) on'):
        set_image_scale(cfg, (64, 64))


def test_use_synthetic_data_points_every_loader_and_metric_at_the_data():
    cfg = use_synthetic_data(Config.fromfile(DF_CONFIG), '/data/shapes', (128, 128))
    assert [cfg[f'{s}_dataloader'].dataset.data_root for s in ('train', 'val', 'test')] == ['/data/shapes/'] * 3
    for split in ('val', 'test'):  # CocoMetric and BestIoUMetric
        metrics = cfg[f'{split}_evaluator']
        assert [m.ann_file for m in metrics] == ['/data/shapes/annotations/instances_val.json'] * len(metrics)
    assert _resize_scales(cfg, 'val') == [(128, 128)]


def test_set_schedule_iterations_keeps_the_lr_steps_fractions():
    cfg = set_schedule(Config.fromfile(DF_CONFIG), 60, warmup_iters=4)
    assert (cfg.train_cfg.max_iters, cfg.train_cfg.val_interval, cfg.default_hooks.checkpoint.interval) == (60, 60, 60)
    warmup, steps = cfg.param_scheduler
    assert (warmup.type, warmup.end) == ('LinearLR', 4)
    assert (steps.type, steps.milestones, steps.end) == ('MultiStepLR', [45, 55], 60)


def test_set_schedule_epochs_leaves_the_iteration_warmup():
    cfg = set_schedule(Config.fromfile(COCO_FASTER), 6)
    assert (cfg.train_cfg.max_epochs, cfg.train_cfg.val_interval, cfg.default_hooks.checkpoint.interval) == (6, 6, 6)
    warmup, steps = cfg.param_scheduler
    assert (warmup.type, warmup.end) == ('LinearLR', 500)  # iterations, not epochs
    assert (steps.milestones, steps.end) == ([4, 6], 6)  # 8 and 11 of 12


def test_set_schedule_errors():
    cfg = Config.fromfile(DF_CONFIG)
    with pytest.raises(ValueError, match='at least 1, got 0'):
        set_schedule(cfg, 0)
    cfg.param_scheduler = [s for s in cfg.param_scheduler if s.type != 'LinearLR']
    with pytest.raises(ValueError, match='no iteration-based LinearLR warm-up to set to 4'):
        set_schedule(cfg, 8, warmup_iters=4)
    cfg.train_cfg = dict(type='MyLoop')
    with pytest.raises(ValueError, match=r"set_schedule needs one of .*got train_cfg.type='MyLoop'"):
        set_schedule(cfg, 8)


@pytest.fixture
def no_cuda(monkeypatch):
    """torch sees no GPU; returns a setter for the GPUs the driver reports (none at first)."""
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    monkeypatch.delenv('CUDA_VISIBLE_DEVICES', raising=False)
    gpus = []
    monkeypatch.setattr(engine, 'driver_gpus', lambda: list(gpus))
    return lambda *names: gpus.extend(names)


def test_use_amp_picks_the_wrapper_of_the_device():
    cfg = use_amp(Config.fromfile(DF_CONFIG))
    if torch.cuda.is_available():
        assert (cfg.optim_wrapper.type, cfg.optim_wrapper.loss_scale) == ('AmpOptimWrapper', 'dynamic')
    else:
        assert cfg.optim_wrapper.type == 'CPUAmpOptimWrapper'


def test_amp_without_cuda_says_it_runs_bfloat16_on_cpu(no_cuda):
    with pytest.warns(engine.CPUFallbackWarning, match='--amp without a GPU that torch can use: the backbone '
                      r'trains under bfloat16 autocast on the CPU \(CPUAmpOptimWrapper\), not float16 on a GPU'):
        assert use_amp(Config.fromfile(DF_CONFIG)).optim_wrapper.type == 'CPUAmpOptimWrapper'


def test_amp_is_refused_on_gpus_torch_cannot_use(no_cuda, monkeypatch):
    no_cuda(*['NVIDIA H200'] * 8)
    cfg = Config.fromfile(DF_CONFIG)
    with pytest.raises(RuntimeError, match=r'--amp: this machine has 8 GPU\(s\) \(NVIDIA H200\) but torch .* cannot '
                       r'use CUDA \(.*\), so the backbone trains under bfloat16 autocast on the CPU .* run on the CPU '
                       r'on purpose with CUDA_VISIBLE_DEVICES='):
        use_amp(cfg)
    assert cfg.optim_wrapper.type == 'OptimWrapper'  # unchanged
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '')
    with pytest.warns(engine.CPUFallbackWarning, match='--amp without a GPU'):
        assert use_amp(cfg).optim_wrapper.type == 'CPUAmpOptimWrapper'


def test_launcher_pytorch_is_refused_on_gpus_torch_cannot_use(no_cuda):
    """Eight ranks on CPU over gloo on a GPU machine: refused before any process group starts."""
    import torch.distributed as dist
    no_cuda('NVIDIA A100-SXM4-80GB')
    cfg = Config.fromfile(DF_CONFIG)
    cfg.launcher = 'pytorch'
    with pytest.raises(RuntimeError, match=r'--launcher pytorch: this machine has 1 GPU\(s\) \(NVIDIA A100-SXM4-80GB\)'
                       r' .* so each process trains on the CPU, the ranks talk over gloo'):
        build_runner(cfg)
    assert not dist.is_initialized()


def test_load_config_checks_the_backbone():
    with pytest.raises(KeyError, match=r"backbone.dcn.type='DCNN' is not a registered deformable conv layer"):
        load_config(DF_CONFIG, {'model.backbone.dcn.type': 'DCNN'})


def test_every_runner_carries_the_checkpoint_guard(synthetic_data_root, tmp_path):
    runner = build_runner(synthetic_config(DF_CONFIG, synthetic_data_root, str(tmp_path)))
    assert sum(isinstance(h, DeformableCheckpointGuard) for h in runner.hooks) == 1


# ------------------------------------------------------------------------------ train / evaluate
def test_evaluate_rejects_bad_arguments_before_building(synthetic_data_root, tmp_path):
    checkpoint = tmp_path / 'w.pth'
    checkpoint.write_bytes(b'')
    cfg = synthetic_config(DF_CONFIG, synthetic_data_root, str(tmp_path / 'work'))
    with pytest.raises(ValueError, match='--out must name a .pkl file, got results.json'):
        evaluate(cfg, str(checkpoint), out='results.json')
    with pytest.raises(ValueError, match='dump options need a dump directory'):
        evaluate(cfg, str(checkpoint), dump_options=dict(max_images=3))
    with pytest.raises(FileNotFoundError, match='checkpoint .*no-such.pth not found'):
        evaluate(cfg, str(tmp_path / 'no-such.pth'))
    assert not (tmp_path / 'work').exists()  # no runner was built


def _checkpoint_of(config, path, **dcn):
    """A checkpoint (mmengine layout) of ``config``'s model built with ``dcn`` overrides."""
    from mmengine.config import Config
    from mmdet.registry import MODELS
    cfg = Config.fromfile(config)
    cfg.model.backbone.dcn.update(dcn)
    model = MODELS.build(cfg.model)
    model.init_weights()
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, path)
    return str(path)


def _frames(info):
    return {frame.name for frame in traceback.extract_tb(info.tb)}


@pytest.mark.slow
def test_dcnv2_checkpoint_into_df_config_stops_before_evaluating(synthetic_data_root, tmp_path):
    from mmengine.config import Config
    layer = Config.fromfile(DF_CONFIG).model.backbone.dcn.type
    checkpoint = _checkpoint_of(DF_CONFIG, tmp_path / 'dcnv2.pth', modulated=True)
    cfg = synthetic_config(DF_CONFIG, synthetic_data_root, str(tmp_path / 'test'),
                           {'test_dataloader.dataset.indices': 1})
    with pytest.raises(CheckpointMismatchError) as info:
        evaluate(cfg, checkpoint)
    message = str(info.value)
    assert message.startswith(f'{checkpoint} does not fit 13 deformable layer(s) of the model')
    assert (f'backbone.layer2.0.conv2 ({layer}): conv_offset.weight (27, 32, 3, 3) in the checkpoint, '
            '(18, 32, 3, 3) here; conv_offset.bias (27) in the checkpoint, (18) here') in message
    assert '... and 9 more layers' in message
    assert message.endswith("Likely fix: the checkpoint was trained with a modulated DCN (DCNv2, offsets "
                            "and masks): set modulated=True (mmcv: type='DCNv2')")
    assert 'run_iter' not in _frames(info)  # not a single image evaluated


@pytest.mark.slow
def test_matching_checkpoint_is_evaluated(tiny_checkpoint, tmp_path):
    """The full-DCN checkpoint into the d_f-only config: the same tensors, so it loads and runs."""
    cfg = synthetic_config(DF_CONFIG, tiny_checkpoint.data_root, str(tmp_path / 'test'),
                           {'model.test_cfg.rcnn.score_thr': 0.0})  # 8 iterations: keep every box
    assert COCO_KEYS <= set(evaluate(cfg, tiny_checkpoint.checkpoint))


@pytest.mark.slow
@pytest.mark.parametrize('resume', [False, True], ids=['load_from', 'resume'])
def test_train_from_unfit_checkpoint_stops_before_the_first_iteration(tiny_checkpoint, tmp_path, resume):
    """A full-DCN (v1) checkpoint into the same model built as DCNv2."""
    cfg = synthetic_config(tiny_checkpoint.config, tiny_checkpoint.data_root, str(tmp_path / 'work'),
                           {'model.backbone.dcn.modulated': True})
    cfg.load_from = None if resume else tiny_checkpoint.checkpoint
    with pytest.raises(CheckpointMismatchError, match=r'DCN v1 \(offsets, no masks\): set modulated=False') as info:
        train(cfg, resume=tiny_checkpoint.checkpoint if resume else None)
    assert 'run_iter' not in _frames(info)
    assert not glob.glob(str(tmp_path / 'work' / '*.pth'))


@pytest.mark.slow
def test_guard_ignores_imagenet_style_init(synthetic_data_root, tmp_path):
    """Weights a backbone's init_cfg loads (here: a plain ResNet's, no offset predictors) are
    not a checkpoint of the model: mmengine's warning stays a warning."""
    from mmengine.config import Config
    from mmdet.registry import MODELS
    baseline = Config.fromfile(osp.join(CPU_CONFIG_DIR, 'faster-rcnn_r50-w16_fpn_synthetic.py'))
    torch.save({'state_dict': MODELS.build(baseline.model.backbone).state_dict()}, tmp_path / 'resnet.pth')
    cfg = synthetic_config(DF_CONFIG, synthetic_data_root, str(tmp_path / 'work'),
                           {'train_dataloader.dataset.indices': 1, 'train_dataloader.batch_size': 1})
    cfg.model.backbone.init_cfg = dict(type='Pretrained', checkpoint=str(tmp_path / 'resnet.pth'))
    set_schedule(cfg, 1)
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    assert train(cfg).iter == 1


# ------------------------------------------------------------------------------ --amp
@HOOKS.register_module(force=True)
class RecordC5DtypeForTest(Hook):
    """Records the output dtype of the first c5 bottleneck's 3x3 conv in every training forward."""

    def __init__(self):
        self.dtypes = []

    def before_train(self, runner):
        runner.model.backbone.layer4[0].conv2.register_forward_hook(
            lambda module, args, output: self.dtypes.append(output.dtype))


@pytest.mark.slow
@pytest.mark.parametrize('config', CPU_CONFIGS, ids=osp.basename)
def test_amp_trains_every_variant(config, synthetic_data_root, tmp_path):
    """``--amp``: one iteration with the backbone under bfloat16 autocast on a CPU-only machine,
    under mmengine's float16 AmpOptimWrapper where torch sees a GPU (the runner moves the model
    there)."""
    cfg = synthetic_config(config, synthetic_data_root, str(tmp_path / 'work'),
                           {'train_dataloader.dataset.indices': 2, 'train_dataloader.batch_size': 2})
    set_schedule(cfg, 1)
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    cfg.custom_hooks = [dict(type='RecordC5DtypeForTest')]
    runner = train(cfg, amp=True)
    wrapper, dtype = ('AmpOptimWrapper', torch.float16) if torch.cuda.is_available() else \
        ('CPUAmpOptimWrapper', torch.bfloat16)
    assert type(runner.optim_wrapper).__name__ == wrapper
    (recorder,) = [h for h in runner.hooks if isinstance(h, RecordC5DtypeForTest)]
    assert recorder.dtypes == [dtype]  # one training forward, autocast
    assert math.isfinite(runner.message_hub.get_scalar('train/loss').current())
    # autocast is attached to the backbone for the training step only
    assert not runner.model.backbone._forward_pre_hooks and not runner.model.backbone._forward_hooks
    conv = runner.model.backbone.layer4[0].conv2
    with torch.no_grad():
        assert conv(torch.zeros(1, 128, 4, 4, device=conv.weight.device)).dtype == torch.float32
