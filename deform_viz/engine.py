"""Running mmdet from this package: load and edit a config, then :func:`train` or :func:`evaluate`.

``tools/train.py`` and ``tools/test.py`` are argument parsing around these two; the demo, the
experiments and the tests call them with edited :class:`~mmengine.config.Config` objects::

    cfg = load_config('configs/synthetic/faster-rcnn_r50-w16-dconv-c3-c5_fpn_synthetic.py',
                      work_dir='work_dirs/dcn')
    use_synthetic_data(cfg, 'data/synthetic', image_scale=(160, 160))
    set_schedule(cfg, 8, warmup_iters=4)
    train(cfg)
    metrics = evaluate(cfg, 'work_dirs/dcn/iter_8.pth', dump_offsets='work_dirs/dcn/offsets')
"""
import logging
import os.path as osp
import warnings
from contextlib import contextmanager
from typing import Optional, Sequence, Tuple

import torch
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS
from mmengine.runner import Runner

from ._cuda_build import cpu_requested, driver_gpus
from .checkpoint_check import DeformableCheckpointGuard
from .config_check import check_config

SPLITS = ('train', 'val', 'test')


def load_config(config: str, cfg_options: Optional[dict] = None, work_dir: Optional[str] = None,
                launcher: str = 'none') -> Config:
    """Read a config, apply ``--cfg-options`` and ``--work-dir`` as mmdet's tools do, and check it.

    The work dir defaults to ``./work_dirs/<config name>``.
    """
    cfg = Config.fromfile(config)
    cfg.launcher = launcher
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config))[0])
    check_config(cfg)
    return cfg


# ---------------------------------------------------------------------------------------- editors
def _datasets(cfg: Config, splits: Sequence[str]):
    """The dataset configs of the given dataloaders, wrapped datasets (``dataset.dataset``) too."""
    for split in splits:
        dataset = cfg.get(f'{split}_dataloader', {}).get('dataset')
        while dataset is not None:
            yield dataset
            dataset = dataset.get('dataset')


def set_image_scale(cfg: Config, scale: Tuple[int, int], splits: Sequence[str] = SPLITS) -> Config:
    """Set the ``scale`` of every ``Resize`` in the pipelines of ``splits`` (found by type, not
    position); an error if there is none."""
    found = 0
    for dataset in _datasets(cfg, splits):
        for transform in dataset.get('pipeline') or ():
            if transform.get('type') in ('Resize', 'mmdet.Resize'):
                transform['scale'] = tuple(scale)
                found += 1
    if not found:
        raise ValueError(f'{cfg.filename}: no Resize transform in the {"/".join(splits)} pipelines '
                         f'to set the scale {tuple(scale)} on')
    return cfg


def _evaluators(cfg: Config, splits: Sequence[str]):
    """The metric configs of the given evaluators (an evaluator may be one metric or a list)."""
    for split in splits:
        evaluator = cfg.get(f'{split}_evaluator')
        yield from evaluator if isinstance(evaluator, (list, tuple)) else [evaluator] if evaluator else []


def use_synthetic_data(cfg: Config, data_root: str, image_scale: Optional[Tuple[int, int]] = None) -> Config:
    """Point a config built on ``configs/_base_/datasets/synthetic_shapes.py`` at the dataset
    :func:`deform_viz.datasets.make_synthetic_coco` generated in ``data_root`` (optionally
    resizing its images to ``image_scale``)."""
    root = osp.join(data_root, '')
    for dataset in _datasets(cfg, SPLITS):
        if 'ann_file' in dataset:
            dataset.data_root = root
    for metric in _evaluators(cfg, ('val', 'test')):
        if 'ann_file' in metric:
            metric.ann_file = root + 'annotations/instances_val.json'
    if image_scale is not None:
        set_image_scale(cfg, image_scale)
    return cfg


