"""The paired ablation end to end on a tiny setting: pairing, projections, claims, outputs, resume."""
import json
import os.path as osp

import pytest
import torch

from mmengine.config import Config

from deform_viz.experiments.ablation import (ADDED_SETTINGS, REPO, ROWS, Ablation, AblationSettings,
                                             offset_learning_rates, row_config, write_outputs)
from deform_viz.experiments.pairing import build_initialised_model
from deform_viz.experiments.records import check_recorded

TINY = dict(iters=2, num_train=4, num_val=2, image_size=96)


def settings(tmp_path, **kwargs):
    return AblationSettings(**{**TINY, 'seeds': [0], 'rows': ['baseline', 'dcn'],
                               'data_root': str(tmp_path / 'data'), 'work_dir': str(tmp_path / 'abl'), **kwargs})


@pytest.mark.slow
def test_paired_rows_projections_claims_and_resume(tmp_path):
    s = settings(tmp_path)
    result = Ablation(s).run()
    losses = result['pairing'][0]
    assert set(losses) == {'baseline', 'dcn'}
    # the same rigid network on the same first batch: equal up to the order of floating-point sums
    assert losses['dcn'] == pytest.approx(losses['baseline'], rel=1e-6)
    assert result['rows'] == ['baseline', 'dcn', 'dcn@test-df', 'dcn@test-dk']
    for metric in ('bbox_mAP', 'bbox_mAP_75', 'bbox_mean_best_iou'):
        entry = result['metrics'][metric]['dcn']
        assert list(entry['per_seed']) == [0] and entry['vs_reference']['seeds'] == [0]
    # each row's value is what its own evaluation logged
    for variant in ('baseline', 'dcn'):
        record = json.load(open(osp.join(s.work_dir, variant, 'seed0', 'result.json')))
        assert result['metrics']['bbox_mean_best_iou'][variant]['per_seed'][0] == \
            record['metrics']['bbox_mean_best_iou']
    assert result['claims']['d_k carries the gain']['verdict'] == 'not run'  # no d_f / d_k rows
    report = json.load(open(osp.join(s.work_dir, 'dcn', 'seed0', 'offset_report.json')))
    assert report['num_images'] == 2 and report['across_layers']['num_layers'] == 13
    assert result['claims']['d_k tracks size']['per_seed'][0]['layers'] == 13
    paths = write_outputs(result, str(tmp_path / 'out'), 'python tools/mini_ablation.py --iters 2')
    assert json.load(open(paths['json']))['command'] == 'python tools/mini_ablation.py --iters 2'
    markdown = open(paths['markdown']).read()
    assert markdown.split('\n\n')[0].count('\n') == 1 + len(result['rows'])  # head, rule, a line per row
    assert '| layers with inward d_f (Holm) |' in markdown and '- d_k tracks size: **' in markdown
    assert result['offset_headline_spread']['num_layers'] == {'mean': 13.0, 'std': result['offset_headline_spread'][
        'num_layers']['std'], 'n': 1, 'per_seed': {0: 13.0}}
    assert open(paths['plot'], 'rb').read(8) == b'\x89PNG\r\n\x1a\n'
    # a second run reuses every finished run: the same numbers, nothing trained
    again = Ablation(s, log=lambda message: pytest.fail(f'trained again: {message}')).run()
    assert json.dumps(again['metrics']) == json.dumps(result['metrics'])  # (NaN spreads for one seed)


@pytest.mark.slow
def test_a_seed_whose_pairing_fails_is_left_out_and_named(tmp_path):
    s = settings(tmp_path, seeds=[0, 1])
    ablation = Ablation(s, log=lambda message: None)
    # seed 0's full DCN starts from seed 1's initial weights instead of the baseline's
    baseline = row_config(ROWS['baseline'], s, 1, s.data_root, str(tmp_path / 'x'))
    Ablation(settings(tmp_path, seeds=[0], rows=['baseline'])).run()  # seed 0's baseline, paired weights
    ablation._reference_state[0] = build_initialised_model(baseline, seed=1).state_dict()
    result = ablation.run()
    assert list(result['left_out_seeds']) == [0]
    assert "'baseline' and 'dcn' are not paired" in result['left_out_seeds'][0]
    for metric in result['metrics'].values():  # seed 1 goes on alone
        assert all(list(entry['per_seed']) == [1] for entry in metric.values())
    assert list(result['claims']['d_k tracks size']['per_seed']) == [1]
    markdown = open(write_outputs(result, str(tmp_path / 'out'), 'cmd')['markdown']).read()
    assert 'Seed 0 is left out of every comparison' in markdown


def test_settings_are_checked_before_work(tmp_path):
    with pytest.raises(ValueError, match="must include 'baseline'"):
        settings(tmp_path, rows=['dcn'])
    with pytest.raises(ValueError, match=r"unknown rows \['dk'\]"):
        settings(tmp_path, rows=['baseline', 'dk'])
    with pytest.raises(ValueError, match='seeds must be distinct'):
        settings(tmp_path, seeds=[0, 0])


@pytest.mark.slow
def test_a_run_made_with_other_settings_is_refused(tmp_path):
    Ablation(settings(tmp_path, rows=['baseline'])).run()
    with pytest.raises(ValueError, match=r'other settings \(iters\)'):
        Ablation(settings(tmp_path, rows=['baseline'], iters=3)).run()


