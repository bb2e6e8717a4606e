"""The offset dump format: atomic writing, validated reading, clear errors for bad files."""
import json
import os
import stat

import numpy as np
import pytest

from deform_viz.dump import (FORMAT_NAME, LayerNotFoundError, OffsetDumpError, check_layer_patterns,
                             dump_size_bound, expected_shape, image_meta, iter_offset_dumps,
                             load_offset_dump, match_layer_names, offset_dump_path,
                             offset_dump_paths, write_offset_dump)


def layer_info(**overrides):
    info = dict(type='DeformConv2dPack', variant='dcnv2', kernel_size=[3, 3], stride=[1, 1],
                padding=[1, 1], dilation=[1, 1], deform_groups=2, input_stride=8, output_stride=8,
                shape=[5, 7], components=['offset', 'mask', 'd_f', 'divergence'])
    info.update(overrides)
    return info


def sample(img_id=3, rng=None, **layer_overrides):
    rng = rng or np.random.default_rng(0)
    info = layer_info(**layer_overrides)
    meta = dict(img_id=img_id, img_path=f'val/{img_id}.png', ori_shape=[40, 56], img_shape=[40, 56],
                pad_shape=[64, 64], batch_input_shape=[64, 64], scale_factor=[1.0, 1.0],
                flip=False, flip_direction=None, dtype='float16', layers={'backbone.l': info})
    arrays = {f'backbone.l/{c}': rng.standard_normal(expected_shape(c, info)).astype(np.float16)
              for c in info['components']}
    return meta, arrays


def test_round_trip(tmp_path):
    meta, arrays = sample()
    path = offset_dump_path(tmp_path, 3)
    size = write_offset_dump(path, meta, arrays)
    assert size == path.stat().st_size
    assert [p.name for p in tmp_path.iterdir()] == ['3.npz']  # no temporary file left behind

    dump = load_offset_dump(path)
    assert dump.img_id == 3 and dump.meta['format'] == FORMAT_NAME and dump.meta['version'] == 1
    assert dump.meta['img_path'] == 'val/3.png'
    layer = dump['backbone.l']
    assert layer.info['deform_groups'] == 2
    assert layer['offset'].shape == (2, 9, 2, 5, 7) and layer['mask'].shape == (2, 9, 5, 7)
    assert layer['d_f'].shape == (2, 2, 5, 7) and layer['divergence'].shape == (2, 5, 7)
    for component in layer.info['components']:
        assert layer[component].dtype == np.float32
        np.testing.assert_array_equal(layer[component], arrays[f'backbone.l/{component}'])
    with pytest.raises(KeyError, match='offset_used'):
        layer['offset_used']
    # plain numpy reads it too
    with np.load(path) as npz:
        assert json.loads(str(npz['__meta__']))['img_id'] == 3


def test_deformable_kernel_shapes(tmp_path):
    for mode, shape in (('local', (9, 2, 5, 7)), ('global', (9, 2))):
        meta, arrays = sample(type='DeformableKernel', variant=f'dk_{mode}', mode=mode, scope=[4, 4],
                              components=['kernel_offset'])
        path = tmp_path / f'{mode}.npz'
        write_offset_dump(path, meta, arrays)
        assert load_offset_dump(path)['backbone.l']['kernel_offset'].shape == shape


def test_exclusive_write_never_replaces(tmp_path):
    meta, arrays = sample()
    path = tmp_path / '3.npz'
    assert write_offset_dump(path, meta, arrays, exclusive=True) > 0
    before = path.read_bytes()
    meta2, arrays2 = sample(rng=np.random.default_rng(1))
    assert write_offset_dump(path, meta2, arrays2, exclusive=True) is None
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ['3.npz']
    # a plain write replaces atomically
    write_offset_dump(path, meta2, arrays2)
    np.testing.assert_array_equal(load_offset_dump(path)['backbone.l']['offset'],
                                  arrays2['backbone.l/offset'])


def test_inconsistent_input_writes_nothing(tmp_path):
    meta, arrays = sample()
    path = tmp_path / '3.npz'
    write_offset_dump(path, meta, arrays)
    before = path.read_bytes()
    bad = dict(arrays)
    bad['backbone.l/offset'] = bad['backbone.l/offset'][..., :6]
    with pytest.raises(OffsetDumpError, match=r"3\.npz.*'backbone.l/offset' has shape"):
        write_offset_dump(path, meta, bad)
    with pytest.raises(OffsetDumpError, match='not JSON-serialisable'):
        write_offset_dump(path, dict(meta, img_path=object()), arrays)
    with pytest.raises(OffsetDumpError, match='missing'):
        write_offset_dump(path, meta, {k: v for k, v in arrays.items() if not k.endswith('mask')})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ['3.npz']


