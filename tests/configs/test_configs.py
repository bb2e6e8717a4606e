"""The COCO configs: they load, keep the papers' protocol, differ from mmdet's configs only where
they should, build their models, and train one iteration + evaluate through deform_viz.engine."""
import copy
import functools
import os.path as osp

import pytest
from coco_runs import (COCO_CONFIG_DIRS, REPO, all_configs, coco_configs, config_path, evaluate_once,
                       train_once)

REVISITING = coco_configs('revisiting_dcn')
DKERNEL = coco_configs('deformable_kernels')
PROJECTION = coco_configs('test_time_projection')
TRAINED = REVISITING + DKERNEL

BBOX_KEYS = {f'coco/bbox_{k}' for k in ('mAP', 'mAP_50', 'mAP_75', 'mAP_s', 'mAP_m', 'mAP_l')}
SEGM_KEYS = {k.replace('bbox', 'segm') for k in BBOX_KEYS}
# The paper's protocol per detector: images per GPU x 2 GPUs, lr linear in the total batch.
PROTOCOL = {'faster-rcnn': dict(batch_size=4, gpus=2), 'mask-rcnn': dict(batch_size=2, gpus=2)}
# The 3x3 conv class of c3-c5 that each config must build (c2 always keeps nn.Conv2d).
LAYER_OF = {
    'r50_fpn': 'Conv2d',
    'r50-dconv-c3-c5': 'DeformConv2dPack',  # mmcv's DCN, the registry name mmdet's dcn configs use
    'r50-dconv-df-c3-c5': 'DFOnlyDCN',
    'r50-dconv-dk-c3-c5': 'DKOnlyDCN',
    'r50-dkernel-local-s4-c3-c5': 'DeformableKernel',
    'r50-dkernel-global-s4-c3-c5': 'DeformableKernel',
    'r50-dconv-dkernel-local-s4-c3-c5': 'DeformableKernel',
}


def rel(path):
    return osp.relpath(path, REPO)


def detector(path):
    return osp.basename(path).split('_')[0]


def expected_layer(path):
    name = osp.basename(path)
    if name.endswith(('_test-df.py', '_test-dk.py')):
        return {'df': 'DFOnlyDCN', 'dk': 'DKOnlyDCN'}[name[-5:-3]]
    component = name.split('_')[1] + ('_fpn' if name.split('_')[1] == 'r50' else '')
    return LAYER_OF[component]


@functools.lru_cache(maxsize=None)
def _load(path):
    from mmengine.config import Config
    if path.startswith('mmdet::'):
        from mmengine.utils import get_installed_path
        path = osp.join(get_installed_path('mmdet'), '.mim', 'configs', path[len('mmdet::'):])
    return Config.fromfile(path, import_custom_modules=False)


def load(path):
    """Config.fromfile, also for mmdet's own configs named as in `_base_` ('mmdet::dcn/...');
    parsed once per session, a fresh copy per call."""
    return copy.deepcopy(_load(path))


def flatten(value, prefix=''):
    """{'a': {'b': 1}, 'l': [x]} -> {'a.b': 1, 'l.0': x}"""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return {prefix: value}
    out = {}
    for key, item in items:
        out.update(flatten(item, f'{prefix}.{key}' if prefix else str(key)))
    return out


def differing_keys(a, b):
    """Dotted keys whose values differ; the `_scope_='mmdet'` tags mmengine adds to dicts inherited
    through `mmdet::` are bookkeeping, not settings."""
    fa, fb = flatten(a.to_dict()), flatten(b.to_dict())
    keys = {k for k in fa.keys() | fb.keys() if not k.endswith('_scope_')}
    return {k for k in keys if fa.get(k, '<missing>') != fb.get(k, '<missing>')}


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
    # one folder for the whole session, shared with tests/tools/test_collect_results.py
    path = tmp_path_factory.getbasetemp() / 'coco_runs'
    path.mkdir(exist_ok=True)
    return str(path)


def test_every_folder_has_its_configs():
    assert len(REVISITING) == 8 and len(DKERNEL) == 5 and len(PROJECTION) == 4
    for folder in COCO_CONFIG_DIRS:
        assert osp.isfile(osp.join(REPO, 'configs', folder, 'README.md'))


@pytest.mark.parametrize('path', all_configs(), ids=rel)
def test_config_loads(path):
    cfg = load(path)
    assert cfg.model.type in ('FasterRCNN', 'MaskRCNN', 'DeformableDETR', 'DINO')
    if path in coco_configs():
        assert cfg.custom_imports == dict(imports=['deform_viz'], allow_failed_imports=False)


