"""What OffsetStatsHook costs a training step, as a ratio to the same step without it.

One training run of a CPU synthetic detector (default: DCN in c3-c5) on a generated dataset,
with ``OffsetStatsHook(interval=2)``: recorded and plain iterations alternate in the same process,
so both see the same load on the machine. Each iteration is timed from its first
``before_train_iter`` hook to its last ``after_train_iter`` hook (forward, backward, optimizer step
and every hook; data loading excluded); the first :data:`WARM_UP` are left out. Reported: the
median step with and without recording and their ratio (end to end, sensitive to other load), the
time spent in the hook's own methods as a ratio to the plain step (the overhead measured directly,
robust to that load; the forward hooks, which only keep a reference to each predictor output, are
not included), and what that costs on average at a logging interval.
"""
import os.path as osp
import statistics
import time

import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from ..datasets import make_synthetic_coco
from ..engine import load_config, train, use_synthetic_data
from ..hooks import OffsetStatsHook

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DCN_CONFIG = osp.join(REPO, 'configs', 'synthetic',
                      'faster-rcnn_r50-w16-dconv-c3-c5_fpn_synthetic.py')
WARM_UP = 4  # iterations left out: allocator and thread-pool warm-up
MIN_ITERS = WARM_UP + 4  # enough for two steps of each kind after the warm-up
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


def measure_offset_stats(config: str, iters: int, image_size: int, work_dir: str) -> dict:
    """Median seconds of recorded and of plain training steps, of the hook's own work on a
    recorded step, how many steps of each kind, the batch size, and the ratios recorded / plain
    (``ratio``) and hook / plain (``hook_ratio``)."""
    if iters < MIN_ITERS:
        raise ValueError(f'iters must be at least {MIN_ITERS}, got {iters}')
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
    result = dict(recorded=statistics.median(recorded), plain=statistics.median(plain),
                  hook=statistics.median(hook), num_recorded=len(recorded), num_plain=len(plain),
                  batch_size=batch_size)
    return dict(result, ratio=result['recorded'] / result['plain'], hook_ratio=result['hook'] / result['plain'])


def offset_stats_report(result: dict, config: str, image_size: int, interval: int) -> str:
    """The lines of a :func:`measure_offset_stats` result; ``interval``: the logging interval to
    state the average cost for. Reads this process's torch threads."""
    hook_ratio = result['hook_ratio']
    return '\n'.join([
        f'\nOffsetStatsHook on {osp.basename(config)}: {image_size} px, batch '
        f'{result["batch_size"]}, {torch.get_num_threads()} torch threads; '
        f'{result["num_recorded"]} recorded and {result["num_plain"]} plain steps, '
        f'the first {WARM_UP} left out',
        f'  training step, plain:     {result["plain"]:.3f} s (median)',
        f'  training step, recorded:  {result["recorded"]:.3f} s (median)',
        f'  ratio recorded / plain:   {result["ratio"]:.3f}',
        f'  the hook\'s own work:      {1e3 * result["hook"]:.1f} ms per recorded step (median), '
        f'{hook_ratio:.4f} of a plain step; at interval={interval}: '
        f'{100 * hook_ratio / interval:.3f} % of the training time'])
