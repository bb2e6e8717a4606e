"""The paired ablation end to end on a tiny setting: pairing, projections, claims, outputs, resume."""
import json
import os.path as osp

import pytest
import torch

from deform_viz.experiments import PairingError
from deform_viz.experiments.ablation import (ADDED_SETTINGS, ROWS, Ablation, AblationSettings, row_config,
                                             write_outputs)
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
    assert losses['baseline'] == losses['dcn']  # the same rigid network on the same first batch
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
def test_an_unpaired_row_is_refused(tmp_path):
    Ablation(settings(tmp_path, rows=['baseline'])).run()
    ablation = Ablation(settings(tmp_path))
    # the full DCN starts from seed 1's initial weights instead of the baseline's (seed 0)
    baseline = row_config(ROWS['baseline'], ablation.settings, 1, str(tmp_path / 'data'), str(tmp_path / 'x'))
    ablation._reference_state[0] = build_initialised_model(baseline, seed=1).state_dict()
    with pytest.raises(PairingError, match="'baseline' and 'dcn' are not paired"):
        ablation.run()


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
    paths = write_outputs(result, str(tmp_path / 'out'), 'python tools/mini_ablation.py --detector mask')
    assert 'mask AP (mean ± std)' in open(paths['markdown']).read()


def test_runs_recorded_before_the_detector_setting_count_as_faster_rcnn(tmp_path):
    key = AblationSettings(detector='faster').run_key()
    run_dir = tmp_path / 'run'
    run_dir.mkdir()
    (run_dir / 'settings.json').write_text(json.dumps({k: v for k, v in key.items() if k != 'detector'}))
    check_recorded(str(run_dir), key, runs='a run', added=ADDED_SETTINGS)  # accepted
    with pytest.raises(ValueError, match=r'other settings \(detector\)'):
        check_recorded(str(run_dir), AblationSettings(detector='mask').run_key(), runs='a run', added=ADDED_SETTINGS)
    with pytest.raises(ValueError, match="unknown detector 'cascade'"):
        AblationSettings(detector='cascade')
    assert AblationSettings(detector='mask').work_dir == 'work_dirs/mini_ablation-mask'


def test_offset_learning_rate_option(tmp_path):
    s = settings(tmp_path, rows=['baseline', 'dcn-static'], offset_lr_mult=1.0)
    cfg = row_config(ROWS['dcn-static'], s, 0, s.data_root, str(tmp_path / 'x'))
    keys = cfg.optim_wrapper.paramwise_cfg.custom_keys
    assert keys == {'conv_offset': {'lr_mult': 1.0}, 'conv_offset.weight': {'lr_mult': 0.0, 'decay_mult': 0.0}}
    default = row_config(ROWS['dcn'], settings(tmp_path), 0, s.data_root, str(tmp_path / 'x'))
    assert default.optim_wrapper.paramwise_cfg.custom_keys == {'conv_offset': {'lr_mult': 30.0}}
    with pytest.raises(ValueError, match='offset_lr_mult must be positive'):
        settings(tmp_path, offset_lr_mult=0)
