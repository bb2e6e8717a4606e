"""deform_viz.results (and tools/collect_results.py) on real outputs of short train / evaluate runs
(shared with tests/configs), including runs that crashed; and the README tables against
deform_viz.paper_results."""
import csv
import io
import json
import os
import os.path as osp
import re
import shutil
import sys

import pytest

from deform_viz import results
from deform_viz.engine import set_schedule, train

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(REPO, 'tests', 'configs'))
from coco_runs import config_path, evaluate_once, short_run_config, single_thread, train_once  # noqa: E402
from conftest import DCN_CONFIG, import_tool, synthetic_config  # noqa: E402

from deform_viz.datasets import SYNTHETIC_CLASSES  # noqa: E402
from deform_viz.paper_results import PAPER_ROWS, TABLES, paper_rows  # noqa: E402

FASTER = {v: config_path('revisiting_dcn', f'faster-rcnn_r50{c}_fpn_2xb4-1x_coco.py')
          for v, c in [('baseline', ''), ('dcn', '-dconv-c3-c5'), ('dcn-dk', '-dconv-dk-c3-c5')]}
MASK_DCN = config_path('revisiting_dcn', 'mask-rcnn_r50-dconv-c3-c5_fpn_2xb2-1x_coco.py')
FASTER_DK_LOCAL = config_path('deformable_kernels', 'faster-rcnn_r50-dkernel-local-s4-c3-c5_fpn_2xb4-1x_coco.py')
FASTER_TEST_DF = config_path('test_time_projection', 'faster-rcnn_r50-dconv-c3-c5_fpn_2xb4-1x_coco_test-df.py')


@pytest.fixture(scope='module')
def runs(synthetic_data_root, tmp_path_factory):
    """The run folder of the session: finished runs (reused from tests/configs when they ran),
    a test-time projection, and two runs that crashed."""
    base = tmp_path_factory.getbasetemp() / 'coco_runs'
    base.mkdir(exist_ok=True)
    base = str(base)
    done = {v: train_once(p, synthetic_data_root, base, checkpoint=(v == 'dcn')) for v, p in FASTER.items()}
    done['mask-dcn'] = train_once(MASK_DCN, synthetic_data_root, base, checkpoint=True)
    done['dkernel-local'] = train_once(FASTER_DK_LOCAL, synthetic_data_root, base)
    done['test-df'] = evaluate_once(FASTER_TEST_DF, done['dcn'].checkpoint, synthetic_data_root, base)

    # 1) trains its iteration, then validation cannot read its images
    crashed_val = osp.join(base, 'crashed-in-val')
    cfg = short_run_config(FASTER['baseline'], synthetic_data_root, crashed_val, name='crashed_val',
                           **{'val_dataloader.dataset.data_prefix.img': 'no-such-folder/'})
    with pytest.raises(FileNotFoundError), single_thread():
        train(cfg)
    # 2) the FPN expects other channels than the backbone gives: fails in the first forward pass
    crashed_first = osp.join(base, 'crashed-at-start')
    cfg = short_run_config(FASTER['baseline'], synthetic_data_root, crashed_first, name='crashed_first',
                           **{'model.neck.in_channels': [8, 8, 8, 8]})
    with pytest.raises(RuntimeError), single_thread():
        train(cfg)
    return dict(base=base, done=done, crashed_val=crashed_val, crashed_first=crashed_first)


@pytest.fixture(scope='module')
def records(runs):
    """The short runs use the COCO configs on synthetic data: let them fill the paper rows."""
    return results.collect_results([runs['base']], any_data=True)


def find(records, table, detector, variant):
    return [r for r in records if r['table'] == table and r['detector'] == detector and r['variant'] == variant
            and r['status'] != 'not run']