def test_failed_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    meta, arrays = sample()
    path = tmp_path / '3.npz'
    write_offset_dump(path, meta, arrays)
    before = path.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(np, 'savez', disk_full)
    with pytest.raises(OSError, match='No space left'):
        write_offset_dump(path, meta, arrays)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ['3.npz']


def test_truncated_file_is_rejected(tmp_path):
    meta, arrays = sample()
    path = tmp_path / '3.npz'
    write_offset_dump(path, meta, arrays)
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 10, 30):
        path.write_bytes(data[:cut])
        with pytest.raises(OffsetDumpError, match=r'3\.npz.*(truncated|corrupt)'):
            load_offset_dump(path)


def test_corrupt_payload_is_rejected(tmp_path):
    meta, arrays = sample()
    path = tmp_path / '3.npz'
    write_offset_dump(path, meta, arrays)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # flips bits inside an array: the zip CRC catches it
    path.write_bytes(bytes(data))
    with pytest.raises(OffsetDumpError, match=r'3\.npz.*corrupt'):
        load_offset_dump(path)


@pytest.mark.parametrize('content, message', [
    (b'', 'file is empty'),
    (b'hello world', 'not the zip signature'),
])
def test_non_npz_files_are_rejected(tmp_path, content, message):
    path = tmp_path / '7.npz'
    path.write_bytes(content)
    with pytest.raises(OffsetDumpError, match=message) as info:
        load_offset_dump(path)
    assert str(path) in str(info.value)


