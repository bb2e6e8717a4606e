"""A pretrained backbone for the CPU detectors: their plain ResNet trained to classify shape crops.

The paper's detectors fine-tune ImageNet weights; at CPU scale nothing can be downloaded, so
:func:`pretrain_backbone` trains the configs' Bottleneck ResNet (mmdet's ``ResNet``, depth 50,
``base_channels=16``) plus global pooling and a linear layer on the crops of
:mod:`deform_viz.datasets.crops` (the detection classes and others, textured like the dataset),
each crop seen once. The checkpoint holds the backbone's ``state_dict`` under mmdet's key names
and its settings in ``meta``, and is cached outside the repository under
``$DEFORM_VIZ_CACHE/backbones/<key of the settings>/`` (default cache ``~/.cache/deform-viz``).

Importing this module registers the mmengine checkpoint scheme ``deform-viz://``, so configs load
the weights as they load ImageNet's::

    backbone=dict(init_cfg=dict(type='Pretrained', checkpoint='deform-viz://resnet50-w16-shapes'))

The name resolves to the cached file of the preset named by ``$DEFORM_VIZ_BACKBONE_PRESET``
(``default`` if unset; the tests use ``tiny``). A missing, unreadable or mismatched file is an
error that names the command that makes it.
"""
import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional, Union

import numpy as np
import torch
from torch import nn

from .datasets.crops import CROP_CLASSES, CROP_GENERATOR_VERSION, render_crops
from .fileio import write_atomically

#: The backbone of configs/synthetic/faster-rcnn_r50-w16_fpn_synthetic.py, as a classifier sees it
#: (only the last stage's output; ``out_indices`` does not change the parameters).
BACKBONE = dict(type='ResNet', depth=50, base_channels=16, num_stages=4, out_indices=(3,),
                norm_cfg=dict(type='BN', requires_grad=True), norm_eval=False, style='pytorch')
#: The detectors' ``data_preprocessor`` normalisation (RGB order), applied to the crops too.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)

SCHEME = 'deform-viz://'
BACKBONE_NAME = 'resnet50-w16-shapes'
PRESET_VARIABLE = 'DEFORM_VIZ_BACKBONE_PRESET'
COMMAND = 'python tools/pretrain_backbone.py'
FORMAT = 'deform-viz pretrained backbone'
FORMAT_VERSION = 1
CHECKPOINT_FILE = 'backbone.pth'
SUMMARY_FILE = 'summary.json'


