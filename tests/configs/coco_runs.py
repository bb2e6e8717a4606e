"""Short real runs of the COCO configs on the embedded synthetic dataset, shared by
tests/configs/test_configs.py and tests/tools/test_collect_results.py.

Every run goes through ``deform_viz.engine.train`` / ``evaluate`` (what tools/train.py and
tools/test.py call, in process, so torch and mmdet are imported once), with config edits that point
the COCO config at the synthetic data, shrink images to 128 px, take 2 training images (one iteration of 2) and
2 validation images, switch the ImageNet weights off and validate after that one iteration with
mmdet's CocoMetric. Runs are cached per pytest session: each config trains at most once.
"""
import contextlib
import gc
import glob
import json
import os.path as osp
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set


REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
COCO_CONFIG_DIRS = ('revisiting_dcn', 'deformable_kernels', 'test_time_projection')
IMAGE_SCALE = (128, 128)


def config_path(folder: str, name: str) -> str:
    return osp.join(REPO, 'configs', folder, name)


def coco_configs(folder: Optional[str] = None) -> List[str]:
    folders = [folder] if folder else COCO_CONFIG_DIRS
    return sorted(p for f in folders for p in glob.glob(osp.join(REPO, 'configs', f, '*.py')))


def all_configs() -> List[str]:
    """Every config under configs/ except the partial ones in _base_ folders."""
    paths = glob.glob(osp.join(REPO, 'configs', '**', '*.py'), recursive=True)
    return sorted(p for p in paths if '_base_' not in osp.relpath(p, REPO).split(osp.sep))


def short_run_config(config: str, data_root: str, work_dir: str, *, name: str, checkpoint: bool = False,
                     **cfg_options):
    """A COCO config turned into a one-iteration CPU run on the synthetic data (and ``cfg_options``)."""
    from mmengine.config import Config

    from deform_viz.datasets import SYNTHETIC_CLASSES
    from deform_viz.engine import load_config, set_image_scale
    cfg = Config.fromfile(config)
    root = osp.join(data_root, '')
    opts = {
        'model.backbone.init_cfg': None,  # no ImageNet weights can be downloaded here
        'model.roi_head.bbox_head.num_classes': len(SYNTHETIC_CLASSES),
        # fewer proposals and sampled RoIs than COCO's 1000 / 512: the R-CNN head's fc6 on 2000
        # RoIs would dominate a 128 px CPU run
        'model.train_cfg.rpn_proposal.nms_pre': 200,
        'model.train_cfg.rpn_proposal.max_per_img': 100,
        'model.train_cfg.rpn.sampler.num': 64,
        'model.train_cfg.rcnn.sampler.num': 64,
        'model.test_cfg.rpn.nms_pre': 100,
        'model.test_cfg.rpn.max_per_img': 50,
        'model.test_cfg.rcnn.max_per_img': 20,
        'train_cfg.max_epochs': 1,
        'train_cfg.val_interval': 1,
        'default_hooks.logger.interval': 1,
        'default_hooks.checkpoint.interval': 1 if checkpoint else -1,
        'default_hooks.checkpoint.save_last': checkpoint,
        'default_hooks.checkpoint.save_optimizer': False,  # weights are all a test needs
        # mmdet names its visualizer 'visualizer'; mmengine keeps one instance per name, so
        # in-process runs need their own or they would all log into the first run's folder
        'visualizer.name': f'visualizer_{name}_{time.time_ns()}',
        'randomness.seed': 0,
    }
    if cfg.model.roi_head.get('mask_head') is not None:
        opts['model.roi_head.mask_head.num_classes'] = len(SYNTHETIC_CLASSES)
    splits = {'train': ('instances_train.json', 'train/'), 'val': ('instances_val.json', 'val/'),
              'test': ('instances_val.json', 'val/')}
    for split, (ann, img) in splits.items():
        loader = f'{split}_dataloader'
        opts.update({
            f'{loader}.batch_size': 2, f'{loader}.num_workers': 0, f'{loader}.persistent_workers': False,
            f'{loader}.dataset.data_root': root,
            f'{loader}.dataset.ann_file': f'annotations/{ann}',
            f'{loader}.dataset.data_prefix.img': img,
            f'{loader}.dataset.metainfo.classes': tuple(SYNTHETIC_CLASSES),
            f'{loader}.dataset.indices': 2,
        })
    for split in ('val', 'test'):
        opts[f'{split}_evaluator.ann_file'] = root + 'annotations/instances_val.json'
    cfg = load_config(config, {**opts, **cfg_options}, work_dir)
    return set_image_scale(cfg, IMAGE_SCALE)