@pytest.mark.slow
def test_table1_rows_carry_run_paper_and_difference(records, runs):
    for variant, path in FASTER.items():
        rows = find(records, 'revisiting_dcn', 'faster-rcnn', variant)
        assert len(rows) == 1, rows
        row = rows[0]
        ap = runs['done'][variant].metrics['coco/bbox_mAP']
        paper = {'baseline': 0.374, 'dcn': 0.416, 'dcn-dk': 0.413}[variant]
        assert row['status'] == 'complete'
        assert row['bbox_ap'] == pytest.approx(ap) and row['paper_bbox_ap'] == paper
        assert row['bbox_diff'] == pytest.approx(ap - paper, abs=1e-4)
        assert row['run'].startswith(runs['done'][variant].work_dir)
        # the short run is flagged as off the paper's protocol, not passed off as a reproduction
        assert '1 epoch (1x: 12)' in row['notes'] and '2 images/step (paper: 8)' in row['notes']
    mask = find(records, 'revisiting_dcn', 'mask-rcnn', 'dcn')[0]
    assert mask['segm_ap'] == pytest.approx(runs['done']['mask-dcn'].metrics['coco/segm_mAP'])
    assert mask['segm_diff'] == pytest.approx(mask['segm_ap'] - 0.376, abs=1e-4)
    assert '2 images/step (paper: 4)' in mask['notes']


@pytest.mark.slow
def test_rows_without_runs_are_listed_as_not_run(runs, tmp_path):
    """With only the Faster R-CNN baseline run present, that is the one row filled: every other row
    of every table is there once, 'not run', with nothing measured."""
    shutil.copytree(runs['done']['baseline'].work_dir, tmp_path / 'baseline')
    records = results.collect_results([str(tmp_path)], any_data=True)
    for table in TABLES:
        for row in paper_rows(table):
            (rec,) = [r for r in records if r['table'] == table and r['detector'] == row.detector
                      and r['variant'] == row.variant]
            if (row.detector, row.variant) == ('faster-rcnn', 'baseline'):
                assert rec['status'] == 'complete' and rec['run'].startswith(str(tmp_path / 'baseline'))
                assert rec['bbox_ap'] == pytest.approx(runs['done']['baseline'].metrics['coco/bbox_mAP'])
            else:
                assert rec['status'] == 'not run', rec
                assert (rec['run'], rec['bbox_ap'], rec['segm_ap'], rec['bbox_diff'], rec['bbox_gain']) == \
                    (None, None, None, None, None), rec
    assert len([r for r in records if r['table'] in TABLES]) == sum(len(paper_rows(t)) for t in TABLES)


@pytest.mark.slow
def test_deformable_kernel_and_projection_gains(records, runs):
    dk = find(records, 'deformable_kernels', 'faster-rcnn', 'dkernel-local-s4')[0]
    base_ap = runs['done']['baseline'].metrics['coco/bbox_mAP']
    assert dk['bbox_gain'] == pytest.approx(runs['done']['dkernel-local'].metrics['coco/bbox_mAP'] - base_ap,
                                            abs=1e-4)
    assert dk['paper_bbox_ap'] == 0.378 and dk['paper_bbox_gain'] == pytest.approx(0.012)
    proj = find(records, 'test_time_projection', 'faster-rcnn', 'dcn@test-df')[0]
    assert proj['status'] == 'complete' and proj['run'].endswith('(test)')
    assert proj['bbox_ap'] == pytest.approx(runs['done']['test-df'].metrics['coco/bbox_mAP'])
    assert proj['bbox_gain'] == pytest.approx(proj['bbox_ap'] - runs['done']['dcn'].metrics['coco/bbox_mAP'],
                                              abs=1e-4)


@pytest.mark.slow
def test_crashed_runs_are_reported_with_where_they_stopped(records, runs):
    by_dir = {osp.dirname(r['run']): r for r in records if r['table'] == 'unfinished'}
    val = by_dir[runs['crashed_val']]
    assert val['status'] in ('incomplete', 'failed')
    # the log ends after the only training iteration: validation never logged a thing
    assert 'at the end of epoch 1 of 1 (iteration 1/1 logged; nothing after it)' in val['reason']
    assert val['reason'].startswith('no final metrics') or 'FileNotFoundError' in val['reason']
    first = by_dir[runs['crashed_first']]
    assert 'before the first logged training iteration' in first['reason']
    # classified by what the config builds even though it never finished
    assert first['detector'] == 'faster-rcnn' and first['variant'] == 'baseline'


@pytest.mark.slow
def test_no_work_dir_is_dropped(records, runs):
    work_dirs = {e for e in os.listdir(runs['base']) if osp.isdir(osp.join(runs['base'], e))}
    reported = {osp.relpath(r['run'].replace(' (test)', ''), runs['base']).split(os.sep)[0]
                for r in records if r['run']}
    assert work_dirs <= reported


