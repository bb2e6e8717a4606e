"""Session fixtures shared by the test suite: a generated dataset and a tiny trained detector.

Everything runs on CPU through :mod:`deform_viz.engine`, the code tools/train.py and
tools/test.py are argument parsing around.
"""
import importlib.util
import os
import os.path as osp
from types import SimpleNamespace

import pytest
import torch

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CPU_CONFIG_DIR = osp.join(REPO, 'configs', 'synthetic')
DCN_CONFIG = osp.join(CPU_CONFIG_DIR, 'faster-rcnn_r50-w16-dconv-c3-c5_fpn_synthetic.py')
TEST_IMAGE_SCALE = (160, 160)
pytest_plugins = ['conftest_pretrained']  # the configs' pretrained backbone, tiny, in a temp cache

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def import_tool(name: str):
    """``tools/<name>.py`` as a module, for the tests of a tool's command line itself."""
    spec = importlib.util.spec_from_file_location(f'tools_{name}', osp.join(REPO, 'tools', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def synthetic_config(config: str, data_root: str, work_dir: str, cfg_options=None):
    """``config`` (built on the synthetic dataset base) reading the generated data in
    ``data_root``, images at TEST_IMAGE_SCALE."""
    from deform_viz.engine import load_config, use_synthetic_data
    cfg = load_config(config, cfg_options, work_dir)
    return use_synthetic_data(cfg, data_root, TEST_IMAGE_SCALE)


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
    """The CPU DCN config trained for 8 iterations (2 epochs) by deform_viz.engine.train.

    Returns ``config`` (its path), ``checkpoint``, ``work_dir`` and ``data_root``; evaluate it
    with ``synthetic_config(tiny.config, tiny.data_root, work_dir)``.
    """
    from deform_viz.engine import set_schedule, train
    work_dir = str(tmp_path_factory.mktemp('tiny_dcn'))
    cfg = synthetic_config(DCN_CONFIG, synthetic_data_root, work_dir)
    set_schedule(cfg, 8, warmup_iters=4)
    cfg.default_hooks.logger.interval = 1
    train(cfg)
    checkpoint = osp.join(work_dir, 'iter_8.pth')
    assert osp.isfile(checkpoint), f'training wrote no checkpoint in {work_dir}'
    return SimpleNamespace(config=DCN_CONFIG, checkpoint=checkpoint, work_dir=work_dir,
                           data_root=synthetic_data_root)