@pytest.mark.parametrize('path', [p for p in all_configs() if p not in coco_configs()], ids=rel)
def test_other_configs_build_without_pretrained(path):
    """Configs outside the COCO folders (built by the runs below) still build their model."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    cfg = load(path)
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    model.init_weights()
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.parametrize('path', coco_configs(), ids=rel)
def test_protocol(path):
    """Section 4 of the paper: batch 8 (Faster) / 4 (Mask) on 2 GPUs, SGD, 1x, linear lr, NMS 0.5."""
    cfg = load(path)
    det = detector(path)
    want = PROTOCOL[det]
    total = want['batch_size'] * want['gpus']
    assert cfg.model.type == {'faster-rcnn': 'FasterRCNN', 'mask-rcnn': 'MaskRCNN'}[det]
    assert cfg.train_dataloader.batch_size == want['batch_size']
    assert cfg.optim_wrapper.optimizer.type == 'SGD'
    assert cfg.optim_wrapper.optimizer.lr == pytest.approx(0.02 * total / 16)
    assert cfg.optim_wrapper.optimizer.momentum == 0.9
    assert cfg.optim_wrapper.optimizer.weight_decay == 1e-4
    assert cfg.auto_scale_lr == dict(enable=False, base_batch_size=total)
    assert cfg.train_cfg.type == 'EpochBasedTrainLoop' and cfg.train_cfg.max_epochs == 12  # 1x
    steps = [s for s in cfg.param_scheduler if s.type == 'MultiStepLR']
    assert [s.milestones for s in steps] == [[8, 11]]
    assert cfg.model.test_cfg.rcnn.nms == dict(type='nms', iou_threshold=0.5)
    assert cfg.model.backbone.depth == 50 and cfg.model.neck.type == 'FPN'
    assert cfg.train_dataloader.dataset.ann_file == 'annotations/instances_train2017.json'
    assert cfg.val_dataloader.dataset.ann_file == 'annotations/instances_val2017.json'
    assert cfg.val_evaluator.type == 'CocoMetric'
    metrics = cfg.val_evaluator.metric
    assert (metrics == ['bbox', 'segm']) if det == 'mask-rcnn' else (metrics == 'bbox')
    assert 'TestTimeAug' not in str(cfg.test_dataloader.dataset.pipeline)


@pytest.mark.parametrize('gpus', [1, 2, 4, 8])
@pytest.mark.parametrize('path', REVISITING + DKERNEL, ids=rel)
def test_auto_scale_lr_keeps_the_linear_rule(path, gpus):
    """--auto-scale-lr makes mmengine use lr x (GPUs x batch_size) / base_batch_size (Runner.scale_lr):
    with our base batch that is the protocol's 0.02 x (total batch) / 16 for any GPU count."""
    cfg = load(path)
    total = gpus * cfg.train_dataloader.batch_size
    scaled = cfg.optim_wrapper.optimizer.lr * total / cfg.auto_scale_lr.base_batch_size
    assert scaled == pytest.approx(0.02 * total / 16)


@pytest.mark.parametrize('det', ['faster-rcnn', 'mask-rcnn'])
def test_baselines_are_mmdet_configs_plus_protocol(det):
    """Our baseline differs from mmdet's own 1x config only in batch size, lr and its base batch,
    and the import of deform_viz (the pinned NMS IoU 0.5 is mmdet's value too)."""
    ours = load(next(p for p in REVISITING if detector(p) == det and '_r50_fpn_' in p))
    base = {'faster-rcnn': 'faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py',
            'mask-rcnn': 'mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'}[det]
    mmdet_cfg = load(f'mmdet::{base}')
    expected = {'optim_wrapper.optimizer.lr', 'auto_scale_lr.base_batch_size',
                'custom_imports.imports.0', 'custom_imports.allow_failed_imports'}
    if det == 'faster-rcnn':  # mmdet trains both at 2 images per GPU (on 8 GPUs)
        expected.add('train_dataloader.batch_size')
    assert differing_keys(ours, mmdet_cfg) == expected


@pytest.mark.parametrize('det', ['faster-rcnn', 'mask-rcnn'])
def test_full_dcn_row_is_mmdets_dcn(det):
    ours = load(next(p for p in REVISITING if detector(p) == det and '-dconv-c3-c5_' in p))
    mmdet_dcn = load(f'mmdet::dcn/{det}_r50-dconv-c3-c5_fpn_1x_coco.py')
    assert ours.model.backbone == mmdet_dcn.model.backbone
    assert differing_keys(ours, mmdet_dcn) <= {
        'train_dataloader.batch_size', 'optim_wrapper.optimizer.lr', 'auto_scale_lr.base_batch_size',
        'custom_imports.imports.0', 'custom_imports.allow_failed_imports'}


@pytest.mark.parametrize('path', [p for p in REVISITING if '-dconv-df-' in p or '-dconv-dk-' in p] + PROJECTION,
                         ids=rel)
def test_projection_rows_change_only_the_layer_type(path):
    """d_f / d_k rows (trained, and test-time) are the DCN row with another layer type."""
    dcn = config_path('revisiting_dcn', f'{detector(path)}_r50-dconv-c3-c5_fpn_'
                      f"{'2xb4' if detector(path) == 'faster-rcnn' else '2xb2'}-1x_coco.py")
    assert differing_keys(load(path), load(dcn)) == {'model.backbone.dcn.type'}
    assert load(path).model.backbone.dcn.type == expected_layer(path)


