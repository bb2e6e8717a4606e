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
    assert (numbers['layer'], numbers['num_images'], numbers['num_layers']) == ('backbone.layer4.2.conv2', 6, 13)
    # the mAP printed is the one mmengine logged for the evaluation (None: nothing detected,
    # CocoMetric then logs no AP at all)
    logged = [json.loads(line) for path in (tmp_path / 'demo' / 'test').glob('2*/2*.json') for line in open(path)]
    assert numbers['bbox_mAP'] == (logged[-1].get('coco/bbox_mAP') if logged else None)
    # 8 iterations barely move the offsets: the taps keep (close to) the rigid grid's unit spacing
    assert numbers['effective_dilation_background'] == pytest.approx(1.0, abs=0.25)
    assert json.load(open(tmp_path / 'demo' / 'summary.json'))['numbers'] == numbers


@pytest.mark.slow
def test_mini_ablation_one_seed_one_iteration(tmp_path, capsys):
    work_dir = tmp_path / 'ablation'
    argv = ['--work-dir', str(work_dir), '--data-root', str(tmp_path / 'data'), '--seeds', '0',
            '--iters', '1', '--num-train', '4', '--num-val', '2', '--image-size', '96']
    report = import_tool('mini_ablation').main(argv)
    rows = report['bbox_mAP']
    assert list(rows) == ['baseline', 'd_f only', 'd_k only', 'full DCN', 'local DK s4',
                          'full DCN, d_f at test', 'full DCN, d_k at test']
    assert all(len(values) == 1 for values in rows.values())
    # each trained row's AP is the one mmengine logged for its evaluation (none logged: no
    # detections, AP 0)
    for name, *_, config in import_tool('mini_ablation').ROWS:
        logs = sorted((work_dir / config[:-3] / 'seed0' / 'test').glob('2*/2*.json'))
        logged = [json.loads(line) for path in logs for line in open(path)]
        assert rows[name] == [logged[-1].get('coco/bbox_mAP', 0.0) if logged else 0.0], name
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
