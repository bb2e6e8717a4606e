"""The mechanism probe: do d_f or d_k of the offsets matter for dense detection?

In a two-stage detector RoIAlign finds the object for the box head, whatever the backbone samples.
A dense head has no such help: every cell must see its whole object through its own layers. The
probe freezes the detector's (pretrained) backbone from the stem to c3 (stride 8), computes its
features once per image and caches them, and trains on them, per variant (:data:`VARIANT_CONVS`)::

    c3 (N, 128, H/8, W/8) -> 1x1 lateral conv -> num_layers x [3x3 layer of the variant, GN, ReLU]
                          -> mmdet's FCOSHead on that one level (stride 8)

with mmdet's own FCOS targets, losses and post-processing, evaluated by mmdet's ``CocoMetric``
(AP, AP75) and :class:`~deform_viz.evaluation.BestIoUMetric` (mean best IoU per box).

Paired per seed: every variant starts from the baseline's initial weights (its zero-initialised
offset predictors apart) and sees the same batches in the same order, so at the first step every
variant is the same rigid network and the first losses of a seed must agree
(:func:`~deform_viz.experiments.paired.check_pairing`); effects are paired differences against the
baseline over seeds. On the deformable layers, the offset statistics of :mod:`deform_viz.analysis`
(inward d_f per object, d_k extent against object size) are measured on the val images.

Each finished (seed, variant) run is kept in the work directory and reused; a work directory made
with other settings is refused. The analysis is fixed in ``docs/results/PLAN.md``.
"""
import contextlib
import hashlib
import io
import json
import math
import os
import os.path as osp
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch
from mmcv.cnn import build_conv_layer, build_norm_layer
from mmengine.config import Config, ConfigDict
from mmengine.dataset import pseudo_collate
from mmengine.evaluator import Evaluator
from mmengine.logging import MMLogger
from mmengine.model import BaseModule
from mmengine.optim import LinearLR, MultiStepLR, build_optim_wrapper
from mmengine.registry import DefaultScope
from mmengine.runner import CheckpointLoader
from mmengine.structures import InstanceData
from torch import Tensor, nn

from ..datasets import SYNTHETIC_CLASSES, make_synthetic_coco
from ..pretraining import PRESETS, pretrain_backbone, selected_preset
from ..fileio import write_atomically
from ..variants import LABELS
from .ablation import CONFIG_DIR, METRIC_NAMES, METRICS, REFERENCE, ROWS
from .claims import claim_df_converges, claim_dk_carries_the_gain, claim_dk_tracks_size
from .paired import PairingError, check_pairing
from .pairing import OFFSET_PREDICTORS
from .records import check_recorded, read_json, write_json
from .report import markdown_table, paired_report

#: variant key -> ``conv_cfg`` of ``mmcv.cnn.build_conv_layer``: the registered types the configs use
VARIANT_CONVS: Dict[str, Optional[dict]] = {
    'baseline': None,
    'dcn-df': dict(type='DecomposedDCN', component='d_f'),
    'dcn-dk': dict(type='DecomposedDCN', component='d_k'),
    'dcn': dict(type='DecomposedDCN', component='full'),
    'dkernel-local-s4': dict(type='DeformableKernel', mode='local', scope=4),
}
#: the detector whose backbone (and pretrained weights) the probe uses: the ablation's baseline
DETECTOR_CONFIG = osp.join(CONFIG_DIR, ROWS[REFERENCE].config('faster'))
FEATURE_STRIDE = 8
FEATURE_FORMAT = 1  # bump when the same key would give other cached features
SPLITS = ('train', 'val')
# mmdet's FCOS test settings (configs/fcos)
TEST_CFG = dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05, nms=dict(type='nms', iou_threshold=0.5),
                max_per_img=100)


