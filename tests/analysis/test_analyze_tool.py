"""tools/analyze_offsets.py on a hand-built dump: markdown on stdout, JSON report, clear errors."""
import json
import os

import pytest

from conftest import import_tool
from test_statistics import BOXES, CROWD, ORI, object_fields
from synthetic_dumps import write_coco, write_dump


@pytest.fixture(scope='module')
def analyze():
    return import_tool('analyze_offsets').main


def test_tool_prints_tables_and_writes_json(analyze, tmp_path, capsys):
    dk, df = object_fields()
    for img_id in (5, 6):   # two identical images: counts double, statistics stay
        write_dump(tmp_path / 'dumps', img_id,
                   {'backbone.layer2.0.conv2': ({}, dk), 'backbone.layer3.0.conv2': ({}, df)},
                   ori_shape=ORI, img_path=f'{img_id}.png')
    anns = [dict(image_id=i, bbox=list(b[0])) for i in (5, 6) for b in BOXES.values()]
    anns += [dict(image_id=i, bbox=list(CROWD), iscrowd=1) for i in (5, 6)]
    ann = write_coco(tmp_path / 'ann.json', [(5, '5.png', *ORI), (6, '6.png', *ORI)], anns)
    out = tmp_path / 'report' / 'report.json'
    report = analyze([str(tmp_path / 'dumps'), '--ann', ann, '--layer', 'layer2', '--out', str(out)])
    printed = capsys.readouterr().out
    assert '| backbone.layer2.0.conv2 | 1.20 ± 0.00 (8) |' in printed
    assert 'backbone.layer3' not in printed
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    ext = report['layers']['backbone.layer2.0.conv2']['extent_vs_size']
    assert ext['num_objects'] == 8 and ext['box_max']['rho'] == pytest.approx(1.0)
    assert sorted(os.listdir(tmp_path / 'report' / 'report_figures')) == ['effective_dilation.png',
                                                                         'extent_vs_size.png', 'inward_df.png']

    report = analyze([str(tmp_path / 'dumps' / '6.npz'), '--ann', ann, '--size-thresholds', '10', '30'])
    eff = report['layers']['backbone.layer2.0.conv2']['effective_dilation']
    assert eff['medium']['count'] == 4 and eff['large']['count'] == 25 + 49 + 169


def test_tool_argument_errors(analyze, tmp_path):
    with pytest.raises(SystemExit):
        analyze([str(tmp_path)])                                   # --ann is required
    with pytest.raises(SystemExit):
        analyze([str(tmp_path), '--ann', 'x.json', '--size-thresholds', '96', '32'])
