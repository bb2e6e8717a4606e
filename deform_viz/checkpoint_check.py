"""Stop a run whose checkpoint does not fit the model's deformable layers.

mmengine loads checkpoints non-strictly: a tensor that is missing or has another shape is
reported as a warning and keeps its initial value. For a deformable layer that means the offset
predictor stays at its zero init, and the "d_f" or "DK" model evaluated is in fact a plain conv.
:class:`DeformableCheckpointGuard` turns that case, and only that case, into an error that names
the layers and the likely fix; every other mismatch stays mmengine's warning.

A deformable layer is any module with a ``conv_offset`` child: mmcv's DCN / DCNv2, this package's
``DecomposedDCN`` family and ``DeformableKernel``. The check runs inside the one load mmengine
does, after the layer's own key and shape conversions (mmcv's legacy names, a K x K weight mapped
into a DK scope), so it sees exactly what the layer would take.
"""
from typing import List, Tuple

import torch.nn as nn
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper


class CheckpointMismatchError(RuntimeError):
    """The checkpoint lacks a tensor of a deformable layer, or has it with another shape."""


def deformable_layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """``(name, module)`` of every module that predicts offsets (has a ``conv_offset``)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(getattr(m, 'conv_offset', None), nn.Module)]


def _shape(shape) -> str:
    return '(' + ', '.join(str(s) for s in shape) + ')'


def _likely_fix(layer: nn.Module, key: str, found, wanted) -> str:
    """What in the config most likely differs from the layer the checkpoint was trained with."""
    kind = type(layer).__name__
    if found is None:
        if key.startswith('conv_offset.'):
            return ('the checkpoint has no offset predictor here: it was trained with a rigid conv in '
                    'this stage (a baseline, or another stage_with_dcn); evaluate it with its own config')
        if key.startswith('conv_data_offset.'):
            return 'the checkpoint was trained without data offsets: set deform_data=False'
        return f'the checkpoint was trained with another layer here than {kind}'
    if key == 'weight' and len(found) == len(wanted) == 4 and found[:2] == wanted[:2]:
        return (f'the checkpoint was trained with a {found[2]}x{found[3]} kernel scope: '
                f'set scope=({found[2]}, {found[3]})' if hasattr(layer, 'scope') else
                f'the checkpoint was trained with a {found[2]}x{found[3]} kernel')
    if key.startswith('conv_offset.') and len(found) != len(wanted):
        mode = 'local' if len(found) == 4 else 'global'
        return f"the checkpoint's Deformable Kernel predicts offsets {mode}ly: set mode='{mode}'"
    if key.startswith(('conv_offset.', 'conv_data_offset.')) and found[1:] == wanted[1:]:
        taps = layer.kernel_size[0] * layer.kernel_size[1]
        groups = getattr(layer, 'deform_groups', 1)
        if found[0] * 2 == wanted[0] * 3:
            return ('the checkpoint was trained with a modulated DCN (DCNv2, offsets and masks): '
                    "set modulated=True (mmcv: type='DCNv2')")
        if found[0] * 3 == wanted[0] * 2:
            return ("the checkpoint was trained with DCN v1 (offsets, no masks): set modulated=False "
                    "(mmcv: type='DCN')")
        per_group = wanted[0] // groups
        if found[0] % per_group == 0:
            return f'the checkpoint was trained with deform_groups={found[0] // per_group}'
        return f'the checkpoint predicts {found[0]} offset channels, not {wanted[0]} ({taps} taps)'
    return f'the checkpoint was trained with another {kind} configuration'


class DeformableCheckpointGuard(Hook):
    """Raise :class:`CheckpointMismatchError` when the checkpoint the runner loads (``load_from``
    or ``resume``) does not fit a deformable layer, right after the model is loaded: before the
    optimizer state is resumed and before the first iteration or image.

    ``after_load_checkpoint`` (mmengine calls it between reading the file and loading it into the
    model) puts a load-state-dict pre-hook on each deformable layer, which compares what the
    layer receives with its own tensors, and a post-hook on the model, which raises if anything
    did not fit. Weights loaded by a backbone's ``init_cfg`` (ImageNet weights, which have no
    offset predictors) are not checked.
    """

    priority = 'VERY_HIGH'

    def __init__(self):
        self._handles = []
        self._problems = []  # (layer name, layer, key, shape in checkpoint or None, shape in model)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        self._remove()
        layers = deformable_layers(model)
        if not layers:
            return
        source = runner.cfg.get('load_from') or f'the checkpoint resumed in {runner.work_dir}'
        self._handles = [layer._register_load_state_dict_pre_hook(self._compare, with_module=True)
                         for _, layer in layers]
        self._handles.append(model.register_load_state_dict_post_hook(
            lambda module, incompatible_keys: self._check(source)))

    def _compare(self, layer, state_dict, prefix, *args) -> None:
        for key, tensor in layer.state_dict().items():
            found = state_dict.get(prefix + key)
            if found is None or found.shape != tensor.shape:
                self._problems.append((prefix[:-1], layer, key, None if found is None else tuple(found.shape),
                                       tuple(tensor.shape)))

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles, self._problems = [], []

    def _check(self, source: str) -> None:
        problems = self._problems
        self._remove()
        if not problems:
            return
        by_layer = {}
        for name, layer, key, found, wanted in problems:
            where = 'missing' if found is None else f'{_shape(found)} in the checkpoint, {_shape(wanted)} here'
            by_layer.setdefault((name, type(layer).__name__), []).append(f'{key} {where}')
        lines = [f'  {name} ({kind}): ' + '; '.join(keys) for (name, kind), keys in by_layer.items()]
        fixes = list(dict.fromkeys(_likely_fix(layer, key, found, wanted)
                                   for _, layer, key, found, wanted in problems))
        shown = lines[:4] + ([f'  ... and {len(lines) - 4} more layers'] if len(lines) > 4 else [])
        raise CheckpointMismatchError(
            f'{source} does not fit {len(lines)} deformable layer(s) of the model (loaded anyway, '
            'these tensors would keep their initial values, offset predictors zero, and the '
            'results would not be those of this model):\n' + '\n'.join(shown) +
            '\nLikely fix: ' + '; '.join(fixes))