@dataclass(frozen=True)
class ProbeSettings:
    """Everything the probe's numbers depend on. ``run_key()`` is stored in the work directory.

    ``dataset``: extra keyword arguments of :func:`~deform_viz.datasets.make_synthetic_coco`.
    ``backbone_weights``: ``'config'`` (the detector config's backbone ``init_cfg``: the pretrained
    ``deform-viz://resnet50-w16-shapes``), ``'random'`` (mmdet's initialisation, seed 0: a control)
    or a checkpoint path or URL. The schedule is FCOS's (SGD, momentum 0.9, weight decay 1e-4,
    gradient clipping at 35) with linear warm-up over the first tenth and steps at 3/4 and 11/12;
    ``offset_lr_mult`` multiplies the learning rate of the offset predictors, as the CPU configs do.
    The defaults were sized from single-thread step times for the 30-minute budget on 2 cores; the
    wall time of a default run is what its JSON records.
    """
    seeds: Tuple[int, ...] = (0, 1, 2, 3, 4)
    variants: Tuple[str, ...] = tuple(VARIANT_CONVS)
    num_train: int = 1500
    num_val: int = 300
    image_size: int = 160
    data_seed: int = 0
    dataset: Dict[str, object] = field(default_factory=dict)
    detector_config: str = DETECTOR_CONFIG
    backbone_weights: str = 'config'
    num_layers: int = 3
    channels: int = 64
    iters: int = 250
    batch_size: int = 16
    lr: float = 0.01
    offset_lr_mult: float = 30.0

    def __post_init__(self):
        object.__setattr__(self, 'seeds', tuple(int(s) for s in self.seeds))
        object.__setattr__(self, 'variants', tuple(self.variants))
        unknown = [v for v in self.variants if v not in VARIANT_CONVS]
        if unknown:
            raise ValueError(f'unknown probe variants {unknown}; choose from {list(VARIANT_CONVS)}')
        if REFERENCE not in self.variants:
            raise ValueError(f'the variants must include {REFERENCE!r}: every effect is paired against it')
        if len(set(self.variants)) != len(self.variants):
            raise ValueError(f'variants must be distinct, got {list(self.variants)}')
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ValueError(f'seeds must be distinct non-negative integers, got {list(self.seeds)}')
        for name in ('num_train', 'num_val', 'num_layers', 'iters', 'batch_size'):
            if getattr(self, name) < 1:
                raise ValueError(f'{name} must be a positive integer, got {getattr(self, name)}')
        if self.image_size < 32 or self.image_size % 32:
            raise ValueError(f'image_size must be a multiple of 32 (the backbone pads to it), '
                             f'got {self.image_size}')
        if self.channels < 32 or self.channels % 32:
            raise ValueError(f'channels must be a multiple of 32 (GroupNorm with 32 groups), got {self.channels}')
        if not self.lr > 0 or not self.offset_lr_mult >= 0:
            raise ValueError(f'lr must be positive and offset_lr_mult non-negative, got {self.lr} and '
                             f'{self.offset_lr_mult}')
        if not osp.isfile(self.detector_config):
            raise FileNotFoundError(f'detector config {self.detector_config!r} does not exist')
        if self.backbone_weights not in ('config', 'random') and '://' not in self.backbone_weights \
                and not osp.isfile(self.backbone_weights):
            raise FileNotFoundError(f"backbone weights {self.backbone_weights!r} are neither 'config', 'random' "
                                    'nor an existing checkpoint file')

    def dataset_args(self) -> dict:
        """The keyword arguments of :func:`make_synthetic_coco`."""
        return dict(self.dataset, num_train=self.num_train, num_val=self.num_val,
                    image_size=(self.image_size, self.image_size), seed=self.data_seed)

    def run_key(self) -> dict:
        """What one (seed, variant) run depends on: everything but which seeds and variants run."""
        key = {k: v for k, v in asdict(self).items() if k not in ('seeds', 'variants')}
        key['detector_config'] = osp.basename(self.detector_config)
        return json.loads(json.dumps(key))  # as stored: tuples become lists


# ---------------------------------------------------------------------- features
@dataclass
class ProbeSplit:
    """One split as the probe uses it: cached c3 features and mmdet's ground truth per image.

    ``features`` (N, C, h, w) float16; ``gt_instances[i]``: ``bboxes`` (n, 4) x1 y1 x2 y2 and
    ``labels`` (n,), in image pixels; ``metainfo[i]``: ``img_id``, ``img_shape``, ``ori_shape``,
    ``pad_shape``, ``batch_input_shape``, ``scale_factor`` (images are used at their own size).
    """
    name: str
    ann_file: str
    feature_key: str  # hash of what the features depend on: annotations, backbone, weights, normalisation
    features: Tensor
    gt_instances: List[InstanceData]
    metainfo: List[dict]

    def __len__(self) -> int:
        return len(self.metainfo)


