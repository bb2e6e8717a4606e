"""What OffsetDumpHook costs: bytes per image at COCO resolution, evaluation slowdown, analysis speed.

1. Size (:func:`measure_size`): mmdet's own ``dcn/faster-rcnn_r50-dconv-c3-c5_fpn_1x_coco.py``
   (ResNet-50, mmcv DCN in c3-c5; no pretrained weights) evaluates one generated 800x1333 image
   (``image_size``)
   through mmengine's runner with three dump hooks at once (default components / all / d_f +
   divergence), float16.
2. Speed (:func:`measure_speed`): the small CPU config evaluates a generated val set, alternating
   runs without and with the hook (default options) on identical weights. Reported: the fastest
   and the median test epoch of ``repeats`` runs of each (end to end, sensitive to other load on
   the machine), and the time spent inside the dump hook's own methods as a share of the epoch
   without it (the overhead measured directly, robust to that load; forward-hook bookkeeping is
   not included but is a few Python calls per layer and batch).
3. Analysis (:func:`measure_analysis`): the same R-50 DCN c3-c5 model (offset predictors
   perturbed so that the fields are not all zero) evaluates ``num_images`` generated images,
   dumping the default components; :func:`deform_viz.analysis.analyze_offsets` then measures those
   dumps with 1 and with ``workers`` processes. Reported: seconds per image from the first
   measured image to the last (process start-up excluded) and as a share of the evaluation time
   per image; the whole analysis with each number of workers, and whether their reports are
   identical.

Each ``measure_*`` returns its numbers; the matching ``*_report`` formats them.
"""
import json
import os
import os.path as osp
import shutil
import statistics
import time

import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from ..analysis import AnalysisSettings, analyze_offsets, measure_dumps
from ..datasets import SYNTHETIC_CLASSES, make_synthetic_coco
from ..dump import load_offset_dump, offset_dump_paths
from ..engine import build_runner, load_config, set_image_scale, trust_local_checkpoints, use_synthetic_data

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
SMALL_CONFIG = osp.join(REPO, 'configs', 'synthetic', 'faster-rcnn_r50-w16-dconv-c3-c5_fpn_synthetic.py')
COCO_DCN_CONFIG = 'mmdet::dcn/faster-rcnn_r50-dconv-c3-c5_fpn_1x_coco.py'
PRESETS = ('default', 'all', 'derived')  # the three dump hooks of the size run
COCO_SIZE = (800, 1333)   # (h, w) of the size run's image


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


def measure_size(work_dir: str, image_size=COCO_SIZE) -> dict:
    """Seconds of the one-image evaluation; per preset its bytes, layers and components; per
    stage (layer2-4) of the default dump its layers, last grid shape and stride. ``image_size``:
    (h, w) of the generated image, evaluated at that size (default COCO's test scale)."""
    data_root = osp.join(work_dir, 'coco_size_data')
    make_synthetic_coco(data_root, num_train=1, num_val=1, image_size=tuple(image_size), seed=0)
    dump_root = osp.join(work_dir, 'size_dumps')
    cfg = set_image_scale(coco_size_config(data_root, osp.join(work_dir, 'size_run'), dump_root),
                          (image_size[1], image_size[0]))
    runner = build_runner(cfg)
    start = time.perf_counter()
    runner.test()
    seconds = time.perf_counter() - start
    presets = {}
    for preset in PRESETS:
        path = offset_dump_paths(osp.join(dump_root, preset))[0]
        layers = list(load_offset_dump(path).layers.values())
        presets[preset] = dict(bytes=osp.getsize(path), layers=len(layers),
                               components=list(layers[0].info['components']))
    dump = load_offset_dump(offset_dump_paths(osp.join(dump_root, 'default'))[0])
    stages = {}
    for stage in ('layer2', 'layer3', 'layer4'):
        infos = [f.info for n, f in dump.layers.items() if f'.{stage}.' in f'.{n}']
        stages[stage] = dict(layers=len(infos), shape=infos[-1]['shape'], stride=infos[-1]['output_stride'])
    return dict(seconds=seconds, presets=presets, stages=stages, image_size=tuple(image_size))


def size_report(result: dict) -> str:
    h, w = result.get('image_size', COCO_SIZE)
    lines = [f'\n== dump size: {COCO_DCN_CONFIG}, {h}x{w} input, float16 '
             f'(one image evaluated in {result["seconds"]:.1f} s)']
    for preset, p in result['presets'].items():
        size = p['bytes']
        lines.append(f'{preset:>8}: {size:>10,d} bytes/image = {size / 2**20:6.2f} MiB '
                     f'({p["layers"]} layers; {", ".join(p["components"])}); '
                     f'5,000 images: {size * 5000 / 2**30:5.1f} GiB')
    for stage, s in result['stages'].items():
        lines.append(f'         {stage}: {s["layers"]} layers, grid {s["shape"]} at stride {s["stride"]}')
    return '\n'.join(lines)


