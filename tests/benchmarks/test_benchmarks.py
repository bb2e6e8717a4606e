"""One tiny run of each benchmark tool (small shapes, one repeat): every row of its table is there
and every ratio it prints is a positive number. The numbers themselves are not checked: they are
timings of a shared machine."""
import re

import pytest

from conftest import import_tool
from deform_viz.benchmarks import layers as layer_benchmark
from deform_viz.benchmarks.offset_stats import WARM_UP

POSITIVE = r'(\d+\.\d+)'


def table_rows(text: str) -> dict:
    """(variant, implementation) -> the other cells, of the markdown table rows in ``text``."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip('|').split('|')]
        if line.startswith('| `'):
            rows[(cells[0].strip('`'), cells[1])] = cells[2:]
    return rows


def positive(cell: str) -> float:
    value = float(cell)
    assert value > 0, cell
    return value


def test_layer_benchmark_has_every_case_at_every_stage(capsys):
    import_tool('benchmark_layers').main(['--image', '96', '96', '--repeat', '1', '--warmup', '0', '--no-memory',
                                          '--threads', '1'])
    rows = table_rows(capsys.readouterr().out)
    assert list(rows) == list(layer_benchmark.CASES)        # the two references first, then CASES' order
    for case, cells in rows.items():
        assert len(cells) == 3 * 3, (case, cells)           # per stage: x conv, x mmcv dcn, ms
        for value in cells:
            positive(value)
    assert rows[layer_benchmark.CONV][0::3] == ['1.00'] * 3 and rows[layer_benchmark.MMCV_DCN][1::3] == ['1.00'] * 3


def test_layer_benchmark_memory_in_a_subprocess(capsys):
    """The CPU peak memory of each case comes from a fresh ``python -m deform_viz.benchmarks.layers``."""
    import_tool('benchmark_layers').main(['--image', '64', '64', '--repeat', '1', '--warmup', '0', '--stages', 'c3',
                                          '--variants', 'dkernel-global-s4', '--threads', '1'])
    rows = table_rows(capsys.readouterr().out)
    assert list(rows) == [('baseline', 'nn.Conv2d'), ('dcn', 'mmcv'), ('dkernel-global-s4', 'deform_viz')]
    for case, (x_conv, x_mmcv, ms, peak) in rows.items():
        positive(x_conv), positive(x_mmcv), positive(ms)
        mib, ratio = re.fullmatch(rf'(\d+) \({POSITIVE}\)', peak).groups()
        assert int(mib) >= 0 and positive(ratio)
    assert rows[layer_benchmark.MMCV_DCN][3].endswith('(1.00)')


@pytest.mark.slow
def test_detector_benchmark(capsys):
    import_tool('benchmark_layers').main(['--detector', '--image', '128', '128', '--repeat', '1', '--warmup', '0',
                                          '--variants', 'dcn', '--implementations', 'nn.Conv2d', 'mmcv'])
    rows = table_rows(capsys.readouterr().out)
    assert list(rows) == [layer_benchmark.CONV, layer_benchmark.MMCV_DCN]
    for cells in rows.values():
        assert len(cells) == 3 and all(positive(c) for c in cells)
    assert rows[layer_benchmark.CONV][1] == '1.00' and rows[layer_benchmark.MMCV_DCN][2] == '1.00'


@pytest.mark.slow
def test_dump_benchmark(tmp_path, capsys):
    import_tool('benchmark_dump').main(['--work-dir', str(tmp_path), '--size-image', '128', '128',
                                        '--num-images', '2', '--repeats', '1', '--analysis-images', '2',
                                        '--analysis-size', '128', '128', '--workers', '2'])
    text = capsys.readouterr().out
    assert '128x128 input, float16' in text
    for preset in ('default', 'all', 'derived'):
        size, mib, gib = re.search(rf'^ *{preset}: +([\d,]+) bytes/image = +{POSITIVE} MiB .*'
                                   rf'5,000 images: +{POSITIVE} GiB$', text, re.M).groups()
        assert int(size.replace(',', '')) > 0 and positive(mib) and positive(gib)
    for stage in ('layer2', 'layer3', 'layer4'):
        assert re.search(rf'^ +{stage}: [1-9]\d* layers, grid \[\d+, \d+\] at stride \d+$', text, re.M), stage
    off, on = (re.search(rf"{which} *: median {POSITIVE} s/epoch", text).group(1) for which in
               ('without hook', 'with hook'))
    positive(off), positive(on)
    fastest, median = re.search(rf'end to end  : fastest {POSITIVE}x, median {POSITIVE}x', text).groups()
    positive(fastest), positive(median)
    share = re.search(rf'inside hook : {POSITIVE} s/epoch = \+{POSITIVE}% of the epoch', text).groups()
    assert all(positive(v) for v in share)
    for workers in ('1 worker ', '2 workers'):
        per_image, percent = re.search(rf'measuring, {workers}: {POSITIVE} s/image = {POSITIVE}%', text).groups()
        positive(per_image), positive(percent)
    assert re.search(rf'1 worker {POSITIVE} s, 2 workers {POSITIVE} s; reports identical: yes', text)


@pytest.mark.slow
def test_offset_stats_benchmark(capsys):
    result = import_tool('benchmark_offset_stats').main(['--iters', '8', '--image-size', '64', '--interval', '50'])
    # iterations 4-7 measured: OffsetStatsHook(interval=2) records 5 and 7
    assert (result['num_recorded'], result['num_plain']) == (2, 2) and WARM_UP == 4
    text = capsys.readouterr().out
    for label in ('training step, plain:', 'training step, recorded:'):
        positive(re.search(rf'{label} +{POSITIVE} s \(median\)', text).group(1))
    assert float(re.search(rf'ratio recorded / plain: +{POSITIVE}', text).group(1)) == pytest.approx(
        result['ratio'], abs=5e-4) and result['ratio'] > 0
    ms, ratio, percent = re.search(rf'{POSITIVE} ms per recorded step \(median\), {POSITIVE} of a plain step; '
                                   rf'at interval=50: {POSITIVE} % of the training time', text).groups()
    assert positive(ms) and positive(ratio) and positive(percent) and result['hook_ratio'] > 0
