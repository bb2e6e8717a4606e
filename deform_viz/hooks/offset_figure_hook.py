"""``OffsetFigureHook``: draw offset figures of the first validation images into the visualizer.

Add it to a training config to watch the offsets evolve epoch by epoch in whatever backends
``visualizer.vis_backends`` lists (``LocalVisBackend`` writes PNGs under
``<work_dir>/<timestamp>/vis_data/vis_image/``, ``TensorBoardVisBackend`` image summaries)::

    custom_hooks = [dict(type='OffsetFigureHook', num_images=2,
                         figures=['df_divergence', 'dk_extent'], layers=['backbone.layer4.*'])]

Capture uses the same layer selection and recorders (:mod:`.recording`) as ``OffsetDumpHook``,
so the figures show exactly what a dump of the same evaluation would hold. Forward hooks exist only
from the start of a validation run until ``num_images`` images are drawn, and only on rank 0;
a runner without this hook, or a validation run the ``interval`` skips, pays nothing.
"""
import logging
from typing import Optional, Sequence, Union

from mmengine.dist import get_dist_info
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.registry import HOOKS

from ..dump import check_layer_patterns, image_meta
from .recording import LayerRecording

# what the figures need from each layer (recorders store only those that apply)
FIGURE_COMPONENTS = ('offset', 'offset_used', 'mask')


@HOOKS.register_module()
class OffsetFigureHook(Hook):
    """Send offset figures of the first ``num_images`` validation images to ``runner.visualizer``.

    Args:
        num_images (int): Images drawn per validation run (the first ones rank 0 evaluates).
        layers (str | list[str], optional): Layer patterns as for ``OffsetDumpHook``
            (:func:`deform_viz.dump.match_layer_names`); default: every deformable layer of the
            backbone.
        figures (list[str]): Kinds from ``deform_viz.visualization.FIGURES``: 'kernel_points'
            (Fig. 1), 'df_divergence' (Fig. 2), 'dk_extent' (Fig. 3), 'sampling'.
        interval (int): Draw at every ``interval``-th validation run.
        width (float): Figure width in inches. dpi (float): Resolution of the images sent.
        max_per_side (int, optional): Arrows / circles per side (default: each figure's own).
        blank_if_missing (bool): Draw on a blank canvas when the image file cannot be read
            (logged once) instead of failing the run.
        prefix (str): Name prefix; images are named ``<prefix>_<kind>_img<id>_<layer>``.
    """

    priority = 'LOW'

    def __init__(self,
                 num_images: int = 1,
                 layers: Union[None, str, Sequence[str]] = None,
                 figures: Sequence[str] = ('df_divergence', 'dk_extent'),
                 interval: int = 1,
                 width: float = 6.5,
                 dpi: float = 100,
                 max_per_side: Optional[int] = None,
                 blank_if_missing: bool = True,
                 prefix: str = 'offsets') -> None:
        from ..visualization.render import check_kinds  # matplotlib only once the hook is used
        for key, value in (('num_images', num_images), ('interval', interval),
                           ('max_per_side', max_per_side)):
            if key == 'max_per_side' and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f'OffsetFigureHook: {key} must be a positive integer, got {value!r}')
        if isinstance(figures, str):
            figures = [figures]
        try:
            self.figures = check_kinds(list(figures))
        except ValueError as e:
            raise ValueError(f'OffsetFigureHook: {e}') from None
        if not self.figures:
            raise ValueError('OffsetFigureHook: figures is empty; name at least one figure kind')
        try:
            check_layer_patterns(layers)
        except ValueError as e:
            raise ValueError(f'OffsetFigureHook: {e}') from None
        self.num_images, self.interval = num_images, interval
        self.recording = LayerRecording('OffsetFigureHook', layers, FIGURE_COMPONENTS)
        self.options = dict(width=float(width), dpi=float(dpi))
        if max_per_side is not None:
            self.options['max_per_side'] = max_per_side
        self.blank_if_missing = blank_if_missing
        self.prefix = prefix
        self._val_runs = 0
        self._drawn = 0
        self._warned_missing = False

    # ----------------------------------------------------------------- runner events
    def before_val_epoch(self, runner) -> None:
        self.recording.stop()
        self._val_runs += 1
        if (self._val_runs - 1) % self.interval or get_dist_info()[0] != 0:
            return
        self.recording.start(runner.model)
        self._drawn = 0

    def before_val_iter(self, runner, batch_idx, data_batch=None) -> None:
        self.recording.reset()

    def after_val_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if not self.recording:
            return
        samples = outputs if outputs is not None else (data_batch or {}).get('data_samples')
        for index, sample in enumerate(samples or ()):
            if self._drawn >= self.num_images:
                break
            self._draw(runner, index, sample)
            self._drawn += 1
        if self._drawn >= self.num_images:
            self.recording.stop()  # the rest of the validation runs without forward hooks

    def after_val_epoch(self, runner, metrics=None) -> None:
        self.recording.stop()

    # ----------------------------------------------------------------- drawing
    @staticmethod
    def _step(runner) -> int:
        """The epoch in epoch-based training (it is 0 otherwise), else the iteration."""
        return runner.epoch if runner.epoch > 0 else runner.iter

    def _image(self, meta):
        from ..visualization import ImageNotFoundError, load_image
        try:
            return load_image(meta)
        except (ImageNotFoundError, ValueError) as e:
            if not self.blank_if_missing:
                raise
            if not self._warned_missing:
                self._warned_missing = True
                print_log(f'OffsetFigureHook: {e}; drawing on a blank canvas', logger='current',
                          level=logging.WARNING)
            return None

    def _draw(self, runner, index: int, sample) -> None:
        from ..analysis import LayerOffsets
        from ..visualization import figure_to_array, render_layer
        meta = image_meta(sample, 'float32', owner='OffsetFigureHook')
        image = self._image(meta)
        step = self._step(runner)
        for recorder in self.recording:
            info, fields = recorder.image_fields(index, meta['batch_input_shape'],
                                                 meta['img_shape'])
            components = {c: t.cpu().numpy() for c, t in fields.items()}
            layer = LayerOffsets(recorder.name, info, components, meta)
            for kind in self.figures:
                figure = render_layer(layer, kind, image, **self.options)
                name = f'{self.prefix}_{kind}_img{meta["img_id"]}_{recorder.name}'
                runner.visualizer.add_image(name, figure_to_array(figure), step=step)