@dataclass(frozen=True)
class PretrainSettings:
    """Everything that decides the weights: crops, schedule, seed. The cache key is made of these;
    each field's ``help`` says what it is."""
    crop_size: int = field(default=48, metadata=dict(help='side of the square crops, pixels'))
    num_train: int = field(default=40000, metadata=dict(
        help='training crops, each seen once (steps = ceil(num_train / batch_size))'))
    num_val: int = field(default=2000, metadata=dict(help='held-out crops for the accuracy'))
    batch_size: int = field(default=64, metadata=dict(help='crops per step'))
    lr: float = field(default=4e-3, metadata=dict(
        help='peak learning rate of AdamW, one-cycle schedule (15 %% warm-up, cosine decay)'))
    weight_decay: float = field(default=0.05, metadata=dict(help="AdamW's decoupled weight decay"))
    class_texture_prob: float = field(default=0.8, metadata=dict(
        help="probability that a shape is filled with its class's texture family"))
    seed: int = field(default=0, metadata=dict(help='seed of the crops and of the initial weights'))

    def __post_init__(self):
        for name, minimum in (('crop_size', 32), ('num_train', 1), ('num_val', 1), ('batch_size', 1), ('seed', 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ValueError(f'{name} must be an integer >= {minimum}, got {value!r}')
        for name in ('lr', 'weight_decay', 'class_texture_prob'):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ValueError(f'{name} must be a number >= 0, got {value!r}')
            object.__setattr__(self, name, float(value))
        if self.lr == 0:
            raise ValueError('lr must be > 0')
        if self.class_texture_prob > 1:
            raise ValueError(f'class_texture_prob must be in [0, 1], got {self.class_texture_prob!r}')


PRESETS: Dict[str, PretrainSettings] = {
    'default': PretrainSettings(),
    'tiny': PretrainSettings(crop_size=32, num_train=32, num_val=16, batch_size=16),  # for tests: seconds
}


def build_backbone() -> nn.Module:
    """:data:`BACKBONE` built by mmdet's registry (initial weights not yet set)."""
    from mmdet.registry import MODELS
    return MODELS.build(dict(BACKBONE))


class ShapeClassifier(nn.Module):
    """mmdet's ResNet (:data:`BACKBONE`), global average pooling and a linear layer.

    ``forward(images (N, 3, S, S) normalised) -> logits (N, num_classes)``.
    """

    def __init__(self, num_classes: int = len(CROP_CLASSES)):
        super().__init__()
        self.backbone = build_backbone()
        self.head = nn.Linear(self.backbone.feat_dim, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images)[-1].mean(dim=(2, 3)))


def cache_root() -> Path:
    """``$DEFORM_VIZ_CACHE``, else ``${XDG_CACHE_HOME:-~/.cache}/deform-viz`` (as tools/bootstrap.sh)."""
    if os.environ.get('DEFORM_VIZ_CACHE'):
        return Path(os.environ['DEFORM_VIZ_CACHE']).expanduser()
    return Path(os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache').expanduser() / 'deform-viz'


def settings_key(settings: PretrainSettings) -> str:
    """16 hex digits identifying the weights ``settings`` make (with the backbone and crop generator)."""
    described = dict(format_version=FORMAT_VERSION, backbone=BACKBONE,
                     crop_generator_version=CROP_GENERATOR_VERSION, settings=asdict(settings))
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]


def checkpoint_path(settings: PretrainSettings, cache_dir: Optional[Union[str, os.PathLike]] = None) -> Path:
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    return root / 'backbones' / settings_key(settings) / CHECKPOINT_FILE


def preset_command(settings: PretrainSettings) -> str:
    """The command line that makes the checkpoint of ``settings``."""
    for name, preset in PRESETS.items():
        if preset == settings:
            return COMMAND if name == 'default' else f'{COMMAND} --preset {name}'
    defaults = asdict(PRESETS['default'])
    options = [f"--{name.replace('_', '-')} {value}" for name, value in asdict(settings).items()
               if value != defaults[name]]
    return ' '.join([COMMAND, *options])


def selected_preset() -> str:
    """The preset ``deform-viz://resnet50-w16-shapes`` resolves to: ``$DEFORM_VIZ_BACKBONE_PRESET`` or 'default'."""
    name = os.environ.get(PRESET_VARIABLE) or 'default'
    if name not in PRESETS:
        raise ValueError(f'{PRESET_VARIABLE}={name!r} is not a pretraining preset; choose one of {sorted(PRESETS)}')
    return name


def load_backbone_checkpoint(path: Union[str, os.PathLike], settings: PretrainSettings,
                             map_location='cpu') -> dict:
    """Read and check the checkpoint that :func:`pretrain_backbone` wrote for ``settings``.

    Raises (naming the command that makes a good one) if it is missing, unreadable, not a
    pretrained backbone of this package, made with other settings, or for another architecture.
    """
    path = Path(path)
    remake = f'make it with `{preset_command(settings)}`'
    if not path.is_file():
        raise FileNotFoundError(f'no pretrained backbone at {path}: {remake}')
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many types (and long messages) for a damaged file
        raise RuntimeError(f'{path} is not a readable checkpoint ({type(error).__name__}); {remake}') from error
    meta = checkpoint.get('meta', {}) if isinstance(checkpoint, dict) else {}
    if meta.get('format') != FORMAT or not isinstance(checkpoint.get('state_dict'), dict):
        raise RuntimeError(f'{path} is not a {FORMAT} (no state_dict with meta.format={FORMAT!r}); {remake}')
    if meta.get('format_version') != FORMAT_VERSION or meta.get('settings') != asdict(settings):
        raise RuntimeError(f'{path} was made with other settings (format {meta.get("format_version")}, '
                           f'{meta.get("settings")}), not {asdict(settings)}; {remake}')
    expected = {name: tuple(value.shape) for name, value in build_backbone().state_dict().items()}
    found = {name: tuple(value.shape) for name, value in checkpoint['state_dict'].items()}
    if found != expected:
        differing = sorted(set(found) ^ set(expected)) or sorted(k for k in found if found[k] != expected[k])
        raise RuntimeError(f'{path} holds another architecture than {BACKBONE} '
                           f'({len(differing)} parameters differ, e.g. {differing[:3]}); {remake}')
    return checkpoint


def load_from_deform_viz(filename: str, map_location=None) -> dict:
    """mmengine checkpoint loader for ``deform-viz://resnet50-w16-shapes`` (see the module docstring)."""
    name = filename[len(SCHEME):]
    if name != BACKBONE_NAME:
        raise ValueError(f'unknown checkpoint {filename!r}: deform-viz provides {SCHEME}{BACKBONE_NAME}')
    settings = PRESETS[selected_preset()]
    return load_backbone_checkpoint(checkpoint_path(settings), settings, map_location or 'cpu')


def register_checkpoint_scheme() -> None:
    from mmengine.runner.checkpoint import CheckpointLoader
    CheckpointLoader.register_scheme(prefixes=SCHEME, loader=load_from_deform_viz, force=True)


def pretrain_backbone(settings: PretrainSettings = PRESETS['default'],
                      cache_dir: Optional[Union[str, os.PathLike]] = None, force: bool = False,
                      log: Callable[[str], None] = print) -> dict:
    """Train the backbone for ``settings`` unless a valid cached checkpoint exists (or ``force``).

    Returns the summary: ``checkpoint`` (path), ``reused``, ``val_accuracy`` (held-out crops),
    ``chance`` (1 / number of classes), ``train_seconds``, ``crops_per_second``, ``settings``.
    """
    path = checkpoint_path(settings, cache_dir)
    summary_path = path.with_name(SUMMARY_FILE)
    if path.is_file() and not force:
        try:
            load_backbone_checkpoint(path, settings)
            return {**json.loads(summary_path.read_text()), 'checkpoint': str(path), 'reused': True}
        except (OSError, ValueError, RuntimeError) as error:
            log(f'remaking the cached backbone: {error}')
    model, train_seconds = _train(settings, log)
    accuracy = evaluate_accuracy(model, settings)
    summary = dict(val_accuracy=accuracy, chance=1 / len(CROP_CLASSES), train_seconds=train_seconds,
                   crops_per_second=settings.num_train / train_seconds, settings=asdict(settings))
    meta = dict(format=FORMAT, format_version=FORMAT_VERSION, settings=asdict(settings), backbone=BACKBONE,
                classes=CROP_CLASSES, crop_generator_version=CROP_GENERATOR_VERSION, val_accuracy=accuracy,
                train_seconds=train_seconds, torch=str(torch.__version__), command=preset_command(settings))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda file: torch.save({'state_dict': model.backbone.state_dict(), 'meta': meta}, file))
    write_atomically(summary_path, lambda file: file.write(json.dumps(summary, indent=1)), text=True)
    return {**summary, 'checkpoint': str(path), 'reused': False}