def default_cache_dir() -> str:
    """``probe-features`` in the package's cache (``$DEFORM_VIZ_CACHE``, else ``~/.cache/deform-viz``)."""
    from ..pretraining import cache_root
    return str(cache_root() / 'probe-features')


def _mmdet_scope():
    return DefaultScope.overwrite_default_scope('mmdet')


def feature_backbone(settings: ProbeSettings) -> Tuple[nn.Module, nn.Module, dict]:
    """The detector config's backbone cut after c3, with its weights, its data preprocessor, and the
    description the feature cache is keyed by (architecture, weight hash, normalisation).

    The weights are those ``settings.backbone_weights`` names; a checkpoint must hold every
    stem-to-c3 tensor.
    """
    from mmdet.registry import MODELS

    from .. import pretraining  # noqa: F401  (registers the deform-viz:// checkpoint scheme)
    cfg = Config.fromfile(settings.detector_config)
    backbone_cfg = cfg.model.backbone.to_dict()
    init_cfg = backbone_cfg.pop('init_cfg', None)
    if settings.backbone_weights == 'random':
        init_cfg = None
    elif settings.backbone_weights != 'config':
        init_cfg = dict(type='Pretrained', checkpoint=settings.backbone_weights)
    elif init_cfg is None:
        raise ValueError(f'{settings.detector_config} has no backbone init_cfg; name the backbone weights '
                         "(a checkpoint, or 'random')")
    if init_cfg is not None and init_cfg.get('type') != 'Pretrained':
        raise ValueError(f'{settings.detector_config}: the backbone init_cfg {init_cfg} is not a '
                         "checkpoint (type='Pretrained'); pass a backbone checkpoint instead")
    backbone_cfg.update(num_stages=2, strides=(1, 2), dilations=(1, 1), out_indices=(1,),
                        dcn=None, stage_with_dcn=(False, False), plugins=None, init_cfg=None)
    with _mmdet_scope():
        torch.manual_seed(0)
        backbone = MODELS.build(backbone_cfg)
        backbone.init_weights()
        preprocessor = MODELS.build(cfg.model.data_preprocessor)
    source = 'random (mmdet init, seed 0)'
    if init_cfg is not None:
        _load_backbone(backbone, init_cfg['checkpoint'], init_cfg.get('prefix'))
        source = init_cfg['checkpoint']
    backbone.eval()
    digest = hashlib.sha256()
    for name, tensor in sorted(backbone.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    description = {'backbone': backbone_cfg, 'weights': source, 'weights_sha256': digest.hexdigest(),
                   'data_preprocessor': cfg.model.data_preprocessor.to_dict()}
    return backbone, preprocessor, json.loads(json.dumps(description))


def _load_backbone(backbone: nn.Module, checkpoint: str, prefix: Optional[str]) -> None:
    """Load the stem-to-c3 weights of ``checkpoint`` (mmdet ResNet key names, optionally under
    ``prefix``); later stages and heads in the file are ignored, a missing tensor is an error."""
    state = CheckpointLoader.load_checkpoint(checkpoint, map_location='cpu')
    state = state.get('state_dict', state)
    if prefix:
        prefix = prefix if prefix.endswith('.') else prefix + '.'
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    result = backbone.load_state_dict(state, strict=False)
    if result.missing_keys:
        raise ValueError(f'backbone checkpoint {checkpoint!r} lacks {len(result.missing_keys)} tensors of '
                         f'the stem-to-c3 backbone, e.g. {result.missing_keys[:4]}; it must hold an mmdet '
                         f'ResNet of the detector config ({osp.basename(DETECTOR_CONFIG)})')


def _file_sha256(path: str) -> str:
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def load_split(data_root: str, split: str, backbone: nn.Module, preprocessor: nn.Module,
               description: dict, cache_dir: str, batch_size: int = 32, log: Callable = print) -> ProbeSplit:
    """The split's ground truth (parsed by mmdet's ``CocoDataset``) and c3 features, computed once
    and cached in ``cache_dir`` under a key of the annotation file, the backbone and its weights."""
    from mmdet.datasets import CocoDataset
    data_root = osp.abspath(data_root)  # CocoDataset would join a relative ann_file to data_root again
    ann_file = osp.join(data_root, 'annotations', f'instances_{split}.json')
    pipeline = [dict(type='LoadImageFromFile'),
                dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape'))]
    with _mmdet_scope():
        dataset = CocoDataset(ann_file=ann_file, data_root=data_root, data_prefix=dict(img=f'{split}/'),
                              metainfo=dict(classes=SYNTHETIC_CLASSES), pipeline=pipeline, test_mode=True)
    infos = [dataset.get_data_info(i) for i in range(len(dataset))]
    img_ids = [info['img_id'] for info in infos]
    key = json.dumps(dict(description, format=FEATURE_FORMAT, split=split,
                          annotations_sha256=_file_sha256(ann_file)), sort_keys=True)
    name = hashlib.sha256(key.encode()).hexdigest()[:20]
    path = osp.join(cache_dir, f'c3-{split}-{name}.pt')
    cached = torch.load(path, weights_only=True) if osp.isfile(path) else None
    if cached is not None and cached['key_json'] == key and cached['img_ids'] == img_ids:
        features, shapes = cached['features'], cached['shapes']
    else:
        start = time.perf_counter()
        chunks, shapes = [], []
        with torch.no_grad(), _mmdet_scope():
            for first in range(0, len(dataset), batch_size):
                images = [dataset[i] for i in range(first, min(first + batch_size, len(dataset)))]
                batch = preprocessor(pseudo_collate(images))
                chunks.append(backbone(batch['inputs'])[-1].half())
                shapes += [dict(img_shape=list(s.img_shape), ori_shape=list(s.ori_shape),
                                pad_shape=list(s.pad_shape), batch_input_shape=list(s.batch_input_shape))
                           for s in batch['data_samples']]
        features = torch.cat(chunks)
        os.makedirs(cache_dir, exist_ok=True)
        value = {'key_json': key, 'img_ids': img_ids, 'shapes': shapes, 'features': features}
        write_atomically(path, lambda f: torch.save(value, f))
        log(f'probe: c3 features of {len(dataset)} {split} images in {time.perf_counter() - start:.1f} s '
            f'-> {path}')
    gt_instances, metainfo = [], []
    for info, shape in zip(infos, shapes):
        kept = [inst for inst in info['instances'] if not inst.get('ignore_flag', 0)]
        gt = InstanceData()
        gt.bboxes = torch.tensor([inst['bbox'] for inst in kept], dtype=torch.float32).reshape(-1, 4)
        gt.labels = torch.tensor([inst['bbox_label'] for inst in kept], dtype=torch.long)
        gt_instances.append(gt)
        metainfo.append(dict({k: tuple(v) for k, v in shape.items()}, img_id=info['img_id'],
                             scale_factor=(1.0, 1.0)))
    return ProbeSplit(split, ann_file, name, features, gt_instances, metainfo)


# ---------------------------------------------------------------------- model
class ProbeDetector(BaseModule):
    """A lateral 1x1 conv, ``num_layers`` 3x3 layers of ``variant`` (each conv, GN, ReLU) and
    mmdet's ``FCOSHead`` on one stride-8 level, every location of it a positive for the box
    containing it. Convs start as FCOS's towers do, N(0, 0.01); offset predictors at zero.

    Args:
        variant: a key of :data:`VARIANT_CONVS`.
        in_channels: channels of the cached features; channels: width of every layer after them.
    """

    def __init__(self, variant: str, in_channels: int, channels: int, num_layers: int,
                 num_classes: int = len(SYNTHETIC_CLASSES)):
        super().__init__()
        from mmdet.models.dense_heads.fcos_head import INF
        from mmdet.registry import MODELS
        if variant not in VARIANT_CONVS:
            raise ValueError(f'unknown probe variant {variant!r}; choose from {list(VARIANT_CONVS)}')
        self.variant = variant
        norm_cfg = dict(type='GN', num_groups=32, requires_grad=True)
        self.lateral = nn.Conv2d(in_channels, channels, 1)
        self.layers = nn.Sequential(*[nn.Sequential(OrderedDict(
            conv=build_conv_layer(VARIANT_CONVS[variant], channels, channels, 3, padding=1, bias=False),
            norm=build_norm_layer(norm_cfg, channels)[1],
            relu=nn.ReLU(inplace=True))) for _ in range(num_layers)])
        with _mmdet_scope():
            # one level, every box size regressed at stride 8; the towers are the layers above. No
            # centre sampling: a cell near the edge of a large box must still reach all of it, which
            # is what offsets (or a rigid stack's receptive field) can do
            self.head = MODELS.build(dict(
                type='FCOSHead', num_classes=num_classes, in_channels=channels, feat_channels=channels,
                stacked_convs=0, strides=[FEATURE_STRIDE], regress_ranges=((-1, INF),),
                norm_on_bbox=True, loss_bbox=dict(type='GIoULoss', loss_weight=1.0),
                norm_cfg=norm_cfg, test_cfg=ConfigDict(TEST_CFG)))

    def init_weights(self) -> None:
        super().init_weights()  # the head's own init_cfg
        nn.init.normal_(self.lateral.weight, std=0.01)
        nn.init.zeros_(self.lateral.bias)
        for layer in self.layers:
            nn.init.normal_(layer.conv.weight, std=0.01)  # the offset predictors keep their zeros

    def forward(self, features: Tensor) -> Tuple[List[Tensor], List[Tensor], List[Tensor]]:
        """features (N, in_channels, h, w) -> FCOS class scores, box distances and centernesses, one level."""
        return self.head((self.layers(self.lateral(features)),))

    def loss(self, features: Tensor, gt_instances: List[InstanceData], metainfo: List[dict]) -> Dict[str, Tensor]:
        return self.head.loss_by_feat(*self(features), gt_instances, metainfo)

    def predict(self, features: Tensor, metainfo: List[dict]) -> List[InstanceData]:
        """Boxes (x1 y1 x2 y2, image pixels), scores and labels per image, after NMS."""
        cls_scores, bbox_preds, centernesses = self(features)
        return self.head.predict_by_feat(cls_scores, bbox_preds, centernesses, batch_img_metas=metainfo,
                                         rescale=False)


def reference_state(settings: ProbeSettings, seed: int, in_channels: int) -> Dict[str, Tensor]:
    """The baseline's initial weights for ``seed``: the initial weights of every variant."""
    torch.manual_seed(seed)
    model = ProbeDetector(REFERENCE, in_channels, settings.channels, settings.num_layers)
    model.init_weights()
    return {k: v.clone() for k, v in model.state_dict().items()}


def paired_model(variant: str, state: Dict[str, Tensor], settings: ProbeSettings,
                 in_channels: int) -> ProbeDetector:
    """``variant`` holding the reference weights ``state``; only its offset predictors keep their
    zero initialisation (Deformable Kernels map the K x K weights into their scope on load)."""
    model = ProbeDetector(variant, in_channels, settings.channels, settings.num_layers)
    model.init_weights()
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not any(f'.{p}.' in k for p in OFFSET_PREDICTORS)]
    if missing or result.unexpected_keys:
        raise PairingError(f'variant {variant!r} cannot start from the baseline weights: missing {missing[:4]}, '
                           f'unexpected {list(result.unexpected_keys)[:4]}')
    return model


# ---------------------------------------------------------------------- training
def batch_order(num_images: int, iters: int, batch_size: int, seed: int) -> Tensor:
    """(iters, batch_size) image indices: consecutive random permutations of the split, from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    epochs = math.ceil(iters * batch_size / num_images)
    order = torch.cat([torch.randperm(num_images, generator=generator) for _ in range(epochs)])
    return order[:iters * batch_size].view(iters, batch_size)


def train_probe(model: ProbeDetector, split: ProbeSplit, settings: ProbeSettings, seed: int,
                paired_first_losses: Optional[Dict[str, float]] = None) -> dict:
    """Train ``model`` on ``split`` with the settings' schedule and the seed's batch order.

    ``paired_first_losses``: the first losses of the seed's finished variants; the first step's loss
    is checked against them before training goes on (:class:`PairingError` if they differ).
    Returns ``first_loss``, ``final_loss`` (mean of the last tenth of the steps), ``seconds`` (wall)
    and ``cpu_seconds`` (this process, all threads: comparable on a shared machine).
    """
    start, cpu_start = time.perf_counter(), time.process_time()
    optim_wrapper = build_optim_wrapper(model, dict(
        type='OptimWrapper',
        optimizer=dict(type='SGD', lr=settings.lr, momentum=0.9, weight_decay=1e-4),
        clip_grad=dict(max_norm=35, norm_type=2),
        paramwise_cfg=dict(custom_keys={p: dict(lr_mult=settings.offset_lr_mult) for p in OFFSET_PREDICTORS})))
    iters = settings.iters
    schedulers = [
        LinearLR(optim_wrapper, start_factor=1 / 3, by_epoch=False, begin=0, end=max(1, iters // 10)),
        MultiStepLR(optim_wrapper, milestones=[round(iters * 3 / 4), round(iters * 11 / 12)], gamma=0.1,
                    by_epoch=False)]
    model.train()
    losses = []
    for step, indices in enumerate(batch_order(len(split), iters, settings.batch_size, seed).tolist()):
        parts = model.loss(split.features[indices].float(), [split.gt_instances[i] for i in indices],
                           [split.metainfo[i] for i in indices])
        loss = sum(parts.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f'variant {model.variant!r}, seed {seed}: loss {loss.item()} at step {step}')
        losses.append(loss.item())
        if step == 0 and paired_first_losses:
            check_pairing({**paired_first_losses, model.variant: losses[0]})
        optim_wrapper.update_params(loss)
        for scheduler in schedulers:
            scheduler.step()
    tail = losses[-max(1, iters // 10):]
    return {'first_loss': losses[0], 'final_loss': sum(tail) / len(tail), 'seconds': time.perf_counter() - start,
            'cpu_seconds': time.process_time() - cpu_start}


# ---------------------------------------------------------------------- evaluation
def has_data_offsets(variant: str) -> bool:
    """Whether the variant's layers sample the data at offsets (DCN); Deformable Kernels move
    their kernel taps instead, and the baseline has no offsets."""
    conv = VARIANT_CONVS[variant]
    return conv is not None and conv['type'] == 'DecomposedDCN'


@torch.no_grad()
def evaluate_probe(model: ProbeDetector, split: ProbeSplit,
                   batch_size: int = 32) -> Tuple[Dict[str, float], Optional[dict]]:
    """:data:`METRICS` of ``model`` on ``split`` (mmdet's ``CocoMetric`` and ``BestIoUMetric``) and,
    for a variant with data offsets, the offset statistics of its layers (else None).

    The offset report has the layout of :func:`deform_viz.analysis.analyze_offsets`' (``layers``:
    each layer's :class:`~deform_viz.analysis.accumulate.LayerAnalysis` result, ``across_layers``),
    measured on the offsets each layer sampled with, against the split's boxes and masks.
    """
    from mmdet.evaluation import CocoMetric
    from mmdet.structures import DetDataSample

    from ..analysis import CocoGroundTruth, LayerOffsets
    from ..analysis.accumulate import LayerAnalysis
    from ..analysis.measures import AnalysisSettings, ImageTruth, measure_layer
    from ..analysis.report import across_layers
    from ..evaluation import BestIoUMetric
    from ..hooks.recording import LayerRecording

    model.eval()
    recording, analyses, truth = None, {}, None
    if has_data_offsets(model.variant):
        recording = LayerRecording('the probe', ['layers'], ('offset', 'offset_used'))
        recording.start(model)
        truth = CocoGroundTruth(split.ann_file)
    settings = AnalysisSettings()
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and summary
            evaluator = Evaluator([CocoMetric(ann_file=split.ann_file, metric='bbox'),
                                   BestIoUMetric(ann_file=split.ann_file)])
            evaluator.dataset_meta = dict(classes=SYNTHETIC_CLASSES)
            for first in range(0, len(split), batch_size):
                metainfo = split.metainfo[first:first + batch_size]
                if recording is not None:
                    recording.reset()
                predictions = model.predict(split.features[first:first + batch_size].float(), metainfo)
                evaluator.process([DetDataSample(metainfo=meta, pred_instances=pred)
                                   for meta, pred in zip(metainfo, predictions)])
                for index, meta in enumerate(metainfo if recording is not None else ()):
                    objects = ImageTruth(truth.objects(meta['img_id']))
                    for recorder in recording:
                        info, fields = recorder.image_fields(index, meta['batch_input_shape'], meta['img_shape'])
                        layer = LayerOffsets(recorder.name, info, {k: v.numpy() for k, v in fields.items()}, meta)
                        if recorder.name not in analyses:
                            analyses[recorder.name] = LayerAnalysis(recorder.name, info, settings)
                        analyses[recorder.name].add(measure_layer(layer, objects, settings))
            raw = evaluator.evaluate(len(split))
    finally:
        if recording is not None:
            recording.stop()
    # CocoMetric returns nothing when there is no detection at all: COCO's AP is then 0
    metrics = {m: float(raw.get(f'coco/{m}', 0.0)) for m in METRICS}
    if not analyses:
        return metrics, None
    layers = {name: analysis.result() for name, analysis in analyses.items()}
    offsets = {'num_images': len(split), 'settings': dict(settings.as_dict(), offsets='used'),
               'layers': layers, 'across_layers': across_layers(layers)}
    return metrics, offsets


# ---------------------------------------------------------------------- runs
def run_path(work_dir: str, seed: int, variant: str) -> str:
    return osp.join(work_dir, f'seed{seed}', f'{variant}.json')


def run_probe(settings: ProbeSettings, work_dir: str, data_root: str, cache_dir: Optional[str] = None,
              command: Optional[str] = None, log: Callable = print) -> dict:
    """Train and evaluate every missing (seed, variant) run, then report all of them.

    Returns the report (also written to ``<work_dir>/probe.json``, with the plot ``probe.png``).
    """
    start = time.perf_counter()
    # mmengine logs every parameter group it builds and DK every kernel it maps: keep warnings only
    MMLogger.get_instance('deform_viz.probe', log_level='WARNING')
    work_dir, data_root = osp.abspath(work_dir), osp.abspath(data_root)
    check_recorded(work_dir, settings.run_key(), runs='probe runs')
    make_synthetic_coco(data_root, **settings.dataset_args())
    if settings.backbone_weights == 'config':
        pretrain_backbone(PRESETS[selected_preset()], log=log)  # reused when cached
    backbone, preprocessor, description = feature_backbone(settings)
    cache_dir = cache_dir or default_cache_dir()
    train, val = (load_split(data_root, split, backbone, preprocessor, description, cache_dir, log=log)
                  for split in SPLITS)
    # the same settings can mean other data or weights (a new dataset version, another pretraining)
    check_recorded(work_dir, {split.name: split.feature_key for split in (train, val)}, 'features', runs='probe runs')
    in_channels = train.features.shape[1]
    runs = {}
    for seed in settings.seeds:
        state = None
        for variant in settings.variants:
            path = run_path(work_dir, seed, variant)
            run = read_json(path)
            if run is None:
                state = state or reference_state(settings, seed, in_channels)
                first_losses = {v: r['first_loss'] for (s, v), r in runs.items() if s == seed}
                run = _run_one(variant, seed, state, settings, train, val, first_losses, in_channels)
                write_json(path, run)
                log(f'probe: seed {seed} {variant:18s} AP {run["metrics"]["bbox_mAP"]:.3f}  '
                    f'mean best IoU {run["metrics"]["bbox_mean_best_iou"]:.3f}  '
                    f'({run["train"]["seconds"]:.0f} s)')
            runs[seed, variant] = run
    report = probe_report(runs, settings)
    report.update(command=command, work_dir=work_dir, data_root=data_root, features=description,
                  wall_seconds=time.perf_counter() - start)
    write_json(osp.join(work_dir, 'probe.json'), report)
    plot_probe(report, osp.join(work_dir, 'probe.png'))
    return report


def _run_one(variant: str, seed: int, state: dict, settings: ProbeSettings, train: ProbeSplit,
             val: ProbeSplit, first_losses: Dict[str, float], in_channels: int) -> dict:
    model = paired_model(variant, state, settings, in_channels)
    trained = train_probe(model, train, settings, seed, paired_first_losses=first_losses)
    start = time.perf_counter()
    metrics, offsets = evaluate_probe(model, val)
    return {'variant': variant, 'seed': seed, 'first_loss': trained['first_loss'], 'train': trained,
            'metrics': metrics, 'offsets': offsets, 'eval_seconds': time.perf_counter() - start}


def probe_report(runs: Dict[Tuple[int, str], dict], settings: ProbeSettings) -> dict:
    """Per-variant metrics with paired differences against the baseline (90 % t-intervals), and the
    verdicts of ``docs/results/PLAN.md``: claim 1 on bbox AP with the probe's variants, claims 2 and
    3 on the offsets of the full DCN (decisive) and of the d_f-only and d_k-only variants.

    Refuses (:class:`PairingError`) a seed whose variants' first losses differ.
    """
    pairing = {}
    for seed in settings.seeds:
        first = {v: runs[seed, v]['first_loss'] for v in settings.variants}
        check_pairing(first)
        pairing[seed] = first
    values = {m: {v: {s: runs[s, v]['metrics'][m] for s in settings.seeds} for v in settings.variants}
              for m in METRICS}
    offsets = {v: {s: runs[s, v]['offsets'] for s in settings.seeds} for v in settings.variants
               if has_data_offsets(v)}
    claims = {'dk_carries_the_gain': claim_dk_carries_the_gain(values['bbox_mAP'], reference=REFERENCE),
              'offsets_decide': 'dcn',
              'df_converges': {v: claim_df_converges(reports) for v, reports in offsets.items()},
              'dk_tracks_size': {v: claim_dk_tracks_size(reports) for v, reports in offsets.items()}}
    return {
        'settings': asdict(settings),
        'reference': REFERENCE,
        'pairing': {'first_losses': pairing, 'check': 'passed'},
        'metrics': paired_report(values, settings.variants, REFERENCE),
        'claims': claims,
        'runs': [runs[s, v] for s in settings.seeds for v in settings.variants],
        'train_seconds': sum(r['train']['seconds'] for r in runs.values()),
    }


def probe_table(report: dict) -> str:
    """The report as a markdown table (per-variant mean ± std, paired differences with intervals)."""
    return markdown_table(report['metrics'], report['settings']['variants'], LABELS, METRICS, METRIC_NAMES)


def plot_probe(report: dict, path: str) -> str:
    """Per metric, each variant's per-seed values (points joined per seed) and mean (bar), above
    each variant's paired differences against the baseline (points) with mean and 90 % interval."""
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib.figure import Figure

    variants = report['settings']['variants']
    seeds = report['settings']['seeds']
    compared = [v for v in variants if v != REFERENCE]
    fig = Figure(figsize=(3.4 * len(METRICS), 6.2), dpi=120, layout='constrained')
    axes = fig.subplots(2, len(METRICS), squeeze=False)
    for column, metric in enumerate(METRICS):
        top, bottom = axes[0, column], axes[1, column]
        entries = report['metrics'][metric]
        for seed in seeds:
            top.plot(range(len(variants)), [entries[v]['per_seed'][seed] for v in variants],
                     color='0.75', lw=0.8, marker='o', ms=3, zorder=2)
        top.bar(range(len(variants)), [entries[v]['mean'] for v in variants], color='tab:blue', alpha=0.35)
        top.set_xticks(range(len(variants)), [LABELS.get(v, v) for v in variants], rotation=30, ha='right',
                       fontsize=7)
        top.set_ylabel(METRIC_NAMES[metric])
        for x, variant in enumerate(compared):
            d = entries[variant]['vs_reference']
            bottom.scatter([x] * len(d['differences']), d['differences'], s=12, color='0.45', zorder=3)
            colour = {'higher': 'tab:green', 'lower': 'tab:red'}.get(d['verdict'], 'tab:blue')
            if math.isfinite(d['low']):
                bottom.plot([x, x], [d['low'], d['high']], color=colour, lw=4, alpha=0.6, solid_capstyle='butt')
            bottom.plot([x], [d['mean']], marker='_', ms=16, mew=2, color=colour)
        bottom.axhline(0, color='k', lw=0.8)
        bottom.set_xticks(range(len(compared)), [LABELS.get(v, v) for v in compared], rotation=30, ha='right',
                          fontsize=7)
        bottom.set_ylabel(f'Δ {METRIC_NAMES[metric]} vs baseline')
        bottom.grid(axis='y', alpha=0.3)
    fig.suptitle(f'mechanism probe: {len(seeds)} seeds, paired; bars: mean and '
                 f'{int(100 * 0.9)} % t-interval', fontsize=9)
    fig.savefig(path)
    return path
