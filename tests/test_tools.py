"""The user's path: tools/train.py trains and evaluates, tools/test.py loads the checkpoint back."""
import glob
import json
import os.path as osp
import pickle
import subprocess
import sys

import pytest

from conftest import DCN_CONFIG, REPO, TEST_IMAGE_SCALE, cfg_options_argv


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
    from deform_viz.engine import synthetic_data_options
    options = synthetic_data_options(synthetic_data_root, TEST_IMAGE_SCALE)
    # one epoch learns little: keep every box so CocoMetric has detections to score
    options.update({'train_cfg.max_epochs': 1, 'train_cfg.val_interval': 1,
                    'default_hooks.checkpoint.interval': 1, 'model.test_cfg.rcnn.score_thr': 0.0})
    work_dir = str(tmp_path / 'work')
    run('train.py', DCN_CONFIG, '--work-dir', work_dir, '--cfg-options', *cfg_options_argv(options),
        cwd=tmp_path)
    checkpoint = osp.join(work_dir, 'epoch_1.pth')
    assert osp.isfile(checkpoint)
    trained = last_metrics(work_dir)
    assert 0.0 <= trained['coco/bbox_mAP'] <= 1.0

    test_dir = str(tmp_path / 'test')
    run('test.py', DCN_CONFIG, checkpoint, '--work-dir', test_dir, '--out', str(tmp_path / 'det.pkl'),
        '--cfg-options', *cfg_options_argv(options), cwd=tmp_path)
    tested = last_metrics(test_dir)
    # the same weights on the same images give the same COCO numbers
    assert tested['coco/bbox_mAP'] == pytest.approx(trained['coco/bbox_mAP'], abs=1e-3)
    with open(tmp_path / 'det.pkl', 'rb') as f:
        predictions = pickle.load(f)
    assert len(predictions) == 8  # one per val image
    assert all(len(p['pred_instances']['bboxes']) > 0 for p in predictions)


def test_tools_reject_bad_out_file(tiny_checkpoint, tmp_path):
    from conftest import load_tool
    with pytest.raises(ValueError, match='--out must name a .pkl file'):
        load_tool('test').main([tiny_checkpoint.config, tiny_checkpoint.checkpoint, '--work-dir',
                                str(tmp_path), '--out', 'results.json', '--cfg-options',
                                *cfg_options_argv(tiny_checkpoint.cfg_options)])