def crop_batch(settings: PretrainSettings, split: str, start: int, count: int):
    """Crops ``start ..`` of ``split`` as ``(count, 3, S, S)`` normalised float images and ``(count,)`` labels."""
    images, labels = render_crops(settings.seed, split, start, count, settings.crop_size, settings.class_texture_prob)
    images = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    mean, std = torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), torch.tensor(PIXEL_STD).view(1, 3, 1, 1)
    return (images - mean) / std, torch.from_numpy(labels)


@torch.no_grad()
def evaluate_accuracy(model: ShapeClassifier, settings: PretrainSettings) -> float:
    """Top-1 accuracy on the ``num_val`` held-out crops."""
    model.eval()
    correct = 0
    for start in range(0, settings.num_val, settings.batch_size):
        images, labels = crop_batch(settings, 'val', start, min(settings.batch_size, settings.num_val - start))
        correct += int((model(images).argmax(dim=1) == labels).sum())
    return correct / settings.num_val




def _train(settings: PretrainSettings, log: Callable[[str], None]):
    from mmengine.logging import MMLogger
    torch.manual_seed(settings.seed)
    model = ShapeClassifier()
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel('WARNING')  # init_weights would log every parameter's initialisation
    try:
        model.backbone.init_weights()  # mmdet's: Kaiming convs, zero-initialised last BN of each block
    finally:
        logger.setLevel(level)
    steps = math.ceil(settings.num_train / settings.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=settings.lr, total_steps=steps,
                                                   pct_start=0.15)
    log(f'pretraining {BACKBONE["type"]}-{BACKBONE["depth"]} (base_channels {BACKBONE["base_channels"]}) '
        f'on {settings.num_train} crops of {settings.crop_size} px, {len(CROP_CLASSES)} classes, {steps} steps')
    model.train()
    start_time = time.perf_counter()
    every = max(1, steps // 10)
    running = []
    for step in range(steps):
        first = step * settings.batch_size
        images, labels = crop_batch(settings, 'train', first, min(settings.batch_size, settings.num_train - first))
        logits = model(images)
        loss = nn.functional.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        running.append((loss.item(), (logits.argmax(dim=1) == labels).float().mean().item()))
        if (step + 1) % every == 0 or step + 1 == steps:
            loss_mean, accuracy = np.mean(running, axis=0)
            running.clear()
            elapsed = time.perf_counter() - start_time
            log(f'step {step + 1}/{steps}  loss {loss_mean:.3f}  train accuracy {accuracy:.3f}  '
                f'{(first + len(labels)) / elapsed:.0f} crops/s')
    return model, time.perf_counter() - start_time


register_checkpoint_scheme()
