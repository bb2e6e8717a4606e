"""Attention dumps through mmdet's runner and tools/test.py: the format round trip, resume, the byte
budget, two ranks, and errors on corrupt files (format version 2 of deform_viz.dump)."""
import json
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, import_tool, synthetic_config
from deform_viz.attention import attention_bytes_per_image
from deform_viz.dump import (OffsetDumpError, dump_size_bound, iter_offset_dumps, load_offset_dump, offset_dump_paths,
                             write_offset_dump)
from tiny_detr import build_tiny, tiny_config

ENCODER = ['encoder.layers.0.self_attn', 'encoder.layers.1.self_attn']
DECODER = ['decoder.layers.0.cross_attn', 'decoder.layers.1.cross_attn']


@pytest.fixture(scope='module')
def tiny_detr(synthetic_data_root, tmp_path_factory):
    """A checkpoint of the perturbed tiny Deformable DETR and a config file for 3 val images."""
    root = tmp_path_factory.mktemp('tiny_detr')
    checkpoint = str(root / 'tiny_detr.pth')
    torch.save({'state_dict': build_tiny('plain').state_dict(), 'meta': {}}, checkpoint)
    cfg = synthetic_config(tiny_config('plain'), synthetic_data_root, str(root / 'work'),
                           {'test_dataloader.dataset.indices': 3, 'test_dataloader.batch_size': 2,
                            'model.backbone.init_cfg': None})
    config = str(root / 'config.py')
    cfg.dump(config)
    return checkpoint, config


def run_tool(tiny_detr, tmp_path, dump_dir, *options):
    checkpoint, config = tiny_detr
    argv = [config, checkpoint, '--work-dir', str(tmp_path / 'work'), '--dump-offsets', str(dump_dir)]
    if options:
        argv += ['--dump-options', *options]
    return import_tool('test').main(argv)


@pytest.mark.slow
def test_test_tool_options_resume_and_defaults(tiny_detr, tmp_path):
    """tools/test.py --dump-offsets: the first 2 images with the full encoder field and the
    detections' queries, then resumed with the defaults for the third."""
    dump_dir = tmp_path / 'dumps'
    metrics = run_tool(tiny_detr, tmp_path, dump_dir, 'max_images=2', 'encoder_stride=1',
                       'decoder_queries=detections')
    assert 'coco/bbox_mAP' in metrics
    first = {p.name: p.stat().st_ino for p in offset_dump_paths(dump_dir)}
    assert len(first) == 2
    for dump in iter_offset_dumps(dump_dir):
        enc = dump.attention[ENCODER[0]]
        assert enc.info['query_stride'] == 1 and len(enc.queries) == enc.info['num_queries'] == 400 + 100 + 25 + 9
        assert dump.detections.linked
        dec = dump.attention[DECODER[1]]
        assert list(dec.queries) == list(dict.fromkeys(dump.detections.queries.tolist()))
    with pytest.raises(FileExistsError, match='already holds 2 offset dumps'):
        run_tool(tiny_detr, tmp_path, dump_dir)

    run_tool(tiny_detr, tmp_path, dump_dir, 'resume=True')
    paths = offset_dump_paths(dump_dir)
    assert len(paths) == 3 and all(first[p.name] == p.stat().st_ino for p in paths if p.name in first)
    dump = load_offset_dump(paths[-1])
    assert dump.meta['version'] == 2 and dump.layers == {}
    assert list(dump.attention) == ENCODER + DECODER
    assert dump.detections.linked and len(dump.detections) == 20
    assert np.all(dump.detections.queries >= 0) and np.all(dump.detections.queries < 30)
    for name in DECODER:
        fields = dump.attention[name]
        assert fields.role == 'decoder' and fields.offsets.shape == (30, 4, 4, 2, 2)
        np.testing.assert_allclose(fields.weights.sum((2, 3)), 1, atol=5e-3)  # float16
    enc = dump.attention[ENCODER[0]]
    assert enc.info['query_stride'] == 8 and enc.encoder_cells().shape == (len(enc.queries), 3)
    # the computed size is the arrays' size (the COCO sizes in docs/attention.md come from this function)
    with np.load(dump.path) as npz:
        arrays = sum(npz[k].nbytes for k in npz.files if k.split('/')[0] in ENCODER + DECODER)
    assert arrays == attention_bytes_per_image((160, 160), num_heads=4, num_points=2, encoder_layers=2,
                                               decoder_layers=2, decoder_queries=30)['total']


@pytest.mark.slow
def test_two_ranks_write_each_image_once(tiny_detr, tmp_path, synthetic_data_root):
    checkpoint, config = tiny_detr
    dump_dir = tmp_path / 'dumps'
    env = dict(os.environ, OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='')
    command = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
               osp.join(REPO, 'tools', 'test.py'), config, checkpoint, '--launcher', 'pytorch',
               '--work-dir', str(tmp_path / 'work'), '--dump-offsets', str(dump_dir),
               '--cfg-options', 'test_dataloader.batch_size=1']
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with open(osp.join(synthetic_data_root, 'annotations', 'instances_val.json')) as f:
        ids = sorted(image['id'] for image in json.load(f)['images'])[:3]
    assert sorted(os.listdir(dump_dir)) == sorted(f'{i}.npz' for i in ids)
    log = result.stdout + result.stderr
    assert 'wrote 3 offset dumps' in log and '1 repeated images (sampler padding)' in log
    for dump in iter_offset_dumps(dump_dir):
        assert list(dump.attention) == ENCODER + DECODER and dump.detections.linked