@dataclass
class RunResult:
    """What a test needs from a finished short run (the runner itself is dropped)."""
    config: str
    work_dir: str
    seconds: float
    metrics: Dict[str, float] = field(default_factory=dict)
    stage_types: Dict[str, Set[str]] = field(default_factory=dict)  # 'c2'..'c5' -> conv2 class names
    stage_variants: Dict[str, Set[Optional[str]]] = field(default_factory=dict)  # -> conv2 .variant
    registered: Dict[str, str] = field(default_factory=dict)  # class name -> module path
    lr_by_param: Dict[str, float] = field(default_factory=dict)  # param name -> initial lr
    checkpoint: Optional[str] = None


def _summarize(runner, config: str, work_dir: str, seconds: float) -> RunResult:
    model = runner.model
    result = RunResult(config=config, work_dir=work_dir, seconds=seconds)
    backbone = model.backbone
    for i, layer_name in enumerate(backbone.res_layers):
        blocks = getattr(backbone, layer_name)
        convs = [block.conv2 for block in blocks]
        result.stage_types[f'c{i + 2}'] = {type(c).__name__ for c in convs}
        result.stage_variants[f'c{i + 2}'] = {getattr(c, 'variant', None) for c in convs}
        result.registered.update({type(c).__name__: type(c).__module__ for c in convs})
    optimizer = runner.optim_wrapper.optimizer
    ids = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        for p in group['params']:
            result.lr_by_param[ids[id(p)]] = group.get('initial_lr', group['lr'])
    return result


def _last_metrics(work_dir: str) -> Dict[str, float]:
    found = {}
    for path in sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json'))):
        for line in open(path):
            entry = json.loads(line)
            if 'coco/bbox_mAP' in entry:
                found = entry
    for path in sorted(glob.glob(osp.join(work_dir, '*', '*.json'))):
        found = json.load(open(path))
    return found


_CACHE: Dict[str, RunResult] = {}


@contextlib.contextmanager
def single_thread():
    """One intra-op thread while a detector runs: on the shared 2-core test machine, two OpenMP
    threads competing with other processes made an R-50 step 4-7x slower than one thread."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_once(config: str, data_root: str, base_dir: str, *, checkpoint: bool = False) -> RunResult:
    """``train`` on ``config`` for one iteration + validation (once per session)."""
    stem = osp.splitext(osp.basename(config))[0]
    key = f'train:{stem}:{base_dir}'
    cached = _CACHE.get(key)
    if cached is not None and (cached.checkpoint or not checkpoint):
        return cached
    from deform_viz.engine import train
    work_dir = osp.join(base_dir, stem)
    cfg = short_run_config(config, data_root, work_dir, name=stem, checkpoint=checkpoint)
    start = time.perf_counter()
    with single_thread():
        runner = train(cfg)
    result = _summarize(runner, config, work_dir, time.perf_counter() - start)
    del runner
    gc.collect()
    result.metrics = _last_metrics(work_dir)
    if checkpoint:
        result.checkpoint = osp.join(work_dir, 'epoch_1.pth')
    _CACHE[key] = result
    return result


def evaluate_once(config: str, checkpoint: str, data_root: str, base_dir: str) -> RunResult:
    """``evaluate`` on ``checkpoint`` with ``config`` (once per session)."""
    stem = osp.splitext(osp.basename(config))[0]
    key = f'test:{stem}:{checkpoint}:{base_dir}'
    if key in _CACHE:
        return _CACHE[key]
    from deform_viz.engine import evaluate
    work_dir = osp.join(base_dir, stem)
    cfg = short_run_config(config, data_root, work_dir, name=stem)
    start = time.perf_counter()
    with single_thread():
        metrics = evaluate(cfg, checkpoint)
    gc.collect()
    result = RunResult(config=config, work_dir=work_dir, seconds=time.perf_counter() - start,
                       metrics=dict(metrics), checkpoint=checkpoint)
    _CACHE[key] = result
    return result
