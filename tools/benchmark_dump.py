"""Measure what OffsetDumpHook costs: bytes per image at COCO resolution, and evaluation slowdown.

    python tools/benchmark_dump.py [--work-dir DIR] [--num-images 16] [--repeats 3]
                                   [--checkpoint CKPT] [--skip-size] [--skip-speed]

1. Size: mmdet's own ``dcn/faster-rcnn_r50-dconv-c3-c5_fpn_1x_coco.py`` (ResNet-50, mmcv DCN in
   c3-c5; no pretrained weights) evaluates one generated 800x1333 image through mmengine's
   runner with three dump hooks at once (default components / all / d_f + divergence), float16.
2. Speed: the small CPU config evaluates a generated val set, alternating runs without and with
   the hook (default options) on identical weights. Reported: the fastest and the median test
   epoch of ``--repeats`` runs of each (end to end, sensitive to other load on the machine), and
   the time spent inside the dump hook's own methods as a share of the epoch without it (the
   overhead measured directly, robust to that load; forward-hook bookkeeping is not included
   but is a few Python calls per layer and batch).
"""
import argparse
import os
import os.path as osp
import statistics
import tempfile
import time

import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

import deform_viz  # noqa: F401  registers layers and OffsetDumpHook
from deform_viz.datasets import SYNTHETIC_CLASSES, make_synthetic_coco
from deform_viz.dump import load_offset_dump, offset_dump_paths
from deform_viz.engine import build_runner, trust_local_checkpoints, use_synthetic_data

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
SMALL_CONFIG = osp.join(REPO, 'configs', 'synthetic', 'faster-rcnn_r50-w16-dconv-c3-c5_fpn_synthetic.py')
COCO_DCN_CONFIG = 'mmdet::dcn/faster-rcnn_r50-dconv-c3-c5_fpn_1x_coco.py'


@HOOKS.register_module(force=True)
class _TestEpochTimer(Hook):
    """Wall time of each test epoch (all iterations, the other hooks' work and the metric)."""
    priority = 'HIGHEST'

    def __init__(self):
        self.times = []

    def before_test_epoch(self, runner):
        self._start = time.perf_counter()

    def after_test_epoch(self, runner, metrics=None):
        self.times.append(time.perf_counter() - self._start)


def coco_size_config(data_root: str, work_dir: str, dump_root: str) -> Config:
    """mmdet's R-50 DCN c3-c5 Faster R-CNN, test loop reading one synthetic 800x1333 image."""
    text = f"""
_base_ = '{COCO_DCN_CONFIG}'
custom_imports = dict(imports=['deform_viz'], allow_failed_imports=False)
model = dict(backbone=dict(init_cfg=None),
             roi_head=dict(bbox_head=dict(num_classes={len(SYNTHETIC_CLASSES)})))
test_dataloader = dict(batch_size=1, num_workers=0, persistent_workers=False, dataset=dict(
    data_root={data_root!r}, ann_file='annotations/instances_val.json',
    data_prefix=dict(img='val/'), metainfo=dict(classes={tuple(SYNTHETIC_CLASSES)!r})))
test_evaluator = dict(ann_file={osp.join(data_root, 'annotations/instances_val.json')!r})
work_dir = {work_dir!r}
custom_hooks = [
    dict(type='OffsetDumpHook', out_dir={osp.join(dump_root, 'default')!r}),
    dict(type='OffsetDumpHook', out_dir={osp.join(dump_root, 'all')!r}, components='all'),
    dict(type='OffsetDumpHook', out_dir={osp.join(dump_root, 'derived')!r},
         components=['d_f', 'divergence']),
]
"""
    path = osp.join(work_dir, 'size_config.py')
    os.makedirs(work_dir, exist_ok=True)
    with open(path, 'w') as f:
        f.write(text)
    cfg = Config.fromfile(path)
    cfg.launcher = 'none'
    return cfg


def measure_size(work_dir: str) -> None:
    data_root = osp.join(work_dir, 'coco_size_data')
    make_synthetic_coco(data_root, num_train=1, num_val=1, image_size=(800, 1333), seed=0)
    dump_root = osp.join(work_dir, 'size_dumps')
    cfg = coco_size_config(data_root, osp.join(work_dir, 'size_run'), dump_root)
    runner = build_runner(cfg)
    start = time.perf_counter()
    runner.test()
    seconds = time.perf_counter() - start
    print(f'\n== dump size: {COCO_DCN_CONFIG}, 800x1333 input, float16 '
          f'(one image evaluated in {seconds:.1f} s)')
    for preset in ('default', 'all', 'derived'):
        path = offset_dump_paths(osp.join(dump_root, preset))[0]
        dump = load_offset_dump(path)
        size = osp.getsize(path)
        layers = list(dump.layers.values())
        components = ', '.join(layers[0].info['components'])
        print(f'{preset:>8}: {size:>10,d} bytes/image = {size / 2**20:6.2f} MiB '
              f'({len(layers)} layers; {components}); 5,000 images: {size * 5000 / 2**30:5.1f} GiB')
    dump = load_offset_dump(offset_dump_paths(osp.join(dump_root, 'default'))[0])
    for stage in ('layer2', 'layer3', 'layer4'):
        infos = [f.info for n, f in dump.layers.items() if f'.{stage}.' in f'.{n}']
        print(f'         {stage}: {len(infos)} layers, grid {infos[-1]["shape"]} at stride '
              f'{infos[-1]["output_stride"]}')