_LOOP_LENGTH = {'EpochBasedTrainLoop': 'max_epochs', 'IterBasedTrainLoop': 'max_iters'}


def set_schedule(cfg: Config, length: int, warmup_iters: Optional[int] = None) -> Config:
    """Train for ``length`` epochs or iterations (the unit of the config's train loop), validating
    and saving a checkpoint at the end only.

    The ``MultiStepLR`` steps keep their fractions of the schedule, schedulers that ended with it
    end with the new one, and the iteration-based ``LinearLR`` warm-up lasts ``warmup_iters`` if
    given. Schedulers are found by type, not position.
    """
    key = _LOOP_LENGTH.get(cfg.train_cfg.get('type'))
    if key is None:
        raise ValueError(f'{cfg.filename}: set_schedule needs one of {sorted(_LOOP_LENGTH)}, '
                         f'got train_cfg.type={cfg.train_cfg.get("type")!r}')
    if length < 1:
        raise ValueError(f'the schedule length must be at least 1, got {length}')
    old = cfg.train_cfg[key]
    cfg.train_cfg[key] = length
    cfg.train_cfg.val_interval = length
    cfg.default_hooks.checkpoint.interval = length
    schedulers = cfg.get('param_scheduler') or []
    schedulers = [schedulers] if isinstance(schedulers, dict) else schedulers
    by_epoch = key == 'max_epochs'
    for scheduler in schedulers:
        if scheduler.get('by_epoch', True) != by_epoch:
            continue
        if scheduler.get('type') == 'MultiStepLR':
            scheduler.milestones = [max(1, round(m * length / old)) for m in scheduler.milestones]
        if scheduler.get('end') == old:
            scheduler.end = length
    if warmup_iters is not None:
        warmups = [s for s in schedulers if s.get('type') == 'LinearLR' and not s.get('by_epoch', True)]
        if not warmups:
            raise ValueError(f'{cfg.filename}: no iteration-based LinearLR warm-up to set to {warmup_iters}')
        for warmup in warmups:
            warmup.end = warmup_iters
    return cfg


# ---------------------------------------------------------------------------------------- running
@OPTIM_WRAPPERS.register_module()
class CPUAmpOptimWrapper(OptimWrapper):
    """Mixed precision on a CPU-only machine: the detector's backbone runs under bfloat16 autocast.

    mmengine's ``AmpOptimWrapper`` needs a GPU (its ``GradScaler`` is CUDA's); bfloat16 keeps
    float32's exponent range, so its gradients need no loss scaling. Only the backbone, where the
    deformable layers are, is autocast: the CPU kernels of mmcv that the detection heads call
    (RoIAlign, NMS) have no bfloat16 versions, so the backbone's features go on as float32.
    """

    @contextmanager
    def optim_context(self, model: torch.nn.Module):
        module = model.module if is_model_wrapper(model) else model
        backbone = getattr(module, 'backbone', None)
        if backbone is None:
            raise TypeError(f'CPUAmpOptimWrapper autocasts a detector\'s backbone; {type(module).__name__} has none')
        autocast = torch.autocast('cpu', dtype=torch.bfloat16, cache_enabled=False)
        entered = []

        def enter(module, args):
            autocast.__enter__()
            entered.append(True)

        def leave(module, args, features):
            autocast.__exit__(None, None, None)
            entered.pop()
            if isinstance(features, torch.Tensor):
                return features.float()
            return type(features)(f.float() for f in features)

        handles = [backbone.register_forward_pre_hook(enter), backbone.register_forward_hook(leave)]
        try:
            with super().optim_context(model):
                yield
        finally:
            for handle in handles:
                handle.remove()
            if entered:  # the backbone raised: leave autocast all the same
                autocast.__exit__(None, None, None)


