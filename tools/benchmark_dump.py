"""Measure what OffsetDumpHook costs: bytes per image at COCO resolution, and evaluation slowdown.

    python tools/benchmark_dump.py [--work-dir DIR] [--num-images 16] [--repeats 3]
                                   [--checkpoint CKPT] [--skip-size] [--skip-speed]
                                   [--skip-analysis] [--analysis-images 8] [--analysis-size 800 1333]
                                   [--workers 2]

1. Size: mmdet's own ``dcn/faster-rcnn_r50-dconv-c3-c5_fpn_1x_coco.py`` (ResNet-50, mmcv DCN in
   c3-c5; no pretrained weights) evaluates one generated 800x1333 image through mmengine's
   runner with three dump hooks at once (default components / all / d_f + divergence), float16.
2. Speed: the small CPU config evaluates a generated val set, alternating runs without and with
   the hook (default options) on identical weights. Reported: the fastest and the median test
   epoch of ``--repeats`` runs of each (end to end, sensitive to other load on the machine), and
   the time spent inside the dump hook's own methods as a share of the epoch without it (the
   overhead measured directly, robust to that load; forward-hook bookkeeping is not included
   but is a few Python calls per layer and batch).
3. Analysis: the same R-50 DCN c3-c5 model (offset predictors perturbed so that the fields are
   not all zero) evaluates ``--analysis-images`` generated images, dumping the default
   components; ``deform_viz.analysis.analyze_offsets`` then measures those dumps with 1 and with
   ``--workers`` processes. Reported: seconds per image from the first measured image to the last
   (process start-up excluded) and as a share of the evaluation time per image; the whole
   analysis with each number of workers, and whether their reports are identical.
"""
import argparse
import json
import os
import os.path as osp
import shutil
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


def coco_size_config(data_root: str, work_dir: str, dump_root: str, hooks=None) -> Config:
    """mmdet's R-50 DCN c3-c5 Faster R-CNN, test loop reading the synthetic val images; ``hooks``
    (default: three dump hooks under ``dump_root``) become its ``custom_hooks``."""
    hooks = hooks if hooks is not None else f"""[
    dict(type='OffsetDumpHook', out_dir={osp.join(dump_root, 'default')!r}),
    dict(type='OffsetDumpHook', out_dir={osp.join(dump_root, 'all')!r}, components='all'),
    dict(type='OffsetDumpHook', out_dir={osp.join(dump_root, 'derived')!r},
         components=['d_f', 'divergence']),
]"""
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
custom_hooks = {hooks}
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


def measure_analysis(work_dir: str, num_images: int, image_size, workers: int) -> None:
    from deform_viz.analysis import AnalysisSettings, analyze_offsets, measure_dumps
    from deform_viz.engine import set_image_scale
    if num_images < 2:
        raise ValueError(f'--analysis-images must be at least 2 (time is taken from the first result), '
                         f'got {num_images}')
    data_root = osp.join(work_dir, 'analysis_data')
    make_synthetic_coco(data_root, num_train=1, num_val=num_images, image_size=tuple(image_size), seed=0)
    dump_dir = osp.join(work_dir, 'analysis_dumps')
    shutil.rmtree(dump_dir, ignore_errors=True)   # the dumps belong to this run's weights
    hooks = f"[dict(type='_TestEpochTimer'), dict(type='OffsetDumpHook', out_dir={dump_dir!r})]"
    cfg = set_image_scale(coco_size_config(data_root, osp.join(work_dir, 'analysis_run'), dump_dir, hooks),
                          (image_size[1], image_size[0]))
    runner = build_runner(cfg)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():   # mmcv starts its offset predictors at zero: give the fields some content
        for name, param in runner.model.named_parameters():
            if 'conv_offset' in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.01)
    runner.test()
    timer = next(h for h in runner.hooks if isinstance(h, _TestEpochTimer))
    evaluation = timer.times[-1] / num_images
    ann_file = osp.join(data_root, 'annotations', 'instances_val.json')
    layers = len(load_offset_dump(offset_dump_paths(dump_dir)[0]).layers)
    print(f'\n== analysis: {num_images} images of {image_size[0]}x{image_size[1]} ({layers} layers), '
          f'evaluated and dumped at {evaluation:.2f} s/image')
    files = offset_dump_paths(dump_dir)
    names = list(load_offset_dump(files[0]).layers)
    for n in sorted({1, workers}):
        stamps = []
        for _ in measure_dumps(files, ann_file, names, AnalysisSettings(), workers=n):
            stamps.append(time.perf_counter())
        per_image = (stamps[-1] - stamps[0]) / (len(stamps) - 1)   # from the first result: start-up excluded
        print(f'  measuring, {n} worker{"s" if n > 1 else " "}: {per_image:.3f} s/image = '
              f'{100 * per_image / evaluation:.1f}% of the evaluation time per image')
    reports, seconds = {}, {}
    for n in sorted({1, workers}):
        start = time.perf_counter()
        reports[n] = analyze_offsets(dump_dir, ann_file, workers=n)
        seconds[n] = time.perf_counter() - start
    same = len({json.dumps(r, sort_keys=True) for r in reports.values()}) == 1
    print('  whole analysis (start-up, measuring, tests): ' + ', '.join(
        f'{n} worker{"s" if n > 1 else ""} {t:.1f} s' for n, t in seconds.items())
        + f'; reports identical: {"yes" if same else "NO"}')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--work-dir', help='where data, dumps and logs go (default: a temp dir)')
    parser.add_argument('--num-images', type=int, default=16, help='val images for the speed run')
    parser.add_argument('--repeats', type=int, default=3, help='timed runs with and without hook')
    parser.add_argument('--checkpoint', help='weights for the speed run (default: untrained)')
    parser.add_argument('--skip-size', action='store_true')
    parser.add_argument('--skip-speed', action='store_true')
    parser.add_argument('--skip-analysis', action='store_true')
    parser.add_argument('--analysis-images', type=int, default=8, help='images dumped for the analysis run')
    parser.add_argument('--analysis-size', type=int, nargs=2, default=(800, 1333), metavar=('H', 'W'),
                        help='size of those images (default 800 1333)')
    parser.add_argument('--workers', type=int, default=2, help='analysis processes compared with one')
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work_dir = args.work_dir or tmp
        if not args.skip_size:
            measure_size(work_dir)
        if not args.skip_speed:
            measure_speed(work_dir, args.num_images, args.repeats, args.checkpoint)
        if not args.skip_analysis:
            measure_analysis(work_dir, args.analysis_images, args.analysis_size, args.workers)


if __name__ == '__main__':
    main()