@pytest.mark.parametrize('path', DKERNEL, ids=rel)
def test_deformable_kernel_rows(path):
    cfg = load(path)
    dcn = cfg.model.backbone.dcn
    name = osp.basename(path)
    assert dcn.type == 'DeformableKernel' and dcn.scope == 4
    assert dcn.mode == ('global' if '-global-' in name else 'local')
    assert bool(dcn.get('deform_data', False)) == ('-dconv-dkernel-' in name)
    assert cfg.model.backbone.stage_with_dcn == (False, True, True, True)
    assert cfg.optim_wrapper.paramwise_cfg.custom_keys == {'conv2.conv_offset': dict(lr_mult=0.01)}


# ------------------------------------------------------------------------------------------------
# Real runs (slow): one iteration + COCO evaluation through deform_viz.engine.train / evaluate
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize('path', TRAINED, ids=rel)
def test_train_one_iteration_and_evaluate(path, synthetic_data_root, run_dir):
    from deform_viz.variants import variant_of_conv_cfg
    result = train_once(path, synthetic_data_root, run_dir, checkpoint='-dconv-c3-c5_' in path)
    # CocoMetric scored the validation after the iteration (an empty result set logs no AP at all)
    assert set(result.metrics) >= (BBOX_KEYS | SEGM_KEYS if detector(path) == 'mask-rcnn' else BBOX_KEYS)
    layer = expected_layer(path)
    assert result.stage_types == {'c2': {'Conv2d'}, 'c3': {layer}, 'c4': {layer}, 'c5': {layer}}
    if layer == 'DeformConv2dPack':
        assert result.registered[layer].startswith('mmcv.ops')
    elif layer != 'Conv2d':
        assert result.registered[layer].startswith('deform_viz.layers')
    if layer not in ('Conv2d', 'DeformConv2dPack'):  # this package's layers name their variant as the configs do
        assert result.stage_variants['c4'] == {variant_of_conv_cfg(load(path).model.backbone.dcn)}
    if layer == 'DeformableKernel':
        # the DK paper's 1/100 learning rate of the kernel-offset predictors reached the optimizer
        base = load(path).optim_wrapper.optimizer.lr
        offsets = {n: lr for n, lr in result.lr_by_param.items() if 'conv2.conv_offset' in n}
        assert offsets and all(lr == pytest.approx(base * 0.01) for lr in offsets.values())
        others = [lr for n, lr in result.lr_by_param.items() if 'conv_offset' not in n]
        assert all(lr == pytest.approx(base) for lr in others if lr != 0)


@pytest.mark.slow
@pytest.mark.parametrize('path', PROJECTION, ids=rel)
def test_test_time_projection_loads_a_dcn_checkpoint(path, synthetic_data_root, run_dir):
    from mmengine.runner import CheckpointLoader
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    name = osp.basename(path)
    dcn_config = config_path('revisiting_dcn', name.replace('_test-df', '').replace('_test-dk', ''))
    trained = train_once(dcn_config, synthetic_data_root, run_dir, checkpoint=True)
    # the projected model takes the DCN checkpoint's weights strictly: same parameter names, shapes
    register_all_modules()
    cfg = load(path)
    cfg.model.backbone.init_cfg = None
    cfg.model.roi_head.bbox_head.num_classes = 5
    if cfg.model.roi_head.get('mask_head'):
        cfg.model.roi_head.mask_head.num_classes = 5
    model = MODELS.build(cfg.model)
    state = CheckpointLoader.load_checkpoint(trained.checkpoint, map_location='cpu')['state_dict']
    model.load_state_dict(state, strict=True)
    assert {type(m).__name__ for m in model.backbone.layer3.modules()} >= {expected_layer(path)}
    # and evaluate() scores it with the COCO metric
    result = evaluate_once(path, trained.checkpoint, synthetic_data_root, run_dir)
    assert set(result.metrics) >= (BBOX_KEYS | SEGM_KEYS if detector(path) == 'mask-rcnn' else BBOX_KEYS)


@pytest.mark.slow
@pytest.mark.parametrize('det', ['faster-rcnn', 'mask-rcnn'])
def test_evaluating_the_checkpoint_reproduces_the_validation(det, synthetic_data_root, run_dir, tmp_path):
    """The same weights on the same images: evaluate() gives the numbers training validated."""
    config = next(p for p in REVISITING if detector(p) == det and '-dconv-c3-c5_' in p)
    trained = train_once(config, synthetic_data_root, run_dir, checkpoint=True)
    tested = evaluate_once(config, trained.checkpoint, synthetic_data_root, str(tmp_path))  # not a run to collect
    keys = BBOX_KEYS | SEGM_KEYS if det == 'mask-rcnn' else BBOX_KEYS
    assert {k: tested.metrics[k] for k in keys} == pytest.approx({k: trained.metrics[k] for k in keys}, abs=1e-4)
