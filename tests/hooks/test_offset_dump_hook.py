"""OffsetDumpHook through the real mmdet detector, mmengine runner and tools/test.py, on CPU.

The reference for every dumped field is the layer's offset predictor run on that one image
alone (data preprocessor + backbone), cropped to the image, with d_f / d_k / masks computed here
with plain numpy.
"""
import json
import logging
import math
import os
import os.path as osp
import subprocess
import sys
import traceback

import numpy as np
import pytest
import torch

from conftest import CPU_CONFIG_DIR, REPO, synthetic_config
from deform_viz.engine import evaluate, set_image_scale
from deform_viz.dump import OffsetDumpError, iter_offset_dumps, load_offset_dump, offset_dump_paths

SCALE = 136  # 160 px images resized to 136, padded to 160: the last cells of each map are padding
# float16 storage rounds to half an ulp: at most 2^-11 of a normal value, 2^-25 below 6.1e-5 (subnormal);
# the float32 computations agree far closer. The trained checkpoint's offsets are 1e-5 to 1e-4 px.
F16 = dict(rtol=1e-3, atol=6e-8)


def assert_resolved(reference: np.ndarray, what: str) -> None:
    """A comparison at F16's tolerance says something only about values far above its atol."""
    assert np.abs(reference).max() > 100 * F16['atol'], f'{what} too small to compare: {np.abs(reference).max()}'


def val_image_ids(data_root):
    with open(osp.join(data_root, 'annotations', 'instances_val.json')) as f:
        return sorted(image['id'] for image in json.load(f)['images'])


def eval_config(tiny, tmp_path, config=None, splits=('test',), **cfg_options):
    """The tiny detector's config (or ``config``) on its data, ``splits`` resized to SCALE."""
    cfg = synthetic_config(config or tiny.config, tiny.data_root, str(tmp_path / 'work'), cfg_options)
    return set_image_scale(cfg, (SCALE, SCALE), splits)


def run_test_tool(tiny, tmp_path, dump_offsets=None, dump_options=None, **cfg_options):
    return evaluate(eval_config(tiny, tmp_path, **cfg_options), tiny.checkpoint,
                    dump_offsets=dump_offsets and str(dump_offsets), dump_options=dump_options)


def build_runner(cfg, hook=None, checkpoint=None, extra_hooks=()):
    from deform_viz.engine import trust_local_checkpoints, build_runner
    cfg.load_from = checkpoint
    cfg.custom_hooks = ([dict(type='OffsetDumpHook', **hook)] if hook else []) + list(extra_hooks)
    trust_local_checkpoints()
    return build_runner(cfg)


def reference_outputs(runner, layer_names, index):
    """conv_offset (and conv_data_offset) outputs of the named layers for dataset image ``index``
    run alone, plus that image's metainfo."""
    from mmengine.dataset import pseudo_collate
    model = runner.model
    dataset = runner.test_dataloader.dataset
    modules = dict(model.named_modules())
    captured, handles = {}, []
    for name in layer_names:
        for part in ('conv_offset', 'conv_data_offset'):
            if getattr(modules[name], part, None) is not None:
                handles.append(getattr(modules[name], part).register_forward_hook(
                    lambda m, i, o, key=(name, part): captured.setdefault(key, o.detach())))
    try:
        model.eval()
        with torch.no_grad():
            data = model.data_preprocessor(pseudo_collate([dataset[index]]), False)
            model.backbone(data['inputs'])
    finally:
        for handle in handles:
            handle.remove()
    return captured, data['data_samples'][0].metainfo


def split(packed, taps):
    """(C, H, W) mmcv layout -> (G, taps, 2, H, W)."""
    return packed.reshape(-1, taps, 2, *packed.shape[-2:])