@pytest.mark.slow
def test_logged_traceback_names_the_error(runs, tmp_path):
    """A log that ends in a traceback (a launcher that logs exceptions) gives 'crashed' + the error."""
    work = tmp_path / 'work'
    shutil.copytree(runs['crashed_val'], work)
    session = next(p for p in work.iterdir() if p.is_dir())
    with open(session / f'{session.name}.log', 'a') as f:
        f.write('Traceback (most recent call last):\n  File "tools/train.py", line 1, in <module>\n'
                "FileNotFoundError: [Errno 2] No such file or directory: 'no-such-folder/1.png'\n")
    (run,) = results.collect_runs([str(work)])
    assert run.status == 'failed'
    assert run.reason.startswith('crashed ') and 'FileNotFoundError: [Errno 2]' in run.reason


@pytest.mark.slow
def test_output_formats(runs, capsys, tmp_path):
    tool = import_tool('collect_results')
    records = tool.main([runs['base'], '--format', 'markdown', '--any-data'])
    text = capsys.readouterr().out
    assert '## Table 1 of "Revisiting the Deformable Convolution by Visualization"' in text
    assert '| Faster R-CNN | ✓ |  |  | 0.374 |' in text
    assert '## Incomplete or failed runs' in text and 'crashed-in-val' in text
    tool.main([runs['base'], '--format', 'csv', '--any-data'])
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == len(records) and set(rows[0]) == set(results.FIELDS)
    out = tmp_path / 'results.json'
    tool.main([runs['base'], '--format', 'json', '--out', str(out), '--any-data'])
    data = json.loads(out.read_text())
    assert len(data['records']) == len(records) and set(data['sources']) == {'revisiting', 'dkernel'}


@pytest.fixture(scope='module')
def synthetic_run(synthetic_data_root, tmp_path_factory):
    """The synthetic CPU detector (R-50 with DCN in c3-c5, like the demo), trained 4 iterations,
    every box kept so that CocoMetric scores it: the work dir."""
    work_dir = str(tmp_path_factory.mktemp('synthetic_dcn'))
    cfg = synthetic_config(DCN_CONFIG, synthetic_data_root, work_dir)
    set_schedule(cfg, 4)
    cfg.model.test_cfg.rcnn.score_thr = 0.0
    with single_thread():
        train(cfg)
    return work_dir


@pytest.mark.slow
def test_runs_on_other_data_stay_out_of_the_paper_tables(synthetic_run, runs):
    """The synthetic run is listed apart, labelled; the short COCO-config runs on synthetic images
    too. ``any_data`` lets them into the rows, noted."""
    records = results.collect_results([synthetic_run, runs['base']])
    paper = [r for r in records if r['table'] in TABLES and r['status'] != 'not run']
    assert paper == []
    (own,) = [r for r in records if r['run'] and r['run'].startswith(synthetic_run)]
    assert (own['table'], own['data'], own['detector'], own['variant'], own['status']) == \
        ('other_data', 'synthetic shapes', 'faster-rcnn', 'dcn', 'complete')
    assert own['row'] == 'Faster R-CNN, full DCN (d_f + d_k)'
    text = results.format_markdown(records)
    assert "## Runs on other data than the papers' (not compared with their numbers)" in text
    assert '| Faster R-CNN, full DCN (d_f + d_k) | synthetic shapes |' in text

    (row,) = find(results.collect_results([synthetic_run], any_data=True), 'revisiting_dcn', 'faster-rcnn', 'dcn')
    assert row['run'].startswith(synthetic_run) and row['data'] == 'synthetic shapes'
    assert "data: synthetic shapes, not the paper's" in row['notes']


def test_evaluation_data_names_the_papers_coco_and_the_rest():
    def cfg(split, ann_file, **dataset):
        return {f'{split}_dataloader': dict(dataset=dict(ann_file=ann_file, **dataset))}
    assert results.evaluation_data(cfg('val', 'annotations/instances_val2017.json'), 'train') == 'COCO val2017'
    wrapped = {'test_dataloader': dict(dataset=dict(type='RepeatDataset', dataset=dict(
        ann_file='annotations/image_info_test-dev2017.json')))}
    assert results.evaluation_data(wrapped, 'test') == 'COCO test-dev2017'
    synthetic = cfg('val', 'annotations/instances_val.json', metainfo=dict(classes=SYNTHETIC_CLASSES))
    assert results.evaluation_data(synthetic, 'train') == 'synthetic shapes'
    voc = cfg('val', 'ann/voc.json', data_root='data/voc/')
    assert results.evaluation_data(voc, 'train') == 'data/voc/ann/voc.json'
    assert results.evaluation_data(cfg('val', 'annotations/instances_val2017.json'), 'test') == 'unknown'


