"""What tools/train.py and tools/test.py share: config loading, checks, runner construction."""
import os.path as osp
from typing import Optional

import numpy as np
import torch
from mmengine.config import Config
from mmengine.logging.history_buffer import HistoryBuffer
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
    """Build the runner named by ``runner_type`` (mmdet's RUNNERS), else mmengine's default."""
    if 'runner_type' in cfg:
        from mmdet.registry import RUNNERS
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


def allow_mmengine_checkpoints() -> None:
    """Let ``torch.load(weights_only=True)`` (torch >= 2.6 default) read mmengine checkpoints.

    mmengine 0.10 calls ``torch.load`` without ``weights_only``; its checkpoints carry the
    message hub's HistoryBuffers (numpy arrays) beside the weights. Allow exactly those types
    instead of switching the safe loader off.
    """
    add_safe_globals = getattr(torch.serialization, 'add_safe_globals', None)
    if add_safe_globals is None:  # torch < 2.4 loads everything anyway
        return
    numpy_types = [np.ndarray, np.dtype, np.core.multiarray._reconstruct, np.core.multiarray.scalar]
    numpy_types += [type(np.dtype(t)) for t in ('float64', 'float32', 'int64', 'int32', 'bool')]
    add_safe_globals([HistoryBuffer, *numpy_types])


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