def check_against_layer(dump, captured, kinds):
    """Every stored field of ``dump`` equals the single-image computation (float16 tolerance)."""
    for name, layer in dump.layers.items():
        info = layer.info
        taps = info['kernel_size'][0] * info['kernel_size'][1]
        h, w = info['shape']
        kind = kinds[name] if isinstance(kinds, dict) else kinds
        if kind.startswith('dk'):
            kernel = captured[(name, 'conv_offset')][0].cpu().numpy()
            assert_resolved(kernel, f'{name} kernel offsets')
            if info['mode'] == 'global':
                np.testing.assert_allclose(layer['kernel_offset'], kernel.reshape(taps, 2), **F16)
            else:
                np.testing.assert_allclose(layer['kernel_offset'],
                                           kernel[:, :h, :w].reshape(taps, 2, h, w), **F16)
            packed = captured.get((name, 'conv_data_offset'))
        else:
            packed = captured[(name, 'conv_offset')]
        if packed is None:
            assert 'offset' not in layer.arrays
            continue
        packed = packed[0, :, :h, :w].cpu().numpy()
        if 'v2' in kind:
            o1, o2, logits = np.split(packed, 3)
            packed = np.concatenate([o1, o2])
            np.testing.assert_allclose(layer['mask'], (1 / (1 + np.exp(-logits))).reshape(
                -1, taps, h, w), **F16)
        offset = split(packed, taps)
        assert_resolved(offset, f'{name} offsets')
        np.testing.assert_allclose(layer['offset'], offset, **F16)
        d_f = offset.mean(axis=1)
        np.testing.assert_allclose(layer['d_f'], d_f, **F16)
        div = np.gradient(d_f[:, 1], axis=-1) + np.gradient(d_f[:, 0], axis=-2)
        np.testing.assert_allclose(layer['divergence'], div, **F16)
        if '_df' in kind:
            np.testing.assert_allclose(layer['offset_used'],
                                       np.broadcast_to(d_f[:, None], offset.shape), **F16)
        elif '_dk' in kind:
            np.testing.assert_allclose(layer['offset_used'], offset - d_f[:, None], **F16)
        else:
            assert 'offset_used' not in layer.arrays