def test_missing_and_empty_dirs_are_reported(tmp_path):
    (tmp_path / 'empty').mkdir()
    runs = results.collect_runs([str(tmp_path / 'missing'), str(tmp_path / 'empty')])
    assert [(r.status, r.reason) for r in runs] == [
        ('failed', 'no such directory'), ('failed', 'no mmengine session (<timestamp>/) found')]


@pytest.mark.parametrize('dcn, variant', [
    (None, 'baseline'),
    (dict(type='DCN', deform_groups=1), 'dcn'),
    (dict(type='DCNv2', deform_groups=1), 'dcnv2'),
    (dict(type='DFOnlyDCN'), 'dcn-df'),
    (dict(type='DKOnlyDCN'), 'dcn-dk'),
    (dict(type='DecomposedDCN', component='d_k', modulated=True), 'dcnv2-dk'),
    (dict(type='DecomposedDCN', component='df'), 'dcn-df'),  # the component's name in older configs
    (dict(type='DeformableKernel', mode='local', scope=4), 'dkernel-local-s4'),
    (dict(type='DeformableKernel', mode='global', scope=(4, 4)), 'dkernel-global-s4'),
    (dict(type='DK', mode='local', scope=4, deform_data=True), 'dcn-dkernel-local-s4'),
])
def test_describe_model(dcn, variant):
    backbone = dict(type='ResNet', depth=50)
    if dcn:
        backbone.update(dcn=dcn, stage_with_dcn=(False, True, True, True))
    info = results.describe_model(dict(model=dict(type='MaskRCNN', backbone=backbone)))
    assert (info.detector, info.variant, info.standard) == ('mask-rcnn', variant, True)
    assert info.stages == ('c3-c5' if dcn else '')


def test_describe_model_flags_other_architectures():
    info = results.describe_model(dict(model=dict(type='FasterRCNN', backbone=dict(
        type='ResNet', depth=101, dcn=dict(type='DCN'), stage_with_dcn=(False, False, True, True)))))
    assert (info.variant, info.stages, info.backbone, info.standard) == ('dcn', 'c4-c5', 'ResNet-101', False)


# ------------------------------------------------------------------------------------------------
# README tables == deform_viz/paper_results.py
# ------------------------------------------------------------------------------------------------
def readme_rows(folder):
    """(config path from the repo root, {column header: cell}) for each table row with a config link."""
    lines = open(osp.join(REPO, 'configs', folder, 'README.md'), encoding='utf-8').read().splitlines()
    header, rows = None, []
    for line in lines:
        if not line.startswith('|'):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip('|').split('|')]
        if header is None:
            header = cells
            continue
        link = re.search(r'\[config\]\(([^)]+)\)', line)
        if link:
            path = osp.relpath(osp.normpath(osp.join(REPO, 'configs', folder, link.group(1))), REPO)
            rows.append((path, dict(zip(header, cells))))
    return rows


def cell_value(text):
    return None if text in ('-', 'NA', '') else float(text)


@pytest.mark.parametrize('folder', list(TABLES))
def test_readme_tables_agree_with_paper_results(folder):
    rows = readme_rows(folder)
    expected = paper_rows(folder)
    assert [path for path, _ in rows] == [r.config for r in expected]
    for (path, cells), paper in zip(rows, expected):
        assert osp.isfile(osp.join(REPO, path)), path
        bbox = [v for k, v in cells.items() if 'paper' in k and 'bbox' in k]
        segm = [v for k, v in cells.items() if 'paper' in k and 'segm' in k]
        assert [cell_value(c) for c in bbox] == [paper.bbox_ap], (path, cells)
        assert [cell_value(c) for c in segm] in ([], [paper.segm_ap]), (path, cells)
        # nothing reproduced is claimed: those cells say so
        for key, value in cells.items():
            if 'reproduced' in key:
                assert value in ('not run here; no GPU', 'NA'), (path, key, value)


def test_every_coco_config_has_a_readme_row():
    listed = {r.config for r in PAPER_ROWS}
    for folder in TABLES:
        for name in os.listdir(osp.join(REPO, 'configs', folder)):
            if name.endswith('.py'):
                assert f'configs/{folder}/{name}' in listed
