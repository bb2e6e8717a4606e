"""Issue 7 end to end, shortened: the demo and the mini ablation as a user runs them."""
import json
import os.path as osp

import pytest

from conftest import import_tool


@pytest.mark.slow
def test_quick_demo_produces_every_artifact(tmp_path):
    summary = import_tool('demo').main(['--quick', '--work-dir', str(tmp_path / 'demo'),
                                      '--data-root', str(tmp_path / 'data'), '--figure-images', '1'])
    assert osp.isfile(summary['checkpoint'])
    dumps = sorted(p for p in (tmp_path / 'demo' / 'offsets').iterdir() if p.suffix == '.npz')
    assert len(dumps) == 6  # every val image of the quick dataset
    kinds = {p.stem.rsplit('_', 1)[-1] for p in (tmp_path / 'demo' / 'figures').rglob('*.png')}
    assert summary['num_figures'] >= 4 and len(kinds) >= 1
    report = json.load(open(summary['report']))
    assert len(report['layers']) == 13  # 4 + 6 + 3 bottlenecks in c3-c5
    numbers = summary['numbers']
    # two epochs on 16 images may detect nothing: CocoMetric then reports no AP at all
    assert numbers['bbox_mAP'] is None or 0.0 <= numbers['bbox_mAP'] <= 1.0
    assert numbers['divergence_in_boxes'] is not None and numbers['divergence_background'] is not None
    assert numbers['effective_dilation_background'] > 0  # zero offsets would give exactly 1
    assert json.load(open(tmp_path / 'demo' / 'summary.json'))['numbers'] == numbers


@pytest.mark.slow
def test_mini_ablation_one_seed_one_iteration(tmp_path, capsys):
    work_dir = tmp_path / 'ablation'
    argv = ['--work-dir', str(work_dir), '--data-root', str(tmp_path / 'data'), '--seeds', '0',
            '--epochs', '1', '--num-train', '4', '--num-val', '2', '--image-size', '96']
    report = import_tool('mini_ablation').main(argv)
    rows = report['bbox_mAP']
    assert list(rows) == ['baseline', 'd_f only', 'd_k only', 'full DCN', 'local DK s4',
                          'full DCN, d_f at test', 'full DCN, d_k at test']
    assert all(len(values) == 1 and 0.0 <= values[0] <= 1.0 for values in rows.values())
    table = capsys.readouterr().out
    assert '| d_k only |  |  | ✓ |' in table
    # a second call reuses the finished runs instead of training again
    assert import_tool('mini_ablation').main(argv)['bbox_mAP'] == rows


def test_mini_ablation_refuses_a_run_made_with_other_settings(tmp_path):
    check = import_tool('mini_ablation').check_settings
    run_dir = str(tmp_path / 'run')
    check(run_dir, {'train_cfg.max_epochs': 6, 'param_scheduler.1.milestones': (4, 5)})
    check(run_dir, {'train_cfg.max_epochs': 6, 'param_scheduler.1.milestones': (4, 5)})  # same: reused
    with pytest.raises(ValueError, match=r'other settings \(train_cfg.max_epochs\)'):
        check(run_dir, {'train_cfg.max_epochs': 8, 'param_scheduler.1.milestones': (4, 5)})
