"""The user's path: tools/train.py trains and evaluates, tools/test.py loads the checkpoint back;
their command lines."""
import glob
import json
import os.path as osp
import pickle
import subprocess
import sys

import pytest

from conftest import DCN_CONFIG, REPO, import_tool, synthetic_config
from deform_viz.engine import set_schedule

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


@pytest.mark.slow
def test_test_tool_stops_on_a_checkpoint_that_does_not_fit(tiny_checkpoint, tmp_path):
    """The full-DCN (v1) checkpoint with the model built as DCNv2: exit status 1, the guard's message."""
    cfg = synthetic_config(tiny_checkpoint.config, tiny_checkpoint.data_root, str(tmp_path / 'work'),
                           {'model.backbone.dcn.modulated': True})
    config = str(tmp_path / 'config.py')
    cfg.dump(config)
    result = subprocess.run([sys.executable, osp.join(REPO, 'tools', 'test.py'), config, tiny_checkpoint.checkpoint],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == ("Likely fix: the checkpoint was trained with DCN v1 (offsets, no "
                                              "masks): set modulated=False (mmcv: type='DCN')")
    assert f'test.py: error: {tiny_checkpoint.checkpoint} does not fit 13 deformable layer(s)' in result.stderr
    assert 'Traceback' not in result.stderr and 'Iter(test)' not in result.stdout + result.stderr


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