# ---------------------------------------------------------------------------- tools/test.py
@pytest.mark.slow
def test_dump_through_test_tool(tiny_checkpoint, tmp_path):
    """A trained checkpoint evaluated by tools/test.py --dump-offsets: one correct file per image."""
    dump_dir = tmp_path / 'dumps'
    run_test_tool(tiny_checkpoint, tmp_path, dump_dir)
    ids = val_image_ids(tiny_checkpoint.data_root)
    assert [p.name for p in offset_dump_paths(dump_dir)] == [f'{i}.npz' for i in ids]
    assert not [p for p in os.listdir(dump_dir) if not p.endswith('.npz')]  # no temp files

    runner = build_runner(eval_config(tiny_checkpoint, tmp_path), checkpoint=tiny_checkpoint.checkpoint)
    runner.load_checkpoint(tiny_checkpoint.checkpoint, map_location='cpu')
    expected_layers = [f'backbone.layer{stage}.{block}.conv2'
                       for stage, blocks in ((2, 4), (3, 6), (4, 3)) for block in range(blocks)]
    dumps = list(iter_offset_dumps(dump_dir))
    for index, dump in enumerate(dumps):
        meta = dump.meta
        assert meta['img_id'] == ids[index] and meta['img_path'].endswith('.png')
        assert osp.isfile(meta['img_path'])
        assert meta['ori_shape'] == [160, 160] and meta['img_shape'] == [SCALE, SCALE]
        assert meta['batch_input_shape'] == [160, 160]
        assert meta['scale_factor'] == pytest.approx([SCALE / 160] * 2)
        assert meta['flip'] is False and meta['dtype'] == 'float16'
        assert list(dump.layers) == expected_layers
        for name, layer in dump.layers.items():
            info = layer.info
            stage, block = int(name.split('.')[1][-1]), int(name.split('.')[2])
            out_stride = 2 ** (stage + 1)
            assert info['output_stride'] == out_stride
            assert info['input_stride'] == (out_stride // 2 if block == 0 else out_stride)
            assert info['stride'] == ([2, 2] if block == 0 else [1, 1])
            assert info['kernel_size'] == [3, 3] and info['dilation'] == [1, 1]
            assert info['deform_groups'] == 1 and info['variant'] == 'dcn'
            assert info['type'] == 'DecomposedDCN'
            assert info['shape'] == [math.ceil(SCALE / out_stride)] * 2  # padding cropped
            assert info['components'] == ['offset', 'd_f', 'divergence']
            assert layer['offset'].shape == (1, 9, 2, *info['shape'])
        if index in (0, len(dumps) - 1):
            captured, _ = reference_outputs(runner, expected_layers, index)
            check_against_layer(dump, captured, 'dcn')
    # training moved every offset predictor away from its zero init, far above F16's atol
    for name, layer in dumps[0].layers.items():
        assert_resolved(layer['offset'], name)


@pytest.mark.slow
def test_dump_options_from_command_line(tiny_checkpoint, tmp_path):
    dump_dir = tmp_path / 'dumps'
    run_test_tool(tiny_checkpoint, tmp_path, dump_dir, dict(
        layers=['backbone.layer4.*', 're:backbone\\.layer3\\.[05]\\.conv2'],
        components=['d_f', 'divergence'], dtype='float32', max_images=3))
    dumps = list(iter_offset_dumps(dump_dir))
    assert [d.img_id for d in dumps] == val_image_ids(tiny_checkpoint.data_root)[:3]
    assert list(dumps[0].layers) == ['backbone.layer4.0.conv2', 'backbone.layer4.1.conv2',
                                     'backbone.layer4.2.conv2', 'backbone.layer3.0.conv2',
                                     'backbone.layer3.5.conv2']
    for layer in dumps[0].layers.values():
        assert layer.info['components'] == ['d_f', 'divergence']
    with np.load(dumps[0].path) as npz:
        assert npz['backbone.layer4.0.conv2/d_f'].dtype == np.float32


def test_bad_dump_options_fail_before_the_model_is_built(tiny_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="unknown components.*'d_x'"):
        run_test_tool(tiny_checkpoint, tmp_path, tmp_path / 'd', dict(components='d_x'))
    with pytest.raises(ValueError, match='bad --dump-options.*max_imgs'):
        run_test_tool(tiny_checkpoint, tmp_path, tmp_path / 'd', dict(max_imgs=3))
    with pytest.raises(ValueError, match='dump options need a dump directory'):
        run_test_tool(tiny_checkpoint, tmp_path, dump_options=dict(max_images=3))
    assert not (tmp_path / 'd').exists()


@pytest.mark.slow
def test_unwritable_dir_fails_before_the_first_batch(tiny_checkpoint, tmp_path):
    blocker = tmp_path / 'a_file'
    blocker.write_text('')
    with pytest.raises(PermissionError, match=r'cannot write offset dumps to .*a_file/dumps') as info:
        run_test_tool(tiny_checkpoint, tmp_path, blocker / 'dumps')
    frames = [frame.name for frame in traceback.extract_tb(info.tb)]
    assert 'before_test_epoch' in frames and 'run_iter' not in frames


@pytest.mark.slow
def test_existing_dumps_are_kept_and_resume_completes(tiny_checkpoint, tmp_path):
    """max_images stops a run early; a second run refuses to overwrite, resume=True completes it."""
    dump_dir = tmp_path / 'dumps'
    ids = val_image_ids(tiny_checkpoint.data_root)[:5]
    subset = {'test_dataloader.dataset.indices': 5}
    run_test_tool(tiny_checkpoint, tmp_path, dump_dir, dict(max_images=3), **subset)
    first = {p.name: p.stat().st_mtime_ns for p in offset_dump_paths(dump_dir)}
    assert sorted(first) == sorted(f'{i}.npz' for i in ids[:3])

    with pytest.raises(FileExistsError, match='already holds 3 offset dumps.*resume=True'):
        run_test_tool(tiny_checkpoint, tmp_path, dump_dir, **subset)
    run_test_tool(tiny_checkpoint, tmp_path, dump_dir, dict(resume=True), **subset)
    paths = offset_dump_paths(dump_dir)
    assert [p.name for p in paths] == [f'{i}.npz' for i in ids]
    assert all(p.stat().st_mtime_ns == first[p.name] for p in paths if p.name in first)
    assert sorted(os.listdir(dump_dir)) == sorted(p.name for p in paths)


# ---------------------------------------------------------------------------- in-process runner
class _Interrupt(RuntimeError):
    pass


def _register_interrupt_hook():
    from mmengine.hooks import Hook
    from mmengine.registry import HOOKS

    class InterruptAtBatch(Hook):
        priority = 'HIGHEST'  # runs before OffsetDumpHook writes that batch

        def __init__(self, at):
            self.at = at

        def after_test_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            if batch_idx == self.at:
                raise _Interrupt(f'interrupted at batch {batch_idx}')
    HOOKS.register_module(name='InterruptAtBatchForTest', module=InterruptAtBatch, force=True)


@pytest.mark.slow
def test_exception_mid_epoch_then_resume(tiny_checkpoint, tmp_path):
    _register_interrupt_hook()
    dump_dir = tmp_path / 'dumps'
    ids = val_image_ids(tiny_checkpoint.data_root)[:6]
    options = {'test_dataloader.batch_size': 2, 'test_dataloader.dataset.indices': 6}
    runner = build_runner(eval_config(tiny_checkpoint, tmp_path, **options), dict(out_dir=str(dump_dir)),
                          tiny_checkpoint.checkpoint,
                          [dict(type='InterruptAtBatchForTest', at=1)])
    with pytest.raises(_Interrupt):
        runner.test()
    written = [p.name for p in offset_dump_paths(dump_dir)]
    assert written == [f'{i}.npz' for i in ids[:2]]  # batch 0 only
    (dump_dir / f'.{ids[3]}.npz.x1y2.tmp').write_bytes(b'PK\x03\x04 half')  # a killed writer
    stamps = {name: (dump_dir / name).stat().st_mtime_ns for name in written}

    runner = build_runner(eval_config(tiny_checkpoint, tmp_path, **options),
                          dict(out_dir=str(dump_dir), resume=True), tiny_checkpoint.checkpoint)
    runner.test()
    assert sorted(os.listdir(dump_dir)) == sorted(f'{i}.npz' for i in ids)
    assert all((dump_dir / n).stat().st_mtime_ns == t for n, t in stamps.items())
    for dump in iter_offset_dumps(dump_dir):
        assert len(dump.layers) == 13
    # the forward hooks are gone after the epoch
    for module in runner.model.modules():
        assert not module._forward_hooks


@pytest.mark.slow
def test_byte_budget_stops_with_one_warning(tiny_checkpoint, tmp_path):
    probe = tmp_path / 'probe'
    run_test_tool(tiny_checkpoint, tmp_path, probe, **{'test_dataloader.dataset.indices': 1})
    size = offset_dump_paths(probe)[0].stat().st_size
    dump_dir = tmp_path / 'dumps'
    runner = build_runner(eval_config(tiny_checkpoint, tmp_path, **{'test_dataloader.dataset.indices': 4}),
                          dict(out_dir=str(dump_dir), max_bytes=int(size * 2.5)),
                          tiny_checkpoint.checkpoint)
    from mmengine.logging import MMLogger
    messages = []
    handler = ListHandler(messages)
    MMLogger.get_current_instance().addHandler(handler)
    try:
        runner.test()
    finally:
        MMLogger.get_current_instance().removeHandler(handler)
    paths = offset_dump_paths(dump_dir)
    assert len(paths) == 2 and sum(p.stat().st_size for p in paths) <= size * 2.5
    budget = [m for m in messages if 'byte budget reached' in m]
    assert len(budget) == 1
    assert any('wrote 2 offset dumps' in m for m in messages)


class ListHandler(logging.Handler):
    def __init__(self, messages):
        super().__init__(logging.DEBUG)
        self.messages = messages

    def emit(self, record):
        self.messages.append(record.getMessage())


VARIANTS = {
    # name: (backbone.dcn, kind used by check_against_layer, expected components)
    'mmcv_dcn': (dict(type='DCN', deform_groups=1), 'dcn', ['offset', 'd_f', 'divergence']),
    'mmcv_dcnv2': (dict(type='DCNv2', deform_groups=2), 'dcnv2',
                   ['offset', 'mask', 'd_f', 'divergence']),
    'df_v2': (dict(type='DFOnlyDCN', modulated=True), 'dcnv2_df',
              ['offset', 'offset_used', 'mask', 'd_f', 'divergence']),
    'dk': (dict(type='DKOnlyDCN'), 'dcn_dk', ['offset', 'offset_used', 'd_f', 'divergence']),
    'dkernel_local': (dict(type='DeformableKernel', mode='local', scope=4), 'dk_local',
                      ['kernel_offset']),
    'dkernel_global_data': (dict(type='DeformableKernel', mode='global', scope=4, deform_data=True),
                            'dk_global_data', ['offset', 'kernel_offset', 'd_f', 'divergence']),
}
VARIANT_KEYS = dict(mmcv_dcn='dcn', mmcv_dcnv2='dcnv2', df_v2='dcnv2-df', dk='dcn-dk',
                    dkernel_local='dkernel-local-s4', dkernel_global_data='dcn-dkernel-global-s4')


@pytest.mark.slow
@pytest.mark.parametrize('variant', list(VARIANTS))
def test_every_layer_type_is_dumped_as_computed(variant, tiny_checkpoint, tmp_path):
    """Untrained variants with random offset predictors: stored fields equal the layer's own."""
    dcn, kind, components = VARIANTS[variant]
    dump_dir = tmp_path / 'dumps'
    cfg = eval_config(tiny_checkpoint, tmp_path, **{
        'model.backbone.dcn': dict(_delete_=True, fallback_on_stride=False, **dcn),
        'model.backbone.stage_with_dcn': (False, False, True, True),
        'test_dataloader.dataset.indices': 1})
    runner = build_runner(cfg, dict(out_dir=str(dump_dir), components='all'))
    generator = torch.Generator().manual_seed(0)
    for module in runner.model.modules():
        for part in ('conv_offset', 'conv_data_offset'):
            predictor = getattr(module, part, None)
            if isinstance(predictor, torch.nn.Module):
                for p in predictor.parameters():
                    p.data = (torch.randn(p.shape, generator=generator) * 0.05).to(p.device)
    runner.test()
    dumps = list(iter_offset_dumps(dump_dir))
    assert len(dumps) == 1
    names = list(dumps[0].layers)
    assert names == [f'backbone.layer{s}.{b}.conv2' for s, n in ((3, 6), (4, 3)) for b in range(n)]
    all_components = components + (['d_k'] if 'offset' in components else [])
    for name, layer in dumps[0].layers.items():
        assert layer.info['variant'] == VARIANT_KEYS[variant]
        assert layer.info['components'] == [c for c in ('offset', 'offset_used', 'mask',
                                                        'kernel_offset', 'd_f', 'd_k', 'divergence')
                                            if c in all_components]
        if 'd_k' in layer.arrays:
            # three float16 roundings, each within 2^-11 of its own value, where d_k may be far smaller
            # than the offset and d_f it is the difference of
            scale = np.abs(layer['offset'].astype(np.float64)).max()
            np.testing.assert_allclose(layer['d_k'], layer['offset'].astype(np.float64) - layer['d_f'][:, None],
                                       rtol=0, atol=3 * 2 ** -11 * scale + F16['atol'])
    captured, _ = reference_outputs(runner, names, 0)
    check_against_layer(dumps[0], captured, kind)


# ---------------------------------------------------------------------------- distributed
@pytest.mark.slow
def test_two_ranks_write_each_image_once(tiny_checkpoint, tmp_path):
    """torchrun, 2 CPU processes, gloo: 7 val images (the sampler pads rank 1 with a repeat of
    image 0); every image is written exactly once."""
    dump_dir = tmp_path / 'dumps'
    ids = val_image_ids(tiny_checkpoint.data_root)
    config = str(tmp_path / 'config.py')
    eval_config(tiny_checkpoint, tmp_path, **{'test_dataloader.dataset.indices': 7,
                                              'test_dataloader.batch_size': 2}).dump(config)
    # two ranks on one GPU cannot share NCCL: pinned to the CPU (gloo) on purpose, also on a GPU machine
    env = dict(os.environ, OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='')
    command = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
               osp.join(REPO, 'tools', 'test.py'),
               config, tiny_checkpoint.checkpoint,
               '--launcher', 'pytorch', '--work-dir', str(tmp_path / 'work'),
               '--dump-offsets', str(dump_dir)]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert sorted(os.listdir(dump_dir)) == sorted(f'{i}.npz' for i in ids[:7])
    log = result.stdout + result.stderr
    assert 'wrote 7 offset dumps' in log
    assert '1 repeated images (sampler padding) were not written again' in log
    assert '--launcher pytorch without a GPU that torch can use' in log  # said, not silent
    for dump in iter_offset_dumps(dump_dir):
        assert len(dump.layers) == 13


