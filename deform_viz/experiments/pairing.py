"""Paired training runs: every row of a seed starts from the same weights and sees the same data.

A row's own random draws (building its offset predictors, which are zeroed anyway) would otherwise
shift every later draw: the detector head's initialisation and the RoI sampling of each step. So,
per seed, the reference row's freshly initialised model (pretrained backbone included) is the
initial state of every row (:func:`write_paired_init`, loaded through ``load_from``), and
:class:`PairedStartHook` reseeds the random streams just before the first iteration and records the
first iteration's loss, which :func:`deform_viz.experiments.paired.check_pairing` compares across
rows.
"""
import json
import os
import os.path as osp
import random
from typing import Optional

import numpy as np
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.registry import DefaultScope
from mmdet.registry import HOOKS, MODELS
from mmengine.runner import set_random_seed

from ..fileio import write_atomically

FIRST_LOSS_FILE = 'first_loss.json'
OFFSET_PREDICTORS = ('conv_offset', 'conv_data_offset')


def _build_model(cfg: Config) -> torch.nn.Module:
    with DefaultScope.overwrite_default_scope('mmdet'):
        return MODELS.build(cfg.model)


def build_initialised_model(cfg: Config, seed: int) -> torch.nn.Module:
    """The model of ``cfg`` initialised as mmengine's runner would with ``seed`` (backbone
    ``init_cfg`` included)."""
    set_random_seed(seed)
    model = _build_model(cfg)
    model.init_weights()
    return model


def write_paired_init(row_cfg: Config, reference_state: dict, path: str) -> str:
    """Write ``row_cfg``'s model holding ``reference_state`` as an mmengine checkpoint at ``path``.

    Every tensor of the row's model comes from ``reference_state`` except the offset predictors,
    which keep their zero initialisation; anything else missing or left over is an error (the rows
    would not be paired). Deformable Kernels map a K x K weight into their scope on load. The row's
    own ``init_weights`` is not run: every tensor it would set is overwritten, and this package's
    offset predictors are zero from construction.
    """
    model = _build_model(row_cfg)
    result = model.load_state_dict(reference_state, strict=False)
    unexpected = list(result.unexpected_keys)
    missing = [k for k in result.missing_keys
               if not any(f'.{p}.' in k for p in OFFSET_PREDICTORS)]
    if missing or unexpected:
        raise ValueError(f'{row_cfg.filename}: cannot start from the reference weights: missing '
                         f'{missing[:5]}, unexpected {unexpected[:5]}')
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    checkpoint = {'state_dict': model.state_dict(), 'meta': {'paired_init': True}}
    write_atomically(path, lambda f: torch.save(checkpoint, f))
    return path


@HOOKS.register_module()
class PairedStartHook(Hook):
    """Reseed Python, NumPy and torch with ``seed`` right before the first training iteration, and
    write that iteration's total loss to ``<work_dir>/first_loss.json``.

    Runs after the weights are loaded and the dataloader is built, so the RoI sampling and the
    augmentation draws of paired rows start from the same state. A resumed run is not reseeded.
    """
    priority = 'VERY_HIGH'

    def __init__(self, seed: int):
        self.seed = int(seed)

    def before_train(self, runner) -> None:
        if runner.iter == 0:
            random.seed(self.seed)
            np.random.seed(self.seed)
            torch.manual_seed(self.seed)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs: Optional[dict] = None) -> None:
        if runner.iter != 0 or not outputs or 'loss' not in outputs:  # the loop counts after this hook
            return
        loss = outputs['loss']
        record = {'seed': self.seed, 'loss': float(loss.item() if torch.is_tensor(loss) else loss)}
        write_atomically(osp.join(runner.work_dir, FIRST_LOSS_FILE), lambda f: json.dump(record, f), text=True)


def read_first_loss(run_dir: str) -> float:
    """The first-iteration loss a paired run recorded."""
    path = osp.join(run_dir, FIRST_LOSS_FILE)
    if not osp.isfile(path):
        raise FileNotFoundError(f'{path} is missing: the run was not trained with PairedStartHook')
    with open(path) as f:
        return float(json.load(f)['loss'])