# ---------------------------------------------------------------------------- the format alone
def sample_dump(count=3, queries=5):
    meta = dict(img_id=7, img_path='7.png', ori_shape=[20, 30], img_shape=[20, 30], pad_shape=[20, 30],
                batch_input_shape=[20, 30], scale_factor=[1.0, 1.0], flip=False, flip_direction=None,
                dtype='float16', layers={})
    info = dict(type='MultiScaleDeformableAttention', role='decoder', num_heads=2, num_levels=2,
                num_points=3, reference_dim=4, spatial_shapes=[[3, 4], [2, 2]], valid_ratios=[[1, 1], [1, 1]],
                level_strides=[[6.7, 7.5], [10, 15]], num_queries=queries, query_stride=None,
                components=['queries', 'reference', 'offsets', 'weights'])
    meta['attention'] = {'decoder.layers.0.cross_attn': info}
    meta['detections'] = dict(count=2, linked=True)
    rng = np.random.default_rng(0)
    arrays = {'decoder.layers.0.cross_attn/queries': np.array([4, 0, 2][:count], np.int32),
              'decoder.layers.0.cross_attn/reference': rng.random((count, 4)).astype(np.float32),
              'decoder.layers.0.cross_attn/offsets': rng.random((count, 2, 2, 3, 2)).astype(np.float16),
              'decoder.layers.0.cross_attn/weights': rng.random((count, 2, 2, 3)).astype(np.float16),
              '__detections__/bboxes': rng.random((2, 4)).astype(np.float32),
              '__detections__/scores': np.array([0.9, 0.5], np.float32),
              '__detections__/labels': np.array([1, 3], np.int32),
              '__detections__/queries': np.array([4, 2], np.int32)}
    return meta, arrays


def test_round_trip(tmp_path):
    meta, arrays = sample_dump()
    path = tmp_path / '7.npz'
    assert write_offset_dump(path, meta, arrays) == path.stat().st_size
    assert dump_size_bound(meta, arrays) >= path.stat().st_size  # what the byte budget relies on
    dump = load_offset_dump(path)
    assert dump.meta['version'] == 2
    fields = dump.attention['decoder.layers.0.cross_attn']
    np.testing.assert_array_equal(fields.queries, [4, 0, 2])
    np.testing.assert_array_equal(fields.offsets, arrays['decoder.layers.0.cross_attn/offsets'].astype(np.float32))
    np.testing.assert_allclose(fields.locations[1, 1, 0, 2],
                               arrays['decoder.layers.0.cross_attn/reference'][1, :2] +
                               arrays['decoder.layers.0.cross_attn/offsets'][1, 1, 0, 2].astype(np.float32))
    assert list(fields.rows_of([2, 9, 4])) == [2, -1, 0]
    np.testing.assert_array_equal(dump.detections.queries, [4, 2])
    assert dump.detections.linked and list(dump.detections.top()) == [0, 1]


@pytest.mark.parametrize('edit, message', [
    (lambda m, a: a.pop('decoder.layers.0.cross_attn/weights'), "'decoder.layers.0.cross_attn/weights' is missing"),
    (lambda m, a: a.update({'decoder.layers.0.cross_attn/offsets': np.zeros((3, 2, 2, 3), np.float16)}),
     r'has shape \(3, 2, 2, 3\), its layer metadata implies \(3, 2, 2, 3, 2\)'),
    (lambda m, a: a.update({'decoder.layers.0.cross_attn/queries': np.array([0., 1., 2.])}), 'expected integers'),
    (lambda m, a: a.update({'decoder.layers.0.cross_attn/queries': np.array([0, 1, 5], np.int32)}),
     r'indices outside \[0, 5\)'),
    (lambda m, a: m['attention']['decoder.layers.0.cross_attn'].pop('valid_ratios'), "lacks \\['valid_ratios'\\]"),
    (lambda m, a: m['attention']['decoder.layers.0.cross_attn'].update(role='middle'), "role 'middle'"),
    (lambda m, a: a.update({'__detections__/scores': np.zeros(3, np.float32)}), "'__detections__/scores' has shape"),
    (lambda m, a: m.update(version=1), 'attention data in a version 1 file'),
])
def test_inconsistent_attention_dumps_are_named(tmp_path, edit, message):
    meta, arrays = sample_dump()
    meta = dict(meta, format='deform-viz-offsets', version=2)
    edit(meta, arrays)
    path = tmp_path / '7.npz'
    np.savez(path, __meta__=np.array(json.dumps(meta)), **arrays)
    with pytest.raises(OffsetDumpError, match=r'7\.npz: .*' + message):
        load_offset_dump(path)
    if meta['version'] == 2:
        with pytest.raises(OffsetDumpError, match=message):  # the writer refuses the same
            write_offset_dump(tmp_path / '8.npz', {k: v for k, v in meta.items() if k not in ('format', 'version')},
                              arrays)
        assert not (tmp_path / '8.npz').exists()


def test_truncated_attention_dump_is_named(tmp_path):
    meta, arrays = sample_dump()
    path = tmp_path / '7.npz'
    write_offset_dump(path, meta, arrays)
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(OffsetDumpError, match=r'7\.npz: cannot be read as an \.npz file'):
        load_offset_dump(path)


def test_coco_size_bytes():
    """The numbers docs/attention.md states (computed from the shapes)."""
    ddetr = attention_bytes_per_image()
    assert ddetr['encoder_queries'] == 13 * 21 + 7 * 11 + 4 * 6 + 2 * 3
    assert ddetr['encoder'] == 6 * 380 * (4 + 8 + 8 * 4 * 4 * 3 * 2)
    assert ddetr['decoder'] == 6 * 300 * (4 + 8 + 768)
    full = attention_bytes_per_image(encoder_stride=1)
    assert full['encoder_queries'] == 100 * 167 + 50 * 84 + 25 * 42 + 13 * 21