@pytest.mark.slow
def test_val_loop_is_dumped_too(tiny_checkpoint, tmp_path):
    cfg = eval_config(tiny_checkpoint, tmp_path, splits=('val', 'test'), **{'val_dataloader.dataset.indices': 2})
    dump_dir = tmp_path / 'dumps'
    runner = build_runner(cfg,
                          dict(out_dir=str(dump_dir), layers='backbone.layer4.*'),
                          tiny_checkpoint.checkpoint)
    runner.val()
    dumps = list(iter_offset_dumps(dump_dir))
    assert [d.img_id for d in dumps] == val_image_ids(tiny_checkpoint.data_root)[:2]
    assert list(dumps[0].layers) == [f'backbone.layer4.{b}.conv2' for b in range(3)]
    assert not any(m._forward_hooks for m in runner.model.modules())


# ---------------------------------------------------------------------------- disabled / errors
@pytest.mark.slow
def test_no_hook_no_work(tiny_checkpoint, tmp_path):
    runner = build_runner(eval_config(tiny_checkpoint, tmp_path, **{'test_dataloader.dataset.indices': 2}),
                          checkpoint=tiny_checkpoint.checkpoint)
    runner.test()
    assert not any(type(h).__name__ == 'OffsetDumpHook' for h in runner.hooks)
    assert not any(m._forward_hooks for m in runner.model.modules())