def build_runner(cfg: Config) -> Runner:
    """The runner named by ``runner_type`` (mmdet's RUNNERS), else mmengine's default, with
    :class:`~deform_viz.checkpoint_check.DeformableCheckpointGuard` registered.

    mmdet's configs name their visualizer 'visualizer', and mmengine keeps one instance per
    name: a second runner in the same process (demo, ablation, tests) would write into the
    first run's vis_data. Unnamed, each runner's visualizer takes its experiment name.
    """
    if cfg.get('visualizer') and cfg.visualizer.get('name') == 'visualizer':
        cfg.visualizer.pop('name')
    if cfg.get('launcher', 'none') == 'pytorch' and not torch.cuda.is_available():
        check_cpu_fallback('--launcher pytorch', 'each process trains on the CPU, the ranks talk over gloo')
        _prepare_cpu_distributed(cfg)
    if 'runner_type' in cfg:
        from mmdet.registry import RUNNERS
        runner = RUNNERS.build(cfg)
    else:
        runner = Runner.from_cfg(cfg)
    runner.register_hook(DeformableCheckpointGuard())
    return runner


def _prepare_cpu_distributed(cfg: Config) -> None:
    """Let ``--launcher pytorch`` run on CPU-only torch (gloo), e.g. torchrun tests and CPU clusters.

    mmengine 0.10's ``init_dist`` calls ``torch.cuda.set_device`` whatever the backend, and its
    default DDP wrapper passes a GPU index as ``device_ids``. Starting the gloo group first makes
    mmengine reuse it; DDP on CPU takes ``device_ids=None``.
    """
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group('gloo')
    if cfg.get('model_wrapper_cfg') is None:
        cfg.model_wrapper_cfg = dict(type='MMDistributedDataParallel', device_ids=None,
                                     broadcast_buffers=False,
                                     find_unused_parameters=cfg.get('find_unused_parameters', False))


def close_distributed() -> None:
    """End a ``--launcher pytorch`` run cleanly: wait for every rank, then shut the group down.

    Left to interpreter exit, gloo's worker threads can be torn down while still joinable and a
    rank aborts ("terminate called without an active exception") after its work is done.
    A no-op without a process group.
    """
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def trust_local_checkpoints() -> None:
    """Load local checkpoints as mmengine did before torch 2.6 (``weights_only=False``).

    mmengine 0.10 calls ``torch.load`` without ``weights_only``; torch >= 2.6 then refuses the
    checkpoints mmengine itself writes (their message hub pickles HistoryBuffers through
    ``getattr``, which no safe allowlist can admit). :func:`train` and :func:`evaluate` call this
    because they load the checkpoint their caller names: load only checkpoints you trust.
    """
    from mmengine.runner.checkpoint import CheckpointLoader

    def load_from_local(filename, map_location):
        filename = osp.expanduser(filename)
        if not osp.isfile(filename):
            raise FileNotFoundError(f'{filename} can not be found.')
        return torch.load(filename, map_location=map_location, weights_only=False)

    CheckpointLoader.register_scheme(prefixes='', loader=load_from_local, force=True)


def use_amp(cfg: Config) -> Config:
    """Mixed-precision training: mmengine's ``AmpOptimWrapper`` (float16, dynamic loss scale)
    on a GPU, :class:`CPUAmpOptimWrapper` (bfloat16 backbone) on a CPU-only machine."""
    if torch.cuda.is_available():
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'
    else:
        check_cpu_fallback('--amp', 'the backbone trains under bfloat16 autocast on the CPU (CPUAmpOptimWrapper), '
                           'not float16 on a GPU')
        cfg.optim_wrapper.type = 'CPUAmpOptimWrapper'
    return cfg


class CPUFallbackWarning(UserWarning):
    """A GPU setting (``--launcher pytorch``, ``--amp``) runs on the CPU because torch sees no GPU."""


