"""``OffsetStatsHook``: log how the offsets of deformable layers move while a detector trains.

::

    custom_hooks = [dict(type='OffsetStatsHook', interval=50)]

On the first iteration of a run and on every ``interval``-th one, forward hooks record what the
offset predictors output in that iteration's forward pass (attached for that iteration only,
so the other iterations run untouched), and these means are logged per layer:

====================== ======================================================= ===============
scalar                 mean over the image's cells (and taps, deform groups)     zero offsets
====================== ======================================================= ===============
``offset``             length of the predicted offsets, input-map pixels        0
``d_f``                length of d_f, the mean offset over the taps              0
``d_k``                length of d_k = offset - d_f                              0
``effective_dilation`` distance of adjacent sampling points (DCN paper),         the dilation
                       of the offsets the layer samples with (d_f-/d_k-only:
                       the projected ones)
``mask``               DCNv2 modulation scalar                                   0.5
``kernel_offset``      length of Deformable Kernels' kernel offsets, scope cells 0
====================== ======================================================= ===============

Means cover the valid (unpadded) cells of every image of the batch, summed over all ranks. They
are named ``offsets/<scalar>/<layer>``, plus ``offsets/<scalar>/mean``, the mean over the layers
that have that scalar, and go at step ``iteration + 1`` (the logger's) to every visualizer backend
(``LocalVisBackend``'s ``vis_data/scalars.json``, TensorBoard, ...) and to the message hub; the
log gets one line with the means over layers.
"""
import math
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
from mmengine.dist import all_reduce
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS
from torch import Tensor

from ..dump import check_layer_patterns
from ..ops.offset_fields import effective_dilation
from .recording import LayerRecording

STATISTICS = ('offset', 'd_f', 'd_k', 'effective_dilation', 'mask', 'kernel_offset')
# the recorded fields the statistics are computed from
RECORDED = ('offset', 'offset_used', 'mask', 'kernel_offset', 'd_f', 'd_k')


def _length(vectors: Tensor, dim: int) -> Tensor:
    return vectors.square().sum(dim).sqrt()


def offset_statistics(fields: Mapping[str, Tensor], kernel_size: Sequence[int],
                      dilation: Sequence[int]) -> Dict[str, Tuple[Tensor, int]]:
    """The sum and the number of values of each statistic of one layer's fields on one image.

    ``fields`` as :meth:`~deform_viz.hooks.OffsetRecorder.image_fields` gives them: ``offset``,
    ``offset_used``, ``d_k`` (G, KK, 2, H, W), ``d_f`` (G, 2, H, W), ``mask`` (G, KK, H, W),
    ``kernel_offset`` (KK, 2, H, W) or (KK, 2); any may be absent. Returns
    ``{statistic: (0-d sum, count)}`` for the statistics the fields allow.
    """
    values = {}
    if 'offset' in fields:
        values['offset'] = _length(fields['offset'], -3)
        values['d_f'] = _length(fields['d_f'], -3)
        values['d_k'] = _length(fields['d_k'], -3)
        if math.prod(kernel_size) > 1:
            used = fields.get('offset_used', fields['offset'])
            values['effective_dilation'] = effective_dilation(used, tuple(kernel_size),
                                                              tuple(dilation))
    if 'mask' in fields:
        values['mask'] = fields['mask']
    if 'kernel_offset' in fields:
        values['kernel_offset'] = _length(fields['kernel_offset'], 1)
    return {name: (value.sum(), value.numel()) for name, value in values.items()}


