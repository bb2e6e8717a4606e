"""Recording the sampling points of mmcv's ``MultiScaleDeformableAttention`` during val/test.

:class:`AttentionRecorder` is a forward hook (with keyword arguments) on one attention module. From
the module's own inputs (``query``, ``query_pos``, ``reference_points``, ``spatial_shapes``,
``valid_ratios`` or ``key_padding_mask``) and its own ``sampling_offsets`` and
``attention_weights`` layers it computes, for the queries it keeps, the sampling locations and
attention weights the module samples with, by mmcv's rule for 2-d reference points and 4-d
reference boxes. Encoder (self-attention) queries are the feature-map cells: a strided lattice of
them is kept (``encoder_stride``; 1 keeps the full field). Only the kept queries go through the two
layers a second time; the module's own output is untouched.

:class:`DetectionLinker` is a forward hook on the detection head: it keeps the last decoder layer's
class scores and tells, for each final detection, which decoder query produced it (the head's own
top-k over ``num_queries * num_classes``, checked against the detections).

:class:`AttentionRecording` holds both for one hook, attached between ``attach`` and ``detach``, and
turns one image of a recorded batch into the dump arrays of :mod:`deform_viz.attention.format`.
"""
import inspect
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from mmcv.ops import MultiScaleDeformableAttention
from torch import Tensor, nn

from .format import ATTENTION_COMPONENTS, DETECTION_PREFIX, encoder_lattice

__all__ = ['is_attention', 'AttentionRecorder', 'DetectionLinker', 'AttentionRecording',
           'sampling_locations', 'DECODER_QUERIES']

DECODER_QUERIES = ('all', 'detections')


def is_attention(module: nn.Module) -> bool:
    """Whether recording knows ``module``: mmcv's MultiScaleDeformableAttention (or a subclass)."""
    return isinstance(module, MultiScaleDeformableAttention)


def sampling_locations(module: MultiScaleDeformableAttention, query: Tensor, reference: Tensor,
                       spatial_shapes: Tensor) -> Tuple[Tensor, Tensor]:
    """(locations (n, M, L, P, 2), weights (n, M, L, P)) of ``module`` for queries of one image.

    ``query`` (n, C) already holds ``query_pos``; ``reference`` (n, L, 2 | 4) is the module's
    ``reference_points`` input for these queries (normalized, per level). Locations are normalized
    as mmcv samples them; float32.
    """
    n = query.shape[0]
    heads, levels, points = module.num_heads, module.num_levels, module.num_points
    offsets = module.sampling_offsets(query).float().view(n, heads, levels, points, 2)
    weights = module.attention_weights(query).float().view(n, heads, levels * points)
    weights = weights.softmax(-1).view(n, heads, levels, points)
    reference = reference.float()
    if reference.shape[-1] == 2:
        # a level's offsets are in cells of that level: divide by its (w, h)
        size = torch.stack([spatial_shapes[:, 1], spatial_shapes[:, 0]], -1).to(offsets)
        locations = reference[:, None, :, None, :] + offsets / size[None, None, :, None, :]
    elif reference.shape[-1] == 4:
        # offsets in units of half the reference box, per point
        locations = reference[:, None, :, None, :2] + \
            offsets / points * reference[:, None, :, None, 2:] * 0.5
    else:
        raise ValueError(f'reference points with {reference.shape[-1]} coordinates: mmcv takes 2 or 4')
    return locations, weights


def _valid_ratios(kwargs: dict, key_padding_mask: Optional[Tensor], spatial_shapes: Tensor,
                  batch: int) -> Tensor:
    """(bs, L, 2) valid ratios [rw, rh]: as passed by mmdet's transformers, else from the mask."""
    ratios = kwargs.get('valid_ratios')
    if isinstance(ratios, Tensor):
        return ratios.detach().float()
    levels = spatial_shapes.shape[0]
    if key_padding_mask is None:
        return torch.ones(batch, levels, 2, device=spatial_shapes.device)
    out = []
    for mask in key_padding_mask.split([int(h) * int(w) for h, w in spatial_shapes.tolist()], 1):
        height, width = spatial_shapes.tolist()[len(out)]
        mask = mask.view(batch, height, width)
        out.append(torch.stack([(~mask[:, 0, :]).sum(1).float() / width,
                                (~mask[:, :, 0]).sum(1).float() / height], -1))
    return torch.stack(out, 1)


