"""The CPU configs on the embedded dataset agree with the generator and build without downloads."""
import glob
import os.path as osp

import pytest
from mmengine.config import Config

from conftest import CPU_CONFIG_DIR
from deform_viz.datasets import SYNTHETIC_CLASSES

CONFIGS = sorted(glob.glob(osp.join(CPU_CONFIG_DIR, '*.py')))


@pytest.mark.parametrize('path', CONFIGS, ids=osp.basename)
def test_synthetic_config_matches_dataset_and_builds(path):
    from mmdet.registry import MODELS
    cfg = Config.fromfile(path)
    for loader in (cfg.train_dataloader, cfg.val_dataloader, cfg.test_dataloader):
        assert tuple(loader.dataset.metainfo.classes) == SYNTHETIC_CLASSES
    assert cfg.model.roi_head.bbox_head.num_classes == len(SYNTHETIC_CLASSES)
    assert cfg.model.backbone.init_cfg.checkpoint == 'deform-viz://resnet50-w16-shapes'  # made here, never downloaded
    model = MODELS.build(cfg.model)
    model.init_weights()
    dcn = cfg.model.backbone.get('dcn')
    for stage, with_dcn in enumerate(cfg.model.backbone.get('stage_with_dcn', (False,) * 4)):
        conv2 = getattr(model.backbone, f'layer{stage + 1}')[0].conv2
        assert type(conv2).__name__ == (dcn['type'] if with_dcn and dcn else 'Conv2d'), (stage, conv2)


@pytest.mark.parametrize('path', [p for p in CONFIGS if 'dconv' in p or 'dkernel' in p], ids=osp.basename)
def test_offset_predictors_get_the_configured_lr_mult(path):
    """mmengine's optimizer constructor gives every conv_offset the rate of the COCO twin: DCN's the
    network's (no key), the local DK's 0.01x; the static control's weights 0."""
    from mmdet.registry import MODELS
    from mmengine.optim import build_optim_wrapper
    cfg = Config.fromfile(path)
    model = MODELS.build(cfg.model)
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    base_lr = cfg.optim_wrapper.optimizer.lr
    keys = cfg.optim_wrapper.get('paramwise_cfg', {}).get('custom_keys', {})
    mult = 0.01 if 'dkernel' in path else 1.0
    assert keys.get('conv2.conv_offset', keys.get('conv_offset', {})).get('lr_mult', 1.0) == mult
    # the static-offset control freezes the predictors' weights: only their biases learn
    weight_mult = keys.get('conv_offset.weight', {}).get('lr_mult', mult)
    assert ('static' in path) == (weight_mult == 0)
    expected = {id(p): base_lr * (weight_mult if name.endswith('weight') else mult)
                for name, p in model.named_parameters() if '.conv_offset.' in name}
    assert len(expected) == 2 * 13  # weight and bias of each c3-c5 bottleneck's conv2
    if not keys:  # one group, every parameter at the network's rate
        assert [g['lr'] for g in wrapper.optimizer.param_groups] == [base_lr]
        return
    for group in wrapper.optimizer.param_groups:
        (param,) = group['params']
        assert group['lr'] == pytest.approx(expected.get(id(param), base_lr)), group