@HOOKS.register_module()
class OffsetStatsHook(Hook):
    """Log per-layer offset statistics every ``interval`` training iterations (module docstring).

    Args:
        interval (int): Record every ``interval``-th iteration (and the first of the run).
        layers (str | list[str], optional): Layer patterns as for ``OffsetDumpHook``
            (:func:`deform_viz.dump.match_layer_names`); default: every deformable layer of the
            backbone.
    """

    def __init__(self, interval: int = 50,
                 layers: Union[None, str, Sequence[str]] = None) -> None:
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ValueError(f'OffsetStatsHook: interval must be a positive integer, '
                             f'got {interval!r}')
        try:
            check_layer_patterns(layers)
        except ValueError as e:
            raise ValueError(f'OffsetStatsHook: {e}') from None
        self.interval = interval
        self.recording = LayerRecording('OffsetStatsHook', layers, RECORDED)
        self._first_iter = 0
        self._batch: Optional[tuple] = None  # (batch input shape, image shapes) of the iteration
        self._preprocessor_hook = None

    def before_train(self, runner) -> None:
        self._first_iter = runner.iter  # after resuming too: the state the run starts from

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        if runner.iter != self._first_iter and not self.every_n_train_iters(runner, self.interval):
            return
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        self.recording.start(model)
        self._preprocessor_hook = model.data_preprocessor.register_forward_hook(
            self._on_preprocessed)

    def _on_preprocessed(self, module, inputs, output) -> None:
        """Keep the padded batch shape and the image shapes the backbone will see."""
        if self._batch is not None:
            return
        batch_shape = tuple(output['inputs'].shape[-2:])
        samples = output.get('data_samples') or ()
        shapes = [tuple(s.metainfo.get('img_shape', batch_shape))[:2] for s in samples]
        self._batch = (batch_shape, shapes or [batch_shape] * output['inputs'].shape[0])

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if not len(self.recording):
            return
        try:
            scalars = self._statistics()
        finally:
            self._stop()
        step = runner.iter + 1
        runner.visualizer.add_scalars(scalars, step=step)
        runner.message_hub.update_scalars(scalars)
        means = ', '.join(f'{name} {scalars[f"offsets/{name}/mean"]:.5g}' for name in STATISTICS
                          if f'offsets/{name}/mean' in scalars)
        runner.logger.info(f'OffsetStatsHook: iter {step}, mean over layers: {means}')

    def after_train(self, runner) -> None:
        self._stop()

    @torch.no_grad()
    def _statistics(self) -> Dict[str, float]:
        """{``offsets/<statistic>/<layer or 'mean'>``: value} of the recorded iteration."""
        if self._batch is None:
            raise RuntimeError("OffsetStatsHook: the model's data_preprocessor did not run in "
                               'this iteration; the hook needs the batch it prepares')
        batch_shape, img_shapes = self._batch
        keys, sums, counts = [], [], []
        for recorder in self.recording:
            if recorder.batch_size != len(img_shapes):
                raise RuntimeError(
                    f'OffsetStatsHook: layer {recorder.name!r} ran on {recorder.batch_size} '
                    f'images but the batch has {len(img_shapes)}; the hook needs the backbone '
                    'to run once per batch')
            layer_sums, layer_counts = {}, {}
            for index, img_shape in enumerate(img_shapes):
                info, fields = recorder.image_fields(index, batch_shape, img_shape)
                stats = offset_statistics(fields, info['kernel_size'], info['dilation'])
                for name, (total, count) in stats.items():
                    layer_sums[name] = layer_sums.get(name, 0) + total.double()
                    layer_counts[name] = layer_counts.get(name, 0) + count
            keys += [(name, recorder.name) for name in layer_sums]
            sums += layer_sums.values()
            counts += layer_counts.values()
        totals = torch.stack([torch.stack(sums), sums[0].new_tensor(counts)])
        all_reduce(totals)  # the sums and counts of every rank; a no-op without distributed
        scalars, by_statistic = {}, {}
        for (name, layer), value in zip(keys, (totals[0] / totals[1]).tolist()):
            scalars[f'offsets/{name}/{layer}'] = value
            by_statistic.setdefault(name, []).append(value)
        for name in STATISTICS:
            if name in by_statistic:
                scalars[f'offsets/{name}/mean'] = sum(by_statistic[name]) / len(by_statistic[name])
        return scalars

    def _stop(self) -> None:
        self.recording.stop()
        if self._preprocessor_hook is not None:
            self._preprocessor_hook.remove()
            self._preprocessor_hook = None
        self._batch = None