@pytest.mark.slow
def test_the_static_control_learns_only_the_offset_biases(tmp_path):
    s = settings(tmp_path, rows=['baseline', 'dcn-static'])
    result = Ablation(s).run()
    assert result['rows'] == ['baseline', 'dcn-static']  # projections only come with the full DCN
    record = json.load(open(osp.join(s.work_dir, 'dcn-static', 'seed0', 'result.json')))
    state = torch.load(record['checkpoint'], map_location='cpu', weights_only=False)['state_dict']
    weights = [v for k, v in state.items() if k.endswith('conv_offset.weight')]
    biases = [v for k, v in state.items() if k.endswith('conv_offset.bias')]
    assert len(weights) == len(biases) == 13  # every deformable layer of c3-c5
    assert all(not w.any() for w in weights)  # still their zero initialisation
    assert sum(bool(b.any()) for b in biases) == 13  # every bias has moved off zero


@pytest.mark.slow
def test_mask_rcnn_rows_report_mask_ap(tmp_path):
    s = settings(tmp_path, detector='mask')
    cfg = row_config(ROWS['dcn'], s, 0, s.data_root, str(tmp_path / 'x'))
    assert cfg.model.type == 'MaskRCNN'
    assert cfg.model.roi_head.mask_roi_extractor.finest_scale == cfg.model.roi_head.bbox_roi_extractor.finest_scale
    result = Ablation(s).run()
    assert result['rows'] == ['baseline', 'dcn', 'dcn@test-df', 'dcn@test-dk']
    for metric in ('segm_mAP', 'segm_mAP_75', 'bbox_mAP'):
        assert set(result['metrics'][metric]) == set(result['rows'])
    assert result['claims']['d_k carries the gain (segm AP)'] == {'verdict': 'not run',
                                                                  'needs': ['baseline', 'dcn-df', 'dcn-dk']}
    paths = write_outputs(result, str(tmp_path / 'out'), 'python tools/mini_ablation.py --detector mask')
    assert 'mask AP (mean ± std)' in open(paths['markdown']).read()


def test_runs_recorded_before_the_detector_setting_count_as_faster_rcnn(tmp_path):
    key = {**AblationSettings(detector='faster').run_key(), 'offset_lr': {}}
    run_dir = tmp_path / 'run'
    run_dir.mkdir()
    (run_dir / 'settings.json').write_text(json.dumps({k: v for k, v in key.items() if k != 'detector'}))
    check_recorded(str(run_dir), key, runs='a run', added=ADDED_SETTINGS)  # accepted
    mask = {**AblationSettings(detector='mask').run_key(), 'offset_lr': {}}
    with pytest.raises(ValueError, match=r'other settings \(detector\)'):
        check_recorded(str(run_dir), mask, runs='a run', added=ADDED_SETTINGS)
    with pytest.raises(ValueError, match="unknown detector 'cascade'"):
        AblationSettings(detector='cascade')
    assert AblationSettings(detector='mask').work_dir == 'work_dirs/mini_ablation-mask'


def test_offset_learning_rate_option(tmp_path):
    s = settings(tmp_path, rows=['baseline', 'dcn-static'], offset_lr_mult=30.0)
    cfg = row_config(ROWS['dcn-static'], s, 0, s.data_root, str(tmp_path / 'x'))
    keys = cfg.optim_wrapper.paramwise_cfg.custom_keys
    assert keys == {'conv_offset': {'lr_mult': 30.0}, 'conv_offset.weight': {'lr_mult': 0.0, 'decay_mult': 0.0}}
    with pytest.raises(ValueError, match='offset_lr_mult must be positive'):
        settings(tmp_path, offset_lr_mult=0)


def test_offsets_learn_at_the_rates_of_the_coco_configs(tmp_path):
    """The confirmatory protocol: DCN offsets at the network's rate, DK kernel offsets at 0.01x."""
    s = settings(tmp_path)
    rates = {v: offset_learning_rates(row_config(ROWS[v], s, 0, s.data_root, str(tmp_path / 'x'))) for v in ROWS}
    assert rates['baseline'] == rates['dcn'] == rates['dcn-df'] == rates['dcn-dk'] == {}
    assert rates['dkernel-local-s4'] == {'conv2.conv_offset': {'lr_mult': 0.01}}
    assert rates['dcn-static'] == {'conv_offset.weight': {'lr_mult': 0.0, 'decay_mult': 0.0}}
    # and as the COCO config of the DK row says
    coco = Config.fromfile(osp.join(REPO, 'configs', 'deformable_kernels',
                                    'faster-rcnn_r50-dkernel-local-s4-c3-c5_fpn_2xb4-1x_coco.py'))
    assert offset_learning_rates(coco) == rates['dkernel-local-s4']


def test_a_run_recorded_without_its_offset_rates_is_refused(tmp_path):
    """Runs of the earlier protocol (offsets at 30x, no rates recorded) are never reused."""
    s = settings(tmp_path)
    run_dir = tmp_path / 'abl' / 'dcn' / 'seed0'
    run_dir.mkdir(parents=True)
    (run_dir / 'settings.json').write_text(json.dumps(s.run_key()))
    with pytest.raises(ValueError, match=r'other settings \(offset_lr\)'):
        Ablation(s).train_row(ROWS['dcn'], 0, s.data_root)


def test_defaults_are_the_confirmatory_table():
    faster, mask = AblationSettings(), AblationSettings(detector='mask')
    assert faster.seeds == [3, 4, 5, 6, 7] and mask.seeds == [3, 4, 5]
    assert faster.rows == ['baseline', 'dcn-df', 'dcn-dk', 'dcn', 'dkernel-local-s4']
    assert mask.rows == ['baseline', 'dcn-df', 'dcn-dk', 'dcn']