def small_runner(data_root: str, work_dir: str, checkpoint, dump_dir=None):
    cfg = use_synthetic_data(load_config(SMALL_CONFIG, work_dir=work_dir), data_root)
    cfg.load_from = checkpoint
    cfg.custom_hooks = [dict(type='_TestEpochTimer')]
    if dump_dir is not None:
        cfg.custom_hooks.append(dict(type='OffsetDumpHook', out_dir=dump_dir))
    return build_runner(cfg)


def measure_speed(work_dir: str, num_images: int, repeats: int, checkpoint=None) -> dict:
    """Test-epoch seconds without (``off``) and with (``on``) the hook, seconds inside the hook's
    methods (``inside``), per run; bytes the last run wrote; torch threads."""
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
    bytes_written = sum(osp.getsize(p) for p in offset_dump_paths(dump_hook.out_dir))
    return dict(off=list(timer[id(plain)].times), on=list(timer[id(dumping)].times), inside=inside,
                bytes_written=bytes_written, num_images=num_images, repeats=repeats,
                threads=torch.get_num_threads())


def speed_report(result: dict) -> str:
    off, on, inside = result['off'], result['on'], result['inside']
    off_s, on_s = statistics.median(off), statistics.median(on)
    share = [t_in / (t_on - t_in) for t_in, t_on in zip(inside, on)]
    return '\n'.join([
        f'\n== evaluation time: {osp.relpath(SMALL_CONFIG, REPO)}, {result["num_images"]} synthetic '
        f'320x320 val images, {result["threads"]} threads, {result["repeats"]} runs each',
        f'  without hook: median {off_s:.2f} s/epoch (runs: {", ".join(f"{t:.2f}" for t in off)})',
        f'  with hook   : median {on_s:.2f} s/epoch (runs: {", ".join(f"{t:.2f}" for t in on)}), '
        f'{result["bytes_written"] / result["num_images"] / 1e3:.1f} kB/image',
        f'  end to end  : fastest {min(on) / min(off):.3f}x, median {on_s / off_s:.3f}x '
        f'(with / without)',
        f'  inside hook : {statistics.median(inside):.2f} s/epoch = '
        f'{100 * statistics.median(share):+.1f}% of the epoch without it '
        f'(runs: {", ".join(f"{100 * x:.1f}%" for x in share)})'])


def measure_analysis(work_dir: str, num_images: int, image_size, workers: int) -> dict:
    """Evaluation seconds per image and layers dumped; per number of workers (1 and ``workers``)
    measuring seconds per image and whole-analysis seconds; whether their reports are identical."""
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
    files = offset_dump_paths(dump_dir)
    names = list(load_offset_dump(files[0]).layers)
    per_image = {}
    for n in sorted({1, workers}):
        stamps = []
        for _ in measure_dumps(files, ann_file, names, AnalysisSettings(), workers=n):
            stamps.append(time.perf_counter())
        per_image[n] = (stamps[-1] - stamps[0]) / (len(stamps) - 1)   # from the first result: start-up excluded
    reports, seconds = {}, {}
    for n in sorted({1, workers}):
        start = time.perf_counter()
        reports[n] = analyze_offsets(dump_dir, ann_file, workers=n)
        seconds[n] = time.perf_counter() - start
    same = len({json.dumps(r, sort_keys=True) for r in reports.values()}) == 1
    return dict(num_images=num_images, image_size=tuple(image_size), layers=len(names), evaluation=evaluation,
                per_image=per_image, seconds=seconds, same=same)


def analysis_report(result: dict) -> str:
    h, w = result['image_size']
    evaluation = result['evaluation']
    lines = [f'\n== analysis: {result["num_images"]} images of {h}x{w} ({result["layers"]} layers), '
             f'evaluated and dumped at {evaluation:.2f} s/image']
    for n, per_image in result['per_image'].items():
        lines.append(f'  measuring, {n} worker{"s" if n > 1 else " "}: {per_image:.3f} s/image = '
                     f'{100 * per_image / evaluation:.1f}% of the evaluation time per image')
    lines.append('  whole analysis (start-up, measuring, tests): ' + ', '.join(
        f'{n} worker{"s" if n > 1 else ""} {t:.1f} s' for n, t in result['seconds'].items())
        + f'; reports identical: {"yes" if result["same"] else "NO"}')
    return '\n'.join(lines)