def small_runner(data_root: str, work_dir: str, checkpoint, dump_dir=None):
    from deform_viz.engine import load_config
    cfg = use_synthetic_data(load_config(SMALL_CONFIG, work_dir=work_dir), data_root)
    cfg.load_from = checkpoint
    cfg.custom_hooks = [dict(type='_TestEpochTimer')]
    if dump_dir is not None:
        cfg.custom_hooks.append(dict(type='OffsetDumpHook', out_dir=dump_dir))
    return build_runner(cfg)


def measure_speed(work_dir: str, num_images: int, repeats: int, checkpoint) -> None:
    data_root = osp.join(work_dir, 'speed_data')
    make_synthetic_coco(data_root, num_train=1, num_val=num_images, image_size=(320, 320), seed=0)
    trust_local_checkpoints()
    plain = small_runner(data_root, osp.join(work_dir, 'speed_plain'), checkpoint)
    dumping = small_runner(data_root, osp.join(work_dir, 'speed_dump'), checkpoint,
                           osp.join(work_dir, 'speed_dumps', 'run0'))
    dumping.model.load_state_dict(plain.model.state_dict())  # identical weights either way
    timer = {id(r): next(h for h in r.hooks if isinstance(h, _TestEpochTimer))
             for r in (plain, dumping)}
    dump_hook = next(h for h in dumping.hooks if type(h).__name__ == 'OffsetDumpHook')
    inside = []  # seconds spent in the dump hook's methods, per run

    def timed(method):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                inside[-1] += time.perf_counter() - start
        return wrapper
    for name in ('before_test_epoch', 'before_test_iter', 'after_test_iter', 'after_test_epoch'):
        setattr(dump_hook, name, timed(getattr(dump_hook, name)))
    plain.test()  # warm-up (allocator, lazy imports), not timed
    timer[id(plain)].times.clear()
    for run in range(repeats):
        plain.test()
        dump_hook.out_dir = type(dump_hook.out_dir)(osp.join(work_dir, 'speed_dumps', f'run{run}'))
        inside.append(0.0)
        dumping.test()
    off, on = timer[id(plain)].times, timer[id(dumping)].times
    bytes_written = sum(osp.getsize(p) for p in offset_dump_paths(dump_hook.out_dir))
    off_s, on_s = statistics.median(off), statistics.median(on)
    share = [t_in / (t_on - t_in) for t_in, t_on in zip(inside, on)]
    print(f'\n== evaluation time: {osp.relpath(SMALL_CONFIG, REPO)}, {num_images} synthetic '
          f'320x320 val images, {torch.get_num_threads()} threads, {repeats} runs each')
    print(f'  without hook: median {off_s:.2f} s/epoch (runs: {", ".join(f"{t:.2f}" for t in off)})')
    print(f'  with hook   : median {on_s:.2f} s/epoch (runs: {", ".join(f"{t:.2f}" for t in on)}), '
          f'{bytes_written / num_images / 1e3:.1f} kB/image')
    print(f'  end to end  : fastest {min(on) / min(off):.3f}x, median {on_s / off_s:.3f}x '
          f'(with / without)')
    print(f'  inside hook : {statistics.median(inside):.2f} s/epoch = '
          f'{100 * statistics.median(share):+.1f}% of the epoch without it '
          f'(runs: {", ".join(f"{100 * x:.1f}%" for x in share)})')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--work-dir', help='where data, dumps and logs go (default: a temp dir)')
    parser.add_argument('--num-images', type=int, default=16, help='val images for the speed run')
    parser.add_argument('--repeats', type=int, default=3, help='timed runs with and without hook')
    parser.add_argument('--checkpoint', help='weights for the speed run (default: untrained)')
    parser.add_argument('--skip-size', action='store_true')
    parser.add_argument('--skip-speed', action='store_true')
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work_dir = args.work_dir or tmp
        if not args.skip_size:
            measure_size(work_dir)
        if not args.skip_speed:
            measure_speed(work_dir, args.num_images, args.repeats, args.checkpoint)


if __name__ == '__main__':
    main()