def test_layer_patterns_matching_nothing_are_errors(tiny_checkpoint, tmp_path):
    runner = build_runner(eval_config(tiny_checkpoint, tmp_path),
                          dict(out_dir=str(tmp_path / 'd'), layers=['backbone.layer9.*']))
    with pytest.raises(ValueError, match=r"'backbone.layer9.\*' matches no deformable layer.*"
                       r"backbone.layer2.0.conv2"):
        runner.test()
    assert not (tmp_path / 'd').exists()


def test_model_without_deformable_layers_is_an_error(tiny_checkpoint, tmp_path):
    baseline = osp.join(CPU_CONFIG_DIR, 'faster-rcnn_r50-w16_fpn_synthetic.py')
    runner = build_runner(eval_config(tiny_checkpoint, tmp_path, baseline), dict(out_dir=str(tmp_path / 'd')))
    with pytest.raises(ValueError, match='no deformable layer in its backbone'):
        runner.test()


@pytest.mark.parametrize('kwargs, message', [
    (dict(dtype='int8'), 'dtype must be one of'),
    (dict(max_images=0), 'max_images must be a positive integer'),
    (dict(interval=1.5), 'interval must be a positive integer'),
    (dict(max_bytes='lots'), "cannot read 'lots' as a byte count"),
    (dict(max_bytes=-1), 'positive byte count'),
    (dict(layers='re:('), 'bad regular expression'),
    (dict(resume='yes'), 'resume must be True or False'),
])
def test_bad_options(kwargs, message):
    from deform_viz.hooks import OffsetDumpHook
    with pytest.raises(ValueError, match=message):
        OffsetDumpHook(out_dir='x', **kwargs)


def test_byte_counts():
    from deform_viz.hooks.offset_dump_hook import parse_bytes
    assert parse_bytes(2e9) == 2_000_000_000
    assert parse_bytes('500MB') == 500_000_000 and parse_bytes('2GiB') == 2 * 2**30
    assert parse_bytes('123') == 123


def test_registered_for_mmdet_configs():
    from mmdet.registry import HOOKS
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')
    hook = HOOKS.build(dict(type='OffsetDumpHook', out_dir='somewhere'))
    assert type(hook).__name__ == 'OffsetDumpHook'


def test_corrupt_dump_named_in_error(tmp_path):
    path = tmp_path / '12.npz'
    path.write_bytes(b'PK\x03\x04' + b'\0' * 100)
    with pytest.raises(OffsetDumpError, match=r'12\.npz'):
        load_offset_dump(path)
