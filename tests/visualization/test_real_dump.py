"""End to end on a trained detector: tools/test.py --dump-offsets, then both tools, and the hook in runner.val()."""
import glob
import json
import os.path as osp

import pytest
from PIL import Image

from conftest import import_tool, synthetic_config
from deform_viz.engine import evaluate, set_image_scale

LAYER = 'backbone.layer3.0.conv2'


def eval_config(tiny, tmp_path):
    cfg = synthetic_config(tiny.config, tiny.data_root, str(tmp_path / 'work'))
    return set_image_scale(cfg, (136, 136), splits=('val', 'test'))   # resized: scale factor 0.85


@pytest.mark.slow
def test_tools_on_a_real_dump(tiny_checkpoint, tmp_path, capsys):
    dump_dir = tmp_path / 'dumps'
    evaluate(eval_config(tiny_checkpoint, tmp_path), tiny_checkpoint.checkpoint, dump_offsets=str(dump_dir),
             dump_options=dict(max_images=2))
    assert len(glob.glob(str(dump_dir / '*.npz'))) == 2

    written = import_tool('visualize_offsets').main([str(dump_dir), '--layer', LAYER, '--max-images', '1',
                                                   '--out', str(tmp_path / 'figs'), '--dpi', '60'])
    assert len(written) == 4
    for path in written:
        with Image.open(path) as im:
            assert im.size[0] == 390 and im.size[1] > 200

    ann = osp.join(tiny_checkpoint.data_root, 'annotations', 'instances_val.json')
    report = import_tool('analyze_offsets').main([str(dump_dir), '--ann', ann, '--out', str(tmp_path / 'r.json')])
    assert 'Effective dilation by region (2 images)' in capsys.readouterr().out
    assert len(report['layers']) == 13                          # every DCN layer of c3-c5
    layer = report['layers'][LAYER]
    assert layer['num_objects'] > 0 and layer['negative_divergence_mask']['pixels']['truth'] > 0
    counts = [layer['effective_dilation'][r]['count'] for r in ('small', 'medium', 'large', 'background')]
    assert sum(counts) > 0
    json.loads((tmp_path / 'r.json').read_text())


@pytest.mark.slow
def test_figure_hook_in_a_validation_run(tiny_checkpoint, tmp_path):
    from deform_viz.engine import trust_local_checkpoints, build_runner
    cfg = eval_config(tiny_checkpoint, tmp_path)
    cfg.load_from = tiny_checkpoint.checkpoint
    # a fresh visualizer: mmengine reuses an existing instance of the same name (and its save_dir)
    cfg.visualizer.name = f'offset-figures-{tmp_path.name}'
    cfg.custom_hooks = [dict(type='OffsetFigureHook', num_images=2, layers=[LAYER], figures=['dk_extent'],
                             dpi=40, width=4.0)]
    trust_local_checkpoints()
    build_runner(cfg).val()
    saved = sorted(osp.basename(p) for p in glob.glob(str(tmp_path / 'work' / '*' / 'vis_data' / 'vis_image' / '*')))
    assert len(saved) == 2 and all(s.startswith('offsets_dk_extent_img') and LAYER in s for s in saved)
