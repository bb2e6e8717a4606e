"""Session fixtures shared by the test suite: a generated dataset and a tiny trained detector.

Everything runs on CPU through the real tools/train.py and tools/test.py code paths.
"""
import os
import os.path as osp
from types import SimpleNamespace

import pytest
import torch

from deform_viz.engine import cfg_options_argv, load_tool  # noqa: F401  (used by test modules)

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CPU_CONFIG_DIR = osp.join(REPO, 'configs', 'synthetic')
DCN_CONFIG = osp.join(CPU_CONFIG_DIR, 'faster-rcnn_r50-w16-dconv-c3-c5_fpn_synthetic.py')
TEST_IMAGE_SCALE = (160, 160)

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def single_thread():
    """For modules of tiny ops: a second intra-op thread only adds synchronisation (and is ~10x
    slower when the cores are busy). Use with ``pytestmark = pytest.mark.usefixtures('single_thread')``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='session')
def synthetic_data_root(tmp_path_factory) -> str:
    """A small generated COCO dataset (train 16 / val 8 images, 160x160)."""
    from deform_viz.datasets import make_synthetic_coco
    root = str(tmp_path_factory.mktemp('synthetic'))
    make_synthetic_coco(root, num_train=16, num_val=8, image_size=(160, 160), seed=0)
    return root


@pytest.fixture(scope='session')
def tiny_checkpoint(synthetic_data_root, tmp_path_factory) -> SimpleNamespace:
    """The CPU DCN config trained for 2 epochs (8 iterations) by tools/train.py.

    Returns ``config``, ``checkpoint``, ``work_dir``, ``data_root`` and ``cfg_options`` (the
    overrides used, to pass on to tools/test.py).
    """
    from deform_viz.engine import synthetic_data_options
    work_dir = str(tmp_path_factory.mktemp('tiny_dcn'))
    options = synthetic_data_options(synthetic_data_root, TEST_IMAGE_SCALE)
    options.update({
        'train_cfg.max_epochs': 2, 'train_cfg.val_interval': 2,
        'default_hooks.checkpoint.interval': 2, 'default_hooks.logger.interval': 1,
        'param_scheduler.0.end': 4,
    })
    argv = [DCN_CONFIG, '--work-dir', work_dir, '--cfg-options', *cfg_options_argv(options)]
    load_tool('train').main(argv)
    checkpoint = osp.join(work_dir, 'epoch_2.pth')
    assert osp.isfile(checkpoint), f'training wrote no checkpoint in {work_dir}'
    return SimpleNamespace(config=DCN_CONFIG, checkpoint=checkpoint, work_dir=work_dir,
                           data_root=synthetic_data_root, cfg_options=options)