def check_cpu_fallback(option: str, consequence: str) -> None:
    """Before ``option`` falls back to the CPU: refuse on a machine whose driver reports GPUs that
    torch cannot use (a CPU-only torch, a driver too old for it), unless the GPUs were hidden on
    purpose (``CUDA_VISIBLE_DEVICES=``); warn loudly otherwise."""
    gpus = driver_gpus()
    if gpus and not cpu_requested():
        raise RuntimeError(
            f'{option}: this machine has {len(gpus)} GPU(s) ({", ".join(sorted(set(gpus)))}) but torch '
            f'{torch.__version__} cannot use CUDA ({_why_no_cuda()}), so {consequence}. Fix the CUDA setup '
            f'(python tools/check_gpu.py says what is missing), or run on the CPU on purpose with '
            f'CUDA_VISIBLE_DEVICES=')
    message = f'{option} without a GPU that torch can use: {consequence}'
    warnings.warn(message, CPUFallbackWarning, stacklevel=3)
    print_log(message, logger='current', level=logging.WARNING)


def _why_no_cuda() -> str:
    if torch.version.cuda is None:
        return 'it is a CPU-only build'
    return f'built for CUDA {torch.version.cuda}; is the driver older than that?'


def train(cfg: Config, *, amp: bool = False, auto_scale_lr: bool = False,
          resume: Optional[str] = None) -> Runner:
    """Train as mmdet's ``tools/train.py`` does; returns the finished runner.

    ``resume``: ``'auto'`` (the latest checkpoint in the work dir, if any) or a checkpoint path.
    A checkpoint (``resume`` or ``cfg.load_from``) that does not fit a deformable layer stops the
    run before its first iteration. A crash is written to the run's log too, so that
    :mod:`deform_viz.results` can say why the run stopped.
    """
    if amp:
        use_amp(cfg)
    if auto_scale_lr:
        if 'base_batch_size' not in cfg.get('auto_scale_lr', {}):
            raise ValueError(f'--auto-scale-lr needs auto_scale_lr.base_batch_size in {cfg.filename}')
        cfg.auto_scale_lr.enable = True
    if resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif resume is not None:
        cfg.resume, cfg.load_from = True, resume
    trust_local_checkpoints()
    runner = build_runner(cfg)
    try:
        runner.train()
    except Exception:
        runner.logger.exception('training crashed')
        raise
    close_distributed()
    return runner


def evaluate(cfg: Config, checkpoint: str, *, dump_offsets: Optional[str] = None,
             dump_options: Optional[dict] = None, out: Optional[str] = None,
             show_dir: Optional[str] = None) -> dict:
    """Evaluate ``checkpoint`` as mmdet's ``tools/test.py`` does; returns the metrics.

    ``dump_offsets``: a directory for :class:`~deform_viz.hooks.OffsetDumpHook` (with
    ``dump_options``); ``out``: a ``.pkl`` of the predictions; ``show_dir``: painted predictions.
    A checkpoint that does not fit a deformable layer stops before the first image.
    """
    if out is not None and not out.endswith(('.pkl', '.pickle')):
        raise ValueError(f'--out must name a .pkl file, got {out}')
    if dump_options and not dump_offsets:
        raise ValueError('dump options need a dump directory (--dump-offsets DIR)')
    if not osp.isfile(checkpoint) and '://' not in checkpoint:
        raise FileNotFoundError(f'checkpoint {checkpoint} not found')
    cfg.load_from = checkpoint
    if dump_offsets:
        from .hooks import add_offset_dump_hook
        add_offset_dump_hook(cfg, dump_offsets, **(dump_options or {}))
    if show_dir:
        from argparse import Namespace

        from mmdet.engine.hooks.utils import trigger_visualization_hook
        cfg = trigger_visualization_hook(cfg, Namespace(show=False, show_dir=show_dir, wait_time=0))
    trust_local_checkpoints()
    runner = build_runner(cfg)
    if out is not None:
        from mmdet.evaluation import DumpDetResults
        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=out))
    metrics = runner.test()
    close_distributed()
    return metrics
