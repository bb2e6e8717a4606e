"""The demo as a user runs it, shortened with --quick."""
import json
import os.path as osp

import numpy as np
import pytest

from conftest import import_tool


@pytest.mark.slow
def test_quick_demo_produces_every_artifact(tmp_path):
    work_dir = tmp_path / 'demo'
    summary = import_tool('demo').main(['--quick', '--work-dir', str(work_dir), '--figure-images', '1'])
    run_dir = work_dir / 'ablation' / 'dcn' / 'seed3'  # the mini ablation's full-DCN run of seed 3
    assert summary['seed'] == 3 and osp.isfile(summary['checkpoint'])
    assert osp.dirname(summary['checkpoint']) == str(run_dir)
    # the paired baseline of the same seed, and the difference the demo prints
    baseline = json.load(open(work_dir / 'ablation' / 'baseline' / 'seed3' / 'result.json'))
    assert summary['baseline'] == baseline['metrics']
    assert summary['difference'] == {m: summary['numbers'][m] - v for m, v in baseline['metrics'].items()}
    dcn = json.load(open(run_dir / 'result.json'))
    assert dcn['first_loss'] == pytest.approx(baseline['first_loss'], rel=1e-4)  # paired
    assert summary['committed_interval'] == {}  # --quick compares with no committed table
    dumps = sorted(p for p in (run_dir / 'offsets').iterdir() if p.suffix == '.npz')
    assert len(dumps) == 6  # every val image of the quick dataset
    kinds = {p.name.split('.')[-2] for p in (work_dir / 'figures').rglob('*.png')}
    assert summary['num_figures'] == len(list((work_dir / 'figures').rglob('*.png'))) >= 3
    assert len(kinds) >= 1
    report = json.load(open(summary['report']))
    assert len(report['layers']) == 13  # 4 + 6 + 3 bottlenecks in c3-c5
    numbers = summary['numbers']
    assert (numbers['layer'], numbers['num_images'], numbers['num_layers']) == ('backbone.layer4.2.conv2', 6, 13)
    # the metrics printed are the ones mmengine logged for the evaluation (AP 0 when nothing is
    # detected: CocoMetric then logs none)
    logs = sorted((run_dir / 'test').glob('2*/2*.json'))
    logged = [json.loads(line) for path in logs for line in open(path)][-1]
    assert numbers['bbox_mean_best_iou'] == logged['coco/bbox_mean_best_iou']
    assert numbers['bbox_mAP'] == logged.get('coco/bbox_mAP', 0.0)
    # 8 iterations move the offsets, but barely: the taps keep close to the rigid grid's unit spacing
    offsets = np.load(next(iter(dumps)))
    moved = [abs(offsets[k]).max() for k in offsets.files if k.endswith('/offset')]
    assert len(moved) == 13 and min(moved) > 0
    assert numbers['effective_dilation_background'] != 1.0
    assert numbers['effective_dilation_background'] == pytest.approx(1.0, abs=0.25)
    assert json.load(open(work_dir / 'summary.json'))['numbers'] == numbers
    # a rerun reuses the finished run: same numbers
    again = import_tool('demo').main(['--quick', '--work-dir', str(work_dir), '--figure-images', '1'])
    assert again['numbers'] == numbers and again['checkpoint'] == summary['checkpoint']