def test_foreign_npz_files_are_rejected(tmp_path):
    path = tmp_path / 'foreign.npz'
    np.savez(path, weights=np.zeros(3))
    with pytest.raises(OffsetDumpError, match="foreign.npz: no '__meta__'"):
        load_offset_dump(path)

    np.savez(path, __meta__=np.array(json.dumps({'format': 'something-else', 'version': 1})))
    with pytest.raises(OffsetDumpError, match="not a deform-viz offset dump.*'something-else'"):
        load_offset_dump(path)

    meta, arrays = sample()
    np.savez(path, __meta__=np.array(json.dumps(dict(meta, format=FORMAT_NAME, version=3))), **arrays)
    with pytest.raises(OffsetDumpError, match='version 3 is not supported'):
        load_offset_dump(path)

    np.savez(path, __meta__=np.array('{not json'))
    with pytest.raises(OffsetDumpError, match='not valid JSON'):
        load_offset_dump(path)

    # arrays the metadata does not describe, or shapes it does not imply
    full_meta = dict(meta, format=FORMAT_NAME, version=1)
    np.savez(path, __meta__=np.array(json.dumps(full_meta)), extra=np.zeros(2), **arrays)
    with pytest.raises(OffsetDumpError, match=r"not described by the metadata: \['extra'\]"):
        load_offset_dump(path)
    arrays['backbone.l/d_f'] = np.zeros((2, 2, 5, 6), np.float16)
    np.savez(path, __meta__=np.array(json.dumps(full_meta)), **arrays)
    with pytest.raises(OffsetDumpError, match=r"'backbone.l/d_f' has shape \(2, 2, 5, 6\).*\(2, 2, 5, 7\)"):
        load_offset_dump(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist'):
        load_offset_dump(tmp_path / 'nope.npz')
    with pytest.raises(FileNotFoundError, match='does not exist'):
        list(iter_offset_dumps(tmp_path / 'nope'))


def test_iteration_order_skips_temporary_files(tmp_path):
    for img_id in (10, 2, 33, 1):
        meta, arrays = sample(img_id)
        write_offset_dump(offset_dump_path(tmp_path, img_id), meta, arrays)
    (tmp_path / '.5.npz.abc.tmp').write_bytes(b'partial')  # an interrupted writer's leftover
    (tmp_path / 'notes.txt').write_text('not a dump')
    assert [p.name for p in offset_dump_paths(tmp_path)] == ['1.npz', '2.npz', '10.npz', '33.npz']
    assert [d.img_id for d in iter_offset_dumps(tmp_path)] == [1, 2, 10, 33]


def test_file_names_are_safe():
    assert offset_dump_path('d', 'a/b c').name == 'a_b_c.npz'
    assert offset_dump_path('d', '../x').name == '_x.npz'
    with pytest.raises(ValueError):
        offset_dump_path('d', '...')


def test_dump_files_get_the_mode_of_ordinary_files(tmp_path):
    meta, arrays = sample()
    old = os.umask(0o022)
    try:
        write_offset_dump(tmp_path / 'a.npz', meta, arrays)
        write_offset_dump(tmp_path / 'b.npz', meta, arrays, exclusive=True)
    finally:
        os.umask(old)
    assert [stat.S_IMODE((tmp_path / n).stat().st_mode) for n in ('a.npz', 'b.npz')] == [0o644] * 2


@pytest.mark.parametrize('written, extra, read', [
    ('dcn', {}, 'dcn'),
    ('dcn-df', {}, 'dcn-df'),
    ('dcn_df', {}, 'dcn-df'),
    ('dcnv2_dk', {}, 'dcnv2-dk'),
    ('dk_local', dict(mode='local', scope=[4, 4]), 'dkernel-local-s4'),
    ('dcn_dk_global', dict(mode='global', scope=[5, 5]), 'dcn-dkernel-global-s5'),
    ('dkernel-local-s4', dict(mode='local', scope=[4, 4]), 'dkernel-local-s4'),
])
def test_variant_names_of_earlier_versions_are_read_as_current_keys(tmp_path, written, extra, read):
    meta, arrays = sample(variant=written, **extra)
    write_offset_dump(tmp_path / '3.npz', meta, arrays)
    dump = load_offset_dump(tmp_path / '3.npz')
    assert dump['backbone.l'].info['variant'] == read
    assert dump.meta['layers']['backbone.l']['variant'] == read


def test_image_meta_from_a_data_sample():
    from mmdet.structures import DetDataSample
    sample_ = DetDataSample(metainfo=dict(
        img_id=np.int64(12), img_path='val/12.png', ori_shape=(200, 300), img_shape=(160, 240, 3),
        pad_shape=(160, 256), batch_input_shape=(160, 256), scale_factor=np.array([0.8, 0.8]),
        flip=True, flip_direction='horizontal'))
    meta = image_meta(sample_, 'float16')
    assert meta == dict(img_id=12, img_path='val/12.png', ori_shape=[200, 300], img_shape=[160, 240],
                        pad_shape=[160, 256], batch_input_shape=[160, 256], scale_factor=[0.8, 0.8],
                        flip=True, flip_direction='horizontal', dtype='float16')
    assert type(meta['img_id']) is int and json.loads(json.dumps(meta)) == meta
    # without img_id the file name is the id; without a batch shape the image shape is
    meta = image_meta(dict(img_path='/d/000123.jpg', ori_shape=(9, 9), img_shape=(9, 9)), 'float32')
    assert meta['img_id'] == '000123' and meta['batch_input_shape'] == [9, 9]
    assert meta['scale_factor'] == [1.0, 1.0] and meta['flip'] is False


def test_image_meta_names_what_is_missing():
    with pytest.raises(KeyError, match='OffsetFigureHook: .*neither img_id nor img_path'):
        image_meta(dict(ori_shape=(9, 9), img_shape=(9, 9)), 'float16', owner='OffsetFigureHook')
    with pytest.raises(KeyError, match=r"OffsetDumpHook: .*lack \['ori_shape'\]"):
        image_meta(dict(img_id=1, img_shape=(9, 9)), 'float16')


def test_size_bound_holds_and_is_close(tmp_path):
    for img_id, overrides in ((1, {}), (2, dict(shape=[1, 1])), (3, dict(shape=[60, 80]))):
        meta, arrays = sample(img_id, **overrides)
        size = write_offset_dump(tmp_path / f'{img_id}.npz', meta, arrays)
        bound = dump_size_bound(meta, arrays)
        assert size <= bound <= size + 3000


NAMES = ['backbone.layer3.0.conv2', 'backbone.layer3.1.conv2', 'backbone.layer4.0.conv2',
         'backbone.layer4.1.conv2', 'neck.dcn']


@pytest.mark.parametrize('patterns, chosen', [
    (None, NAMES),
    ('layer4', NAMES[2:4]),
    ('backbone.layer4.*', NAMES[2:4]),
    ('backbone.layer?.1.conv2', [NAMES[1], NAMES[3]]),
    (r're:backbone\.layer3\.[01]\.conv2', NAMES[:2]),
    (['layer4', 'layer3.0', 'layer4.0'], [NAMES[2], NAMES[3], NAMES[0]]),  # pattern order, once
    (['re:.*conv2', 'neck'], NAMES),
])
def test_layer_patterns(patterns, chosen):
    assert match_layer_names(NAMES, patterns) == chosen


def test_layer_patterns_that_fail():
    with pytest.raises(LayerNotFoundError, match=r"dump 3\.npz: layers pattern 'layer5' matches no "
                       r"layer \(patterns \['layer4', 'layer5'\]\); layers: backbone\.layer3\.0"):
        match_layer_names(NAMES, ['layer4', 'layer5'], where='dump 3.npz')
    with pytest.raises(LayerNotFoundError, match="'re:layer4' matches no layer"):  # whole names
        match_layer_names(NAMES, 're:layer4')
    with pytest.raises(ValueError, match=r"bad regular expression in layer pattern 're:\['"):
        check_layer_patterns(['layer4', 're:['])
    check_layer_patterns(None)
    check_layer_patterns('backbone.*')