class AttentionRecorder:
    """A forward hook on one ``MultiScaleDeformableAttention``: its sampling points for one batch.

    ``encoder_stride``: for self-attention over the feature maps, keep every ``encoder_stride``-th
    cell of each level's valid region in both directions (1: every cell).
    """

    def __init__(self, name: str, module: MultiScaleDeformableAttention, encoder_stride: int = 8):
        self.name, self.module = name, module
        self.encoder_stride = int(encoder_stride)
        self.signature = inspect.signature(type(module).forward)
        self.handles = []
        self.reset()

    def reset(self) -> None:
        self.images: Optional[List[dict]] = None
        self.calls = 0
        self.role = self.spatial_shapes = None

    def attach(self) -> None:
        self.handles.append(self.module.register_forward_hook(self._on_forward, with_kwargs=True))

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
        self.reset()

    @property
    def batch_size(self) -> Optional[int]:
        return None if self.images is None else len(self.images)

    def _on_forward(self, module, args, kwargs, output):
        self.calls += 1
        if self.calls > 1:
            return
        bound = self.signature.bind(module, *args, **kwargs)
        inputs = dict(bound.arguments)
        inputs.update(inputs.pop('kwargs', {}))
        with torch.no_grad():
            self._record(inputs)

    def _record(self, inputs: dict) -> None:
        m = self.module
        query = inputs['query']
        value = inputs.get('value')
        value = query if value is None else value
        if inputs.get('query_pos') is not None:
            query = query + inputs['query_pos']
        if not m.batch_first:
            query, value = query.transpose(0, 1), value.transpose(0, 1)
        reference = inputs['reference_points']
        spatial_shapes = inputs['spatial_shapes']
        batch, num_queries = query.shape[:2]
        num_value = value.shape[1]
        self.role = 'encoder' if num_queries == num_value else 'decoder'
        self.spatial_shapes = [[int(h), int(w)] for h, w in spatial_shapes.tolist()]
        ratios = _valid_ratios(inputs, inputs.get('key_padding_mask'), spatial_shapes, batch)
        self.images = []
        for b in range(batch):
            if self.role == 'encoder':
                index = self._lattice(ratios[b])
            else:
                index = torch.arange(num_queries)
            index = index.to(query.device)
            ref = reference[b, index]
            locations, weights = sampling_locations(m, query[b, index], ref, spatial_shapes)
            self.images.append(dict(queries=index, reference=ref.float(), locations=locations,
                                    weights=weights, valid_ratios=ratios[b], num_queries=num_queries))

    def _lattice(self, ratios: Tensor) -> Tensor:
        """Flat indices of the kept encoder cells, level by level, row-major within a level."""
        index, start = [], 0
        for (height, width), (rw, rh) in zip(self.spatial_shapes, ratios.tolist()):
            rows = encoder_lattice(int(round(rh * height)), self.encoder_stride)
            cols = encoder_lattice(int(round(rw * width)), self.encoder_stride)
            index.append(start + (rows[:, None] * width + cols[None, :]).ravel())
            start += height * width
        return torch.from_numpy(np.concatenate(index))

    def image_fields(self, index: int, meta: dict,
                     queries: Optional[Tensor] = None) -> Tuple[dict, Dict[str, np.ndarray]]:
        """(layer info, {component: array}) of image ``index`` in original-image pixels.

        ``meta`` is the image's dump metadata (:func:`deform_viz.dump.image_meta`); ``queries``
        (decoder only) restricts the stored queries to these indices, in this order.
        """
        if self.images is None:
            raise RuntimeError(f'attention module {self.name!r} did not run in this batch')
        image = self.images[index]
        ratios = image['valid_ratios'].cpu()
        rows = slice(None)
        if queries is not None and self.role == 'decoder':
            rows = queries.cpu()
        h, w = (float(v) for v in meta['img_shape'])
        sx, sy = (float(v) for v in meta['scale_factor'])
        # normalized on level l -> fraction of its valid region -> resized pixels -> original pixels
        to_pixels = torch.tensor([w / sx, h / sy]) / ratios  # (L, 2)
        locations = image['locations'].cpu()[rows] * to_pixels[None, None, :, None, :]
        reference = image['reference'].cpu()[rows]
        point = reference[:, 0, :2] * to_pixels[0]
        if reference.shape[-1] == 4:
            reference = torch.cat([point, reference[:, 0, 2:] * to_pixels[0]], -1)
        else:
            reference = point
        offsets = locations - point[:, None, None, None, :]
        batch_h, batch_w = meta['batch_input_shape']
        info = dict(type=type(self.module).__name__, role=self.role, num_heads=self.module.num_heads,
                    num_levels=self.module.num_levels, num_points=self.module.num_points,
                    reference_dim=int(reference.shape[-1]), spatial_shapes=self.spatial_shapes,
                    valid_ratios=ratios.tolist(),
                    level_strides=[[batch_h / hh, batch_w / ww] for hh, ww in self.spatial_shapes],
                    num_queries=int(image['num_queries']),
                    query_stride=self.encoder_stride if self.role == 'encoder' else None,
                    components=list(ATTENTION_COMPONENTS))
        arrays = dict(queries=image['queries'].cpu()[rows].numpy().astype(np.int32),
                      reference=reference.numpy().astype(np.float32), offsets=offsets.numpy(),
                      weights=image['weights'].cpu()[rows].numpy())
        return info, arrays


