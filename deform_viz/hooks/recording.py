"""Recording the offsets of deformable layers with forward hooks, shared by the offset hooks.

:class:`OffsetRecorder` keeps what one layer's offset predictors output for one batch (nothing is
recomputed); :class:`LayerRecording` is the set of recorders a hook watches, attached only between
its ``start`` and ``stop``.
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from mmcv.ops import DeformConv2dPack, ModulatedDeformConv2dPack
from mmengine.model import is_model_wrapper
from torch import Tensor, nn

from ..attention.recording import AttentionRecorder, AttentionRecording, DetectionLinker, is_attention
from ..dump import COMPONENTS, match_layer_names
from ..ops.offset_fields import divergence, offset_df, offset_dk, project_offsets, split_offsets
from ..variants import dcn_variant


def describe_deformable(module: nn.Module) -> Optional[dict]:
    """What recording needs to know about ``module`` if it is a deformable layer, else None.

    Recognised: mmcv's ``DeformConv2dPack`` (DCN) and ``ModulatedDeformConv2dPack`` (DCNv2), and
    this package's layers (a string ``variant`` and an offset predictor ``conv_offset``; Deformable
    Kernels also have ``scope`` and ``mode``; decomposed DCN has ``component`` and ``modulated``).
    """
    if not isinstance(getattr(module, 'conv_offset', None), nn.Module):
        return None
    variant = getattr(module, 'variant', None)
    if isinstance(variant, str):
        if hasattr(module, 'scope') and hasattr(module, 'mode'):
            data_pred = getattr(module, 'conv_data_offset', None)
            return dict(kind='dk', variant=variant, modulated=False, component='full',
                        has_data_offset=isinstance(data_pred, nn.Module),
                        mode=str(module.mode), scope=_ints(module.scope))
        return dict(kind='dcn', variant=variant, modulated=bool(getattr(module, 'modulated', False)),
                    component=str(getattr(module, 'component', 'full')))
    if isinstance(module, ModulatedDeformConv2dPack):
        return dict(kind='dcn', variant=dcn_variant(modulated=True), modulated=True, component='full')
    if isinstance(module, DeformConv2dPack):
        return dict(kind='dcn', variant=dcn_variant(), modulated=False, component='full')
    return None


def _ints(pair) -> List[int]:
    """A layer's (h, w) attribute as a JSON-ready list."""
    return [int(v) for v in pair]


def _stride(image_size: int, feature_size: int) -> int:
    """A feature map's stride on the network input (e.g. 1344 px, 42 cells -> 32)."""
    return max(1, int(round(image_size / feature_size)))


