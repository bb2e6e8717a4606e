"""Measure what OffsetStatsHook costs a training step, as a ratio to the same step without it.

    python tools/benchmark_offset_stats.py [--config CFG] [--iters 24] [--image-size 256]
                                           [--interval 50] [--work-dir DIR]

One training run of the CPU synthetic detector (default: DCN in c3-c5) on a generated dataset,
with ``OffsetStatsHook(interval=2)``: recorded and plain iterations alternate in the same process,
so both see the same load on the machine. Each iteration is timed from its first
``before_train_iter`` hook to its last ``after_train_iter`` hook (forward, backward, optimizer step
and every hook; data loading excluded). Printed: the median step with and without recording and
their ratio (end to end, sensitive to other load), the time spent in the hook's own methods as a
ratio to the plain step (the overhead measured directly, robust to that load; the forward hooks,
which only keep a reference to each predictor output, are not included), and what that costs on
average at ``--interval``.
"""
import argparse
import os.path as osp
import statistics
import tempfile
import time

import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from deform_viz.datasets import make_synthetic_coco
from deform_viz.engine import load_config, train, use_synthetic_data
from deform_viz.hooks import OffsetStatsHook

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DCN_CONFIG = osp.join(REPO, 'configs', 'synthetic',
                      'faster-rcnn_r50-w16-dconv-c3-c5_fpn_synthetic.py')
WARM_UP = 4  # iterations left out: allocator and thread-pool warm-up
STEP_TIMES = {}  # runner.iter -> seconds
HOOK_TIMES = {}  # runner.iter -> seconds inside OffsetStatsHook's methods


@HOOKS.register_module(force=True)
class _StepStart(Hook):
    priority = 'HIGHEST'

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        STEP_TIMES[runner.iter] = -time.perf_counter()


@HOOKS.register_module(force=True)
class _StepEnd(Hook):
    priority = 'LOWEST'

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        STEP_TIMES[runner.iter] += time.perf_counter()


@HOOKS.register_module(force=True)
class _TimedOffsetStatsHook(OffsetStatsHook):
    def before_train_iter(self, runner, batch_idx, data_batch=None):
        start = time.perf_counter()
        super().before_train_iter(runner, batch_idx, data_batch)
        HOOK_TIMES[runner.iter] = time.perf_counter() - start

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        start = time.perf_counter()
        super().after_train_iter(runner, batch_idx, data_batch, outputs)
        HOOK_TIMES[runner.iter] += time.perf_counter() - start


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--config', default=DCN_CONFIG, help='a configs/synthetic/ config')
    parser.add_argument('--iters', type=int, default=24, help='training iterations (>= 8)')
    parser.add_argument('--image-size', type=int, default=256)
    parser.add_argument('--interval', type=int, default=50,
                        help='the logging interval to state the average cost for')
    parser.add_argument('--work-dir', help='default: a temporary directory')
    args = parser.parse_args(argv)
    if args.iters < WARM_UP + 4:
        parser.error(f'--iters must be at least {WARM_UP + 4}')
    return args


def measure(config: str, iters: int, image_size: int, work_dir: str) -> dict:
    """Median seconds of recorded and of plain training steps, of the hook's own work on a
    recorded step, and how many steps of each kind."""
    cfg = load_config(config, work_dir=osp.join(work_dir, 'work'))
    batch_size = cfg.train_dataloader.batch_size
    data_root = osp.join(work_dir, 'data')
    make_synthetic_coco(data_root, num_train=8 * batch_size, num_val=1,
                        image_size=(image_size, image_size), seed=0)
    use_synthetic_data(cfg, data_root, (image_size, image_size))
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=iters)
    cfg.model.backbone.init_cfg = None  # speed needs no trained weights
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = cfg.default_hooks.checkpoint = None
    cfg.custom_hooks = [dict(type='_StepStart'), dict(type='_TimedOffsetStatsHook', interval=2),
                        dict(type='_StepEnd')]
    STEP_TIMES.clear()
    HOOK_TIMES.clear()
    train(cfg)
    # OffsetStatsHook(interval=2) records the first iteration and every odd runner.iter
    measured = {i: t for i, t in STEP_TIMES.items() if i >= WARM_UP}
    recorded = [t for i, t in measured.items() if (i + 1) % 2 == 0]
    plain = [t for i, t in measured.items() if (i + 1) % 2]
    hook = [HOOK_TIMES[i] for i in measured if (i + 1) % 2 == 0]
    return dict(recorded=statistics.median(recorded), plain=statistics.median(plain),
                hook=statistics.median(hook), num_recorded=len(recorded), num_plain=len(plain),
                batch_size=batch_size)


def main(argv=None) -> dict:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(args.config, args.iters, args.image_size, args.work_dir or tmp)
    ratio = result['recorded'] / result['plain']
    hook_ratio = result['hook'] / result['plain']
    print(f'\nOffsetStatsHook on {osp.basename(args.config)}: {args.image_size} px, batch '
          f'{result["batch_size"]}, {torch.get_num_threads()} torch threads; '
          f'{result["num_recorded"]} recorded and {result["num_plain"]} plain steps, '
          f'the first {WARM_UP} left out')
    print(f'  training step, plain:     {result["plain"]:.3f} s (median)')
    print(f'  training step, recorded:  {result["recorded"]:.3f} s (median)')
    print(f'  ratio recorded / plain:   {ratio:.3f}')
    print(f'  the hook\'s own work:      {1e3 * result["hook"]:.1f} ms per recorded step (median), '
          f'{hook_ratio:.4f} of a plain step; at interval={args.interval}: '
          f'{100 * hook_ratio / args.interval:.3f} % of the training time')
    return dict(result, ratio=ratio, hook_ratio=hook_ratio)


if __name__ == '__main__':
    main()