class DetectionLinker:
    """Which decoder query produced each detection of a DETR-style head.

    A forward hook on the head keeps the last decoder layer's class scores ``(bs, Q, C)``. mmdet's
    DETR heads (``DETRHead._predict_by_feat_single``, inherited by Deformable DETR's and DINO's)
    take the top ``max_per_img`` of the sigmoid scores over ``Q * num_classes`` (query =
    index // num_classes), or with a softmax classifier the top queries by their best class.
    :meth:`link` repeats that selection and checks it against the detections (labels equal, scores
    equal); where they differ (a head that post-processes further) each detection is matched by its
    label and score instead, and -1 marks one that matches no single query.
    """

    def __init__(self, head: nn.Module):
        self.head = head
        self.handles = []
        self.reset()

    @staticmethod
    def find_head(model: nn.Module) -> Optional[nn.Module]:
        head = getattr(model, 'bbox_head', None)
        if head is None or not all(hasattr(head, k) for k in ('num_classes', 'loss_cls', 'test_cfg')):
            return None
        return head

    def reset(self) -> None:
        self.cls_scores = None

    def attach(self) -> None:
        self.handles.append(self.head.register_forward_hook(self._on_forward))

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
        self.reset()

    def _on_forward(self, module, args, output):
        if self.cls_scores is None and isinstance(output, (tuple, list)) and isinstance(output[0], Tensor):
            self.cls_scores = output[0][-1].detach()  # the last decoder layer: (bs, Q, C)

    def link(self, index: int, pred_instances) -> Tuple[np.ndarray, bool]:
        """(query per detection (D,) int64, whether every detection was linked) for image ``index``."""
        count = len(pred_instances)
        if self.cls_scores is None:
            return np.full(count, -1, dtype=np.int64), False
        cls_score = self.cls_scores[index].float()
        labels = pred_instances.labels.detach().cpu()
        scores = pred_instances.scores.detach().float().cpu()
        max_per_img = (self.head.test_cfg or {}).get('max_per_img', len(cls_score))
        if getattr(self.head.loss_cls, 'use_sigmoid', False):
            top_scores, top = cls_score.sigmoid().view(-1).topk(max_per_img)
            queries, top_labels = top // self.head.num_classes, top % self.head.num_classes
        else:
            best, best_labels = F.softmax(cls_score, -1)[..., :-1].max(-1)
            top_scores, queries = best.topk(max_per_img)
            top_labels = best_labels[queries]
        if len(queries) == count and torch.equal(top_labels.cpu(), labels) and \
                torch.allclose(top_scores.cpu(), scores, rtol=1e-5, atol=1e-7):
            return queries.cpu().numpy().astype(np.int64), True
        return self._match(cls_score, labels, scores)

    def _match(self, cls_score: Tensor, labels: Tensor, scores: Tensor) -> Tuple[np.ndarray, bool]:
        if getattr(self.head.loss_cls, 'use_sigmoid', False):
            probs = cls_score.sigmoid().cpu()
        else:
            probs = F.softmax(cls_score, -1).cpu()
        out = np.full(len(labels), -1, dtype=np.int64)
        for i, (label, score) in enumerate(zip(labels.tolist(), scores.tolist())):
            if not 0 <= label < probs.shape[1]:
                continue
            hits = torch.nonzero(torch.isclose(probs[:, label], torch.tensor(score), rtol=1e-6, atol=0)).ravel()
            if len(hits) == 1:
                out[i] = int(hits[0])
        return out, bool((out >= 0).all())