class OffsetRecorder:
    """Forward hooks on one layer: keeps its predictor outputs and feature sizes for one batch.

    ``components`` are those of :data:`deform_viz.dump.COMPONENTS` to compute; the recorder keeps
    the ones that apply to the layer (``mask`` needs DCNv2, ``kernel_offset`` Deformable Kernels).
    """

    def __init__(self, name: str, module: nn.Module, desc: dict, components: Sequence[str]):
        self.name, self.module, self.desc = name, module, desc
        self.kernel_size = _ints(module.kernel_size)
        self.deform_groups = int(getattr(module, 'deform_groups', 1))
        available = set()
        if desc['kind'] == 'dk':
            available.add('kernel_offset')
        if desc['kind'] == 'dcn' or desc.get('has_data_offset'):
            available.update(('offset', 'd_f', 'd_k', 'divergence'))
            if desc['modulated']:
                available.add('mask')
            if desc['component'] != 'full':
                available.add('offset_used')
        self.components = [c for c in COMPONENTS if c in components and c in available]
        self.handles = []
        self.reset()

    def reset(self) -> None:
        """Forget the recorded batch."""
        self.offset_out = self.data_offset_out = self.in_size = self.out_size = None
        self.calls = 0

    def attach(self) -> None:
        self.handles.append(self.module.register_forward_hook(self._on_layer))
        self.handles.append(self.module.conv_offset.register_forward_hook(self._on_offset))
        if self.desc.get('has_data_offset'):
            self.handles.append(
                self.module.conv_data_offset.register_forward_hook(self._on_data_offset))

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
        self.reset()

    def _on_layer(self, module, inputs, output):
        self.calls += 1
        if self.calls == 1:
            self.in_size = tuple(inputs[0].shape[-2:])
            self.out_size = tuple(output.shape[-2:])

    def _on_offset(self, module, inputs, output):
        if self.offset_out is None:
            self.offset_out = output.detach()

    def _on_data_offset(self, module, inputs, output):
        if self.data_offset_out is None:
            self.data_offset_out = output.detach()

    @property
    def batch_size(self) -> Optional[int]:
        """Images in the recorded batch (None before the layer ran)."""
        return None if self.offset_out is None else self.offset_out.shape[0]

    def static_info(self) -> dict:
        """The layer's dump metadata that does not depend on the image."""
        m = self.module
        info = dict(type=type(m).__name__, variant=self.desc['variant'],
                    kernel_size=self.kernel_size, stride=_ints(m.stride), padding=_ints(m.padding),
                    dilation=_ints(m.dilation), deform_groups=self.deform_groups)
        if self.desc['kind'] == 'dk':
            info.update(mode=self.desc['mode'], scope=self.desc['scope'])
        return info

    def image_fields(self, index: int, batch_input_shape: Sequence[int],
                     img_shape: Sequence[int]) -> Tuple[dict, Dict[str, Tensor]]:
        """(layer info, {component: float32 tensor}) of image ``index`` of the recorded batch.

        Fields are cropped to the image's valid cells ``ceil(img_shape / output_stride)`` and
        shaped as :mod:`deform_viz.dump` describes, on the layer's device.
        """
        if self.offset_out is None or self.out_size is None:
            raise RuntimeError(f'layer {self.name!r} did not run in this batch')
        batch_h = batch_input_shape[0]
        out_h, out_w = self.out_size
        out_stride = _stride(batch_h, out_h)
        height = min(out_h, math.ceil(img_shape[0] / out_stride))
        width = min(out_w, math.ceil(img_shape[1] / out_stride))
        info = dict(self.static_info(), input_stride=_stride(batch_h, self.in_size[0]),
                    output_stride=out_stride, shape=[height, width], components=self.components)
        want = set(self.components)
        out: Dict[str, Tensor] = {}
        if self.desc['kind'] == 'dk':
            kernel = self.offset_out[index].float()
            taps = self.kernel_size[0] * self.kernel_size[1]
            if 'kernel_offset' in want:
                if kernel.dim() == 1:  # global: one offset set per image
                    out['kernel_offset'] = kernel.view(taps, 2)
                else:
                    out['kernel_offset'] = kernel[:, :height, :width].reshape(taps, 2, height, width)
            packed = self.data_offset_out[index] if self.desc.get('has_data_offset') else None
        else:
            packed = self.offset_out[index]
        if packed is not None:
            packed = packed[:, :height, :width].float().contiguous()
            if self.desc['modulated']:
                o1, o2, logits = packed.chunk(3, dim=0)
                packed = torch.cat((o1, o2), dim=0)
                if 'mask' in want:
                    out['mask'] = logits.sigmoid().reshape(self.deform_groups, -1, height, width)
            fields = split_offsets(packed[None], self.kernel_size)[0]
            if 'offset' in want:
                out['offset'] = fields
            if 'offset_used' in want:
                used = project_offsets(packed[None], self.kernel_size, self.desc['component'])
                out['offset_used'] = split_offsets(used, self.kernel_size)[0]
            if want & {'d_f', 'divergence'}:
                d_f = offset_df(fields)
                if 'd_f' in want:
                    out['d_f'] = d_f
                if 'divergence' in want:
                    out['divergence'] = divergence(d_f)
            if 'd_k' in want:
                out['d_k'] = offset_dk(fields)
        return info, {c: out[c] for c in self.components}


def _deformable_layers(model: nn.Module) -> Dict[str, Tuple[nn.Module, dict]]:
    return {name: (module, desc) for name, module in model.named_modules()
            for desc in [describe_deformable(module)] if desc is not None}


def _conv_recorders(deformable, chosen, components, owner, required=True) -> List[OffsetRecorder]:
    recorders = [OffsetRecorder(name, *deformable[name], components) for name in chosen]
    if required and not any(r.components for r in recorders):
        raise ValueError(f'{owner}: none of the selected layers has any of the components '
                         f'{list(components)} (e.g. mask needs DCNv2, kernel_offset '
                         'Deformable Kernels)')
    return [r for r in recorders if r.components]


