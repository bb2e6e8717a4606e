"""What tools/train.py and tools/test.py share: config loading, checks, runner construction."""
import os.path as osp
from typing import Optional, Tuple

import torch
from mmengine.config import Config
from mmengine.runner import Runner

from .config_check import check_config


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


def build_runner(cfg: Config) -> Runner:
    """Build the runner named by ``runner_type`` (mmdet's RUNNERS), else mmengine's default.

    mmdet's configs name their visualizer 'visualizer', and mmengine keeps one instance per
    name: a second runner in the same process (demo, ablation, tests) would write into the
    first run's vis_data. Unnamed, each runner's visualizer takes its experiment name.
    """
    if cfg.get('visualizer') and cfg.visualizer.get('name') == 'visualizer':
        cfg.visualizer.pop('name')
    if cfg.get('launcher', 'none') == 'pytorch' and not torch.cuda.is_available():
        _prepare_cpu_distributed(cfg)
    if 'runner_type' in cfg:
        from mmdet.registry import RUNNERS
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


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
    ``getattr``, which no safe allowlist can admit). The tools call this because they load the
    checkpoint the user names on the command line: load only checkpoints you trust.
    """
    from mmengine.runner.checkpoint import CheckpointLoader

    def load_from_local(filename, map_location):
        filename = osp.expanduser(filename)
        if not osp.isfile(filename):
            raise FileNotFoundError(f'{filename} can not be found.')
        return torch.load(filename, map_location=map_location, weights_only=False)

    CheckpointLoader.register_scheme(prefixes='', loader=load_from_local, force=True)


def train(cfg: Config, *, amp: bool = False, auto_scale_lr: bool = False,
          resume: Optional[str] = None) -> Runner:
    """Train as mmdet's ``tools/train.py`` does; returns the finished runner.

    ``resume``: ``'auto'`` (the latest checkpoint in the work dir, if any) or a checkpoint path.
    A crash is written to the run's log too, so the result collector can say why it stopped.
    """
    if amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'
    if auto_scale_lr:
        if 'base_batch_size' not in cfg.get('auto_scale_lr', {}):
            raise RuntimeError(f'--auto-scale-lr needs auto_scale_lr.base_batch_size in {cfg.filename}')
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
    """
    if out is not None and not out.endswith(('.pkl', '.pickle')):
        raise ValueError(f'--out must name a .pkl file, got {out}')
    cfg.load_from = checkpoint
    if dump_offsets:
        from .hooks import add_offset_dump_hook
        add_offset_dump_hook(cfg, dump_offsets, **(dump_options or {}))
    elif dump_options:
        raise ValueError('dump options need a dump directory (--dump-offsets DIR)')
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


def _pipelines(cfg: Config):
    """Every data pipeline of the config's train/val/test dataloaders (wrapped datasets too)."""
    for split in ('train', 'val', 'test'):
        dataset = cfg.get(f'{split}_dataloader', {}).get('dataset')
        while dataset is not None:
            if dataset.get('pipeline') is not None:
                yield dataset.pipeline
            dataset = dataset.get('dataset')


def set_image_scale(cfg: Config, scale: Tuple[int, int]) -> Config:
    """Set the ``scale`` of every ``Resize`` in the config's pipelines (found by type, not position)."""
    found = 0
    for pipeline in _pipelines(cfg):
        for transform in pipeline:
            if transform.get('type') in ('Resize', 'mmdet.Resize'):
                transform['scale'] = tuple(scale)
                found += 1
    if not found:
        raise ValueError(f'{cfg.filename}: no Resize transform in the dataloader pipelines to set {scale} on')
    return cfg


def use_synthetic_data(cfg: Config, data_root: str, image_scale: Optional[Tuple[int, int]] = None) -> Config:
    """Point a config built on ``configs/_base_/datasets/synthetic_shapes.py`` at a generated
    dataset in ``data_root`` (optionally resizing its images to ``image_scale``)."""
    root = osp.join(data_root, '')
    for split in ('train', 'val', 'test'):
        cfg[f'{split}_dataloader'].dataset.data_root = root
    for split in ('val', 'test'):
        cfg[f'{split}_evaluator'].ann_file = root + 'annotations/instances_val.json'
    if image_scale is not None:
        set_image_scale(cfg, image_scale)
    return cfg


def synthetic_data_options(data_root: str, image_scale=None) -> dict:
    """``--cfg-options`` that point a config built on ``configs/_base_/datasets/synthetic_shapes.py``
    at a generated dataset in ``data_root`` (and optionally resize images to ``image_scale``)."""
    root = osp.join(data_root, '')
    options = {}
    for split in ('train', 'val', 'test'):
        options[f'{split}_dataloader.dataset.data_root'] = root
    for split in ('val', 'test'):
        options[f'{split}_evaluator.ann_file'] = root + 'annotations/instances_val.json'
    if image_scale is not None:
        scale = tuple(image_scale)
        options['train_dataloader.dataset.pipeline.2.scale'] = scale  # Resize in train_pipeline
        for split in ('val', 'test'):
            options[f'{split}_dataloader.dataset.pipeline.1.scale'] = scale  # Resize in test_pipeline
    return options


TOOLS_DIR = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'tools')


def load_tool(name: str):
    """Import ``tools/<name>.py`` of this checkout as a module (its ``main(argv)`` is the CLI).

    Lets the demo, the mini ablation and the tests drive the very code users run, in-process.
    Needs the repository checkout (an editable install), where ``tools/`` lives.
    """
    import importlib.util
    path = osp.join(TOOLS_DIR, f'{name}.py')
    if not osp.isfile(path):
        raise FileNotFoundError(f'{path} not found: the tools live in the deform-viz repository; '
                                'install it with `pip install -e .` from a checkout')
    spec = importlib.util.spec_from_file_location(f'deform_viz_tools.{name}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cfg_options_argv(options: dict) -> list:
    """``{'a.b': (1, 2)}`` -> ``['a.b=(1,2)']``: a dict of overrides as ``--cfg-options`` words."""
    def text(value):  # as mmengine's DictAction parses it back
        if isinstance(value, tuple):
            return '(' + ','.join(text(v) for v in value) + ')'
        if isinstance(value, list):
            return '[' + ','.join(text(v) for v in value) + ']'
        return str(value)
    return [f'{key}={text(value)}' for key, value in options.items()]
