"""configs/deformable_detr/: mmdet's Deformable DETR and DINO configs unchanged plus the dump hook,
and the tiny CPU configs the other attention tests run."""
import glob
import os.path as osp

import mmdet
import pytest
from mmengine.config import Config

from tiny_detr import CONFIG_DIR, TINY

COCO = {
    'deformable-detr_r50_16xb2-50e_coco.py': 'mmdet::deformable_detr/deformable-detr_r50_16xb2-50e_coco.py',
    'deformable-detr-refine_r50_16xb2-50e_coco.py':
        'mmdet::deformable_detr/deformable-detr-refine_r50_16xb2-50e_coco.py',
    'deformable-detr-refine-twostage_r50_16xb2-50e_coco.py':
        'mmdet::deformable_detr/deformable-detr-refine-twostage_r50_16xb2-50e_coco.py',
    'dino-4scale_r50_8xb2-12e_coco.py': 'mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py',
}


def unscoped(value):
    """A config value without the ``_scope_`` keys mmengine adds to what an ``mmdet::`` base gives."""
    if isinstance(value, dict):
        return {k: unscoped(v) for k, v in value.items() if k != '_scope_'}
    if isinstance(value, (list, tuple)):
        return [unscoped(v) for v in value]
    return value


def test_folder_holds_these_configs():
    names = sorted(map(osp.basename, glob.glob(osp.join(CONFIG_DIR, '*.py'))))
    assert names == sorted(list(COCO) + list(TINY.values()))


@pytest.mark.parametrize('name', sorted(COCO))
def test_coco_configs_are_mmdets_with_the_hook(name):
    cfg = Config.fromfile(osp.join(CONFIG_DIR, name))
    theirs = Config.fromfile(osp.join(osp.dirname(mmdet.__file__), '.mim', 'configs', COCO[name][len('mmdet::'):]))
    for key in ('model', 'train_cfg', 'optim_wrapper', 'test_dataloader', 'param_scheduler'):
        assert unscoped(cfg[key]) == unscoped(theirs[key]), key
    assert cfg.custom_imports == dict(imports=['deform_viz'], allow_failed_imports=False)
    assert [h['type'] for h in cfg.custom_hooks] == ['OffsetDumpHook']


@pytest.mark.parametrize('kind', sorted(TINY))
def test_tiny_configs_are_small_and_on_the_synthetic_data(kind):
    cfg = Config.fromfile(osp.join(CONFIG_DIR, TINY[kind]))
    assert cfg.model.num_queries == 30 and cfg.model.encoder.num_layers == cfg.model.decoder.num_layers == 2
    assert cfg.model.bbox_head.num_classes == 5 and cfg.test_dataloader.dataset.data_root == 'data/synthetic/'
    assert cfg.model.type == ('DINO' if kind == 'dino' else 'DeformableDETR')
    assert cfg.model.as_two_stage == (kind in ('twostage', 'dino'))
    assert cfg.model.with_box_refine == (kind != 'plain')