def select_offset_layers(model: nn.Module, layer_patterns: Optional[Sequence[str]],
                         components: Sequence[str], owner: str) -> List[OffsetRecorder]:
    """Recorders for the deformable layers of ``model`` that ``layer_patterns`` select.

    ``None`` selects every deformable layer of the backbone; patterns are those of
    :func:`deform_viz.dump.match_layer_names`. Layers with none of ``components`` are left
    out. Errors name ``owner`` (the hook that asked).
    """
    if is_model_wrapper(model):
        model = model.module
    deformable = _deformable_layers(model)
    if layer_patterns is None:
        chosen = [name for name in deformable if name.startswith('backbone.')]
        if not chosen:
            raise ValueError(
                f'{owner}: the model ({type(model).__name__}) has no deformable layer in '
                f'its backbone (deformable layers elsewhere: {list(deformable) or "none"}); use a '
                "config with backbone.dcn=... or select layers with layers=['<pattern>']")
    else:
        chosen = match_layer_names(deformable, layer_patterns, where=owner, kind='deformable layer')
    return _conv_recorders(deformable, chosen, components, owner)


def select_layers_and_attention(model: nn.Module, layer_patterns: Optional[Sequence[str]],
                                components: Sequence[str], owner: str, encoder_stride: int = 8,
                                decoder_queries: str = 'all') -> Tuple[List[OffsetRecorder], AttentionRecording]:
    """Like :func:`select_offset_layers`, the patterns also selecting ``MultiScaleDeformableAttention``.

    ``None`` selects the backbone's deformable layers and every attention module; a model with
    neither is an error. Returns the conv recorders and the :class:`AttentionRecording` (with the
    detection head's linker when the model has a DETR-style ``bbox_head``).
    """
    if is_model_wrapper(model):
        model = model.module
    deformable = _deformable_layers(model)
    attention = {name: module for name, module in model.named_modules() if is_attention(module)}
    if layer_patterns is None:
        chosen = [name for name in deformable if name.startswith('backbone.')] + list(attention)
        if not chosen:
            raise ValueError(
                f'{owner}: the model ({type(model).__name__}) has no deformable layer in its backbone '
                f'and no MultiScaleDeformableAttention (deformable layers elsewhere: '
                f'{list(deformable) or "none"}); use a config with backbone.dcn=... or select layers '
                "with layers=['<pattern>']")
    else:
        chosen = match_layer_names(list(deformable) + list(attention), layer_patterns, where=owner,
                                   kind='deformable layer or attention module')
    conv = [name for name in chosen if name in deformable]
    attn = [name for name in chosen if name in attention]
    recorders = _conv_recorders(deformable, conv, components, owner, required=not attn)
    head = DetectionLinker.find_head(model) if attn else None
    return recorders, AttentionRecording(
        [AttentionRecorder(name, attention[name], encoder_stride) for name in attn],
        DetectionLinker(head) if head is not None else None, decoder_queries)


class LayerRecording:
    """The recorders of the layers one hook watches; forward hooks exist only from ``start`` to ``stop``.

    Args:
        owner: the hook's name, for error messages.
        layer_patterns: see :func:`select_offset_layers`.
        components: the fields the hook needs.
        attention: None for deformable conv layers only; else the options of
            :func:`select_layers_and_attention` (``encoder_stride``, ``decoder_queries``): the
            patterns also select attention modules, recorded in ``self.attention``.
    """

    def __init__(self, owner: str, layer_patterns: Optional[Sequence[str]],
                 components: Sequence[str], attention: Optional[dict] = None):
        self.owner, self.layer_patterns, self.components = owner, layer_patterns, tuple(components)
        self.attention_options = attention
        self.recorders: List[OffsetRecorder] = []
        self.attention = AttentionRecording([], None)

    def start(self, model: nn.Module) -> None:
        """Select the layers of ``model`` (a bad pattern fails here) and attach their hooks."""
        self.stop()
        if self.attention_options is None:
            self.recorders = select_offset_layers(model, self.layer_patterns, self.components,
                                                  self.owner)
        else:
            self.recorders, self.attention = select_layers_and_attention(
                model, self.layer_patterns, self.components, self.owner, **self.attention_options)
        for recorder in self.recorders:
            recorder.attach()
        self.attention.attach()

    def reset(self) -> None:
        """Forget the last batch (call before each forward whose outputs are used)."""
        for recorder in self.recorders:
            recorder.reset()
        self.attention.reset()

    def stop(self) -> None:
        """Remove every forward hook; the model runs as if never recorded."""
        for recorder in self.recorders:
            recorder.detach()
        self.recorders = []
        self.attention.detach()
        self.attention = AttentionRecording([], None)

    def __iter__(self):
        return iter(self.recorders)

    def __len__(self) -> int:
        return len(self.recorders)