class AttentionRecording:
    """The attention recorders and the detection linker of one dump hook.

    Args:
        recorders: one :class:`AttentionRecorder` per selected module.
        linker: the head's :class:`DetectionLinker`, or None for a model without a DETR head.
        decoder_queries: ``'all'`` stores every decoder query; ``'detections'`` only those that
            produced a detection (in the order of the detections, each once).
    """

    def __init__(self, recorders: Sequence[AttentionRecorder], linker: Optional[DetectionLinker],
                 decoder_queries: str = 'all'):
        self.recorders = list(recorders)
        self.linker = linker
        self.decoder_queries = decoder_queries
        self.warned_unlinked = False

    def attach(self) -> None:
        for part in self._parts():
            part.attach()

    def detach(self) -> None:
        for part in self._parts():
            part.detach()

    def reset(self) -> None:
        for part in self._parts():
            part.reset()

    def _parts(self):
        return self.recorders + ([self.linker] if self.linker is not None else [])

    def __iter__(self):
        return iter(self.recorders)

    def __len__(self) -> int:
        return len(self.recorders)

    def image_arrays(self, index: int, sample, meta: dict, dtype) -> Tuple[dict, dict, Dict[str, np.ndarray], bool]:
        """(attention metadata, detection metadata, arrays, linked) of image ``index``.

        ``sample`` is the image's output data sample (``pred_instances`` hold the detections,
        boxes in original-image pixels as mmdet's ``rescale=True`` gives them).
        """
        pred = getattr(sample, 'pred_instances', None)
        arrays: Dict[str, np.ndarray] = {}
        if pred is not None and len(pred) and 'bboxes' in pred:
            if self.linker is not None:
                det_queries, linked = self.linker.link(index, pred)
            else:
                det_queries, linked = np.full(len(pred), -1, dtype=np.int64), False
            bboxes = pred.bboxes.detach().float().cpu().numpy()
            scores = pred.scores.detach().float().cpu().numpy()
            labels = pred.labels.detach().cpu().numpy()
        else:
            det_queries, linked = np.zeros(0, dtype=np.int64), self.linker is not None
            bboxes, scores, labels = np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
        arrays.update({f'{DETECTION_PREFIX}/bboxes': bboxes.astype(np.float32),
                       f'{DETECTION_PREFIX}/scores': scores.astype(np.float32),
                       f'{DETECTION_PREFIX}/labels': labels.astype(np.int32),
                       f'{DETECTION_PREFIX}/queries': det_queries.astype(np.int32)})
        keep = None
        if self.decoder_queries == 'detections' and linked:
            _, first = np.unique(det_queries, return_index=True)
            keep = torch.from_numpy(det_queries[np.sort(first)])
        layers = {}
        for recorder in self.recorders:
            info, fields = recorder.image_fields(index, meta, keep)
            layers[recorder.name] = info
            for component, array in fields.items():
                if component in ('offsets', 'weights'):
                    array = array.astype(dtype)
                arrays[f'{recorder.name}/{component}'] = array
        return layers, dict(count=int(len(det_queries)), linked=bool(linked)), arrays, linked
