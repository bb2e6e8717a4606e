"""The user's path: tools/train.py trains and evaluates, tools/test.py loads the checkpoint back;
their command lines; the checkpoint guard of deform_viz.engine.train / evaluate."""
import glob
import json
import os.path as osp
import pickle
import subprocess
import sys
import traceback

import pytest
import torch

from conftest import CPU_CONFIG_DIR, DCN_CONFIG, REPO, import_tool, synthetic_config
from deform_viz.checkpoint_check import CheckpointMismatchError
from deform_viz.engine import evaluate, set_schedule, train

DF_CONFIG = osp.join(CPU_CONFIG_DIR, 'faster-rcnn_r50-w16-dconv-df-c3-c5_fpn_synthetic.py')
COCO_KEYS = {f'coco/bbox_{k}' for k in ('mAP', 'mAP_50', 'mAP_75', 'mAP_s', 'mAP_m', 'mAP_l')}


def run(tool, *args, cwd):
    result = subprocess.run([sys.executable, osp.join(REPO, 'tools', tool), *args], cwd=cwd,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f'{tool} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}'
    return result


def last_metrics(work_dir):
    """The COCO metrics mmengine logged last: ``<timestamp>/vis_data/<timestamp>.json`` for a
    training run, ``<timestamp>/<timestamp>.json`` for a test run."""
    logs = sorted(glob.glob(osp.join(work_dir, '2*', 'vis_data', '2*.json'))
                  + glob.glob(osp.join(work_dir, '2*', '2*.json')))
    lines = [json.loads(line) for path in logs for line in open(path)]
    return [line for line in lines if 'coco/bbox_mAP' in line][-1]


@pytest.mark.slow
def test_train_then_test_roundtrip(synthetic_data_root, tmp_path):
    cfg = synthetic_config(DCN_CONFIG, synthetic_data_root, str(tmp_path / 'unused'))
    set_schedule(cfg, 4)
    cfg.model.test_cfg.rcnn.score_thr = 0.0  # one epoch learns little: keep every box to score
    config = str(tmp_path / 'config.py')
    cfg.dump(config)
    work_dir = str(tmp_path / 'work')
    run('train.py', config, '--work-dir', work_dir, cwd=tmp_path)
    checkpoint = osp.join(work_dir, 'iter_4.pth')
    assert osp.isfile(checkpoint)
    trained = last_metrics(work_dir)
    assert COCO_KEYS <= set(trained)

    test_dir = str(tmp_path / 'test')
    run('test.py', config, checkpoint, '--work-dir', test_dir, '--out', str(tmp_path / 'det.pkl'), cwd=tmp_path)
    tested = last_metrics(test_dir)
    # the same weights on the same images give the same COCO numbers, every one of them
    assert {k: tested[k] for k in COCO_KEYS} == pytest.approx({k: trained[k] for k in COCO_KEYS}, abs=1e-3)
    with open(tmp_path / 'det.pkl', 'rb') as f:
        predictions = pickle.load(f)
    assert len(predictions) == 8  # one per val image
    assert all(len(p['pred_instances']['bboxes']) > 0 for p in predictions)


def test_evaluate_rejects_bad_arguments_before_building(tiny_checkpoint, tmp_path):
    cfg = synthetic_config(tiny_checkpoint.config, tiny_checkpoint.data_root, str(tmp_path))
    with pytest.raises(ValueError, match='--out must name a .pkl file'):
        evaluate(cfg, tiny_checkpoint.checkpoint, out='results.json')
    with pytest.raises(ValueError, match='dump options need a dump directory'):
        evaluate(cfg, tiny_checkpoint.checkpoint, dump_options=dict(max_images=3))
    with pytest.raises(FileNotFoundError, match='checkpoint .*no-such.pth not found'):
        evaluate(cfg, str(tmp_path / 'no-such.pth'))
    assert not list(tmp_path.iterdir())  # no runner was built: nothing written


def test_test_tool_parses_dump_options():
    parse = import_tool('test').parse_args
    args = parse(['c.py', 'w.pth', '--dump-offsets', 'd', '--dump-options', 'max_images=3', 'dtype=float32',
                  'components=d_f,divergence', 'resume=True'])
    assert args.dump_options == dict(max_images=3, dtype='float32', components=['d_f', 'divergence'], resume=True)
    with pytest.raises(SystemExit):
        parse(['c.py', 'w.pth', '--dump-options', 'max_images=3'])


def test_train_tool_resume_argument():
    parse = import_tool('train').parse_args
    assert parse(['c.py']).resume is None
    assert parse(['c.py', '--resume']).resume == 'auto'
    assert parse(['c.py', '--resume', 'w.pth', '--amp']).resume == 'w.pth'


# ------------------------------------------------------------------------------ checkpoint guard
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
    cfg = synthetic_config(DF_CONFIG, tiny_checkpoint.data_root, str(tmp_path / 'test'))
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
