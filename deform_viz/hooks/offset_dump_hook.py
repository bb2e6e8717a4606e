"""``OffsetDumpHook``: record the offset fields of deformable layers while a detector is evaluated.

Enable it from a config or from ``tools/test.py --dump-offsets DIR``::

    custom_hooks = [dict(type='OffsetDumpHook', out_dir='work_dirs/offsets')]

In ``before_{val,test}_epoch`` it attaches forward hooks to the selected layers (and to their offset
predictors), keeps the predictor outputs of each batch (nothing is recomputed), and in
``after_{val,test}_iter`` writes one file per image in the format of :mod:`deform_viz.dump`. The
forward hooks are removed after the epoch; a runner without this hook pays nothing.
"""
import fnmatch
import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from mmengine.dist import all_reduce, get_dist_info
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS
from torch import nn

from ..dump import COMPONENTS, offset_dump_path, offset_dump_paths, write_offset_dump
from ..ops.offset_fields import divergence, offset_df, offset_dk, project_offsets, split_offsets

DEFAULT_COMPONENTS = ('offset', 'offset_used', 'mask', 'kernel_offset', 'd_f', 'divergence')
DTYPES = {'float16': np.float16, 'float32': np.float32}
_UNITS = {'': 1, 'B': 1, 'K': 1e3, 'KB': 1e3, 'M': 1e6, 'MB': 1e6, 'G': 1e9, 'GB': 1e9,
          'KIB': 2**10, 'MIB': 2**20, 'GIB': 2**30, 'T': 1e12, 'TB': 1e12}


def _pair(value) -> List[int]:
    if isinstance(value, int):
        return [value, value]
    return [int(v) for v in value]


def parse_bytes(value) -> int:
    """``1e9``, ``'500MB'``, ``'2GiB'`` -> bytes (int)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    else:
        match = re.fullmatch(r'\s*([0-9.eE+]+)\s*([a-zA-Z]*)\s*', str(value))
        if not match or match.group(2).upper() not in _UNITS:
            raise ValueError(f'OffsetDumpHook: cannot read {value!r} as a byte count '
                             "(examples: 200000000, '500MB', '2GiB')")
        try:
            number = float(match.group(1)) * _UNITS[match.group(2).upper()]
        except ValueError:
            raise ValueError(f'OffsetDumpHook: cannot read {value!r} as a byte count') from None
    if not number > 0 or math.isinf(number):
        raise ValueError(f'OffsetDumpHook: max_bytes must be a positive byte count, got {value!r}')
    return int(number)


def describe_deformable(module: nn.Module) -> Optional[dict]:
    """What the hook needs to know about ``module`` if it is a deformable layer, else None.

    Recognised: mmcv's ``DeformConv2dPack`` ('DCN') and ``ModulatedDeformConv2dPack`` ('DCNv2'), and
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
                        mode=str(module.mode), scope=_pair(module.scope))
        return dict(kind='dcn', variant=variant, modulated=bool(getattr(module, 'modulated', False)),
                    component=str(getattr(module, 'component', 'full')))
    try:
        from mmcv.ops import DeformConv2dPack, ModulatedDeformConv2dPack
    except ImportError:  # mmcv-lite: only this package's layers exist
        return None
    if isinstance(module, ModulatedDeformConv2dPack):
        return dict(kind='dcn', variant='dcnv2', modulated=True, component='full')
    if isinstance(module, DeformConv2dPack):
        return dict(kind='dcn', variant='dcn', modulated=False, component='full')
    return None


def _stride(image_size: int, feature_size: int) -> int:
    """A feature map's stride on the network input (e.g. 1344 px, 42 cells -> 32)."""
    return max(1, int(round(image_size / feature_size)))


def _jsonable(value):
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, torch.Tensor):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _file_size_bound(meta: dict, arrays: Dict[str, np.ndarray]) -> int:
    """An upper bound of the .npz size: data, a <=256-byte npy header per array, zip64 entries."""
    entries = [(key, a.nbytes) for key, a in arrays.items()]
    entries.append(('__meta__', 4 * (len(json.dumps(meta)) + 64)))
    return sum(nbytes + 256 + 2 * (len(key) + 4) + 2 * 50 + 40 for key, nbytes in entries) + 100


class OffsetRecorder:
    """Forward hooks on one layer: keeps its predictor outputs and feature sizes for one batch."""

    def __init__(self, name: str, module: nn.Module, desc: dict, components: Sequence[str]):
        self.name, self.module, self.desc = name, module, desc
        self.kernel_size = _pair(module.kernel_size)
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

    def reset(self):
        self.offset_out = self.data_offset_out = self.in_size = self.out_size = None
        self.calls = 0

    def attach(self):
        self.handles.append(self.module.register_forward_hook(self._on_layer))
        self.handles.append(self.module.conv_offset.register_forward_hook(self._on_offset))
        if self.desc.get('has_data_offset'):
            self.handles.append(
                self.module.conv_data_offset.register_forward_hook(self._on_data_offset))

    def detach(self):
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

    def static_info(self) -> dict:
        m = self.module
        info = dict(type=type(m).__name__, variant=self.desc['variant'],
                    kernel_size=self.kernel_size, stride=_pair(m.stride), padding=_pair(m.padding),
                    dilation=_pair(m.dilation), deform_groups=self.deform_groups)
        if self.desc['kind'] == 'dk':
            info.update(mode=self.desc['mode'], scope=self.desc['scope'])
        return info

    def fields(self, index: int, batch_input_shape, img_shape, dtype) -> tuple:
        """(layer info, {component: array}) for image ``index`` of the recorded batch."""
        if self.offset_out is None or self.out_size is None:
            raise RuntimeError(f'OffsetDumpHook: layer {self.name!r} did not run in this batch')
        batch_h, batch_w = batch_input_shape
        out_h, out_w = self.out_size
        in_stride = _stride(batch_h, self.in_size[0])
        out_stride = _stride(batch_h, out_h)
        height = min(out_h, math.ceil(img_shape[0] / out_stride))
        width = min(out_w, math.ceil(img_shape[1] / out_stride))
        info = dict(self.static_info(), input_stride=in_stride, output_stride=out_stride,
                    shape=[height, width], components=self.components)
        want = set(self.components)
        out: Dict[str, torch.Tensor] = {}
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
        arrays = {f'{self.name}/{c}': out[c].cpu().numpy().astype(dtype) for c in self.components}
        return info, arrays


def select_offset_layers(model: nn.Module, layer_patterns: Optional[Sequence[str]],
                         components: Sequence[str], owner: str = 'OffsetDumpHook') -> List[OffsetRecorder]:
    """Recorders for the deformable layers of ``model`` that ``layer_patterns`` select.

    ``None`` selects every deformable layer of the backbone; a pattern is an fnmatch glob or
    ``'re:<regex>'`` on module names. Layers with none of ``components`` are left out. Errors
    name ``owner`` (the hook that asked).
    """
    if is_model_wrapper(model):
        model = model.module
    deformable = [(name, module, desc) for name, module in model.named_modules()
                  for desc in [describe_deformable(module)] if desc is not None]
    if layer_patterns is None:
        chosen = [d for d in deformable if d[0].startswith('backbone.')]
        if not chosen:
            found = [d[0] for d in deformable] or 'none'
            raise ValueError(
                f'{owner}: the model ({type(model).__name__}) has no deformable layer in '
                f'its backbone (deformable layers elsewhere: {found}); use a config with '
                "backbone.dcn=... or select layers with layers=['<pattern>']")
    else:
        chosen = []
        for pattern in layer_patterns:
            if pattern.startswith('re:'):
                regex = re.compile(pattern[3:])
                hits = [d for d in deformable if regex.fullmatch(d[0])]
            else:
                hits = [d for d in deformable if fnmatch.fnmatchcase(d[0], pattern)]
            if not hits:
                names = [d[0] for d in deformable]
                shown = names[:8] + (['...'] if len(names) > 8 else [])
                raise ValueError(f'{owner}: layers pattern {pattern!r} matches no '
                                 f'deformable layer; deformable layers: {shown or "none"}')
            chosen += [d for d in hits if d not in chosen]
    recorders = [OffsetRecorder(name, module, desc, components) for name, module, desc in chosen]
    if not any(r.components for r in recorders):
        raise ValueError(f'{owner}: none of the selected layers has any of the components '
                         f'{list(components)} (e.g. mask needs DCNv2, kernel_offset '
                         'Deformable Kernels)')
    return [r for r in recorders if r.components]


def image_meta(sample, dtype: str, owner: str = 'OffsetDumpHook') -> dict:
    """The dump metadata of one data sample (ids, shapes, scale, flip) plus the array ``dtype``."""
    info = sample.metainfo if hasattr(sample, 'metainfo') else dict(sample)
    img_id = info.get('img_id')
    if img_id is None:
        if not info.get('img_path'):
            raise KeyError(f'{owner}: the data samples carry neither img_id nor '
                           'img_path; add them to the test pipeline\'s PackDetInputs meta_keys')
        img_id = Path(info['img_path']).stem
    missing = [k for k in ('img_shape', 'ori_shape') if k not in info]
    if missing:
        raise KeyError(f'{owner}: the data samples lack {missing}; keep them in the '
                       "test pipeline's PackDetInputs meta_keys")
    batch_input_shape = info.get('batch_input_shape') or info.get('pad_shape') or \
        info['img_shape']
    scale_factor = info.get('scale_factor', (1.0, 1.0))
    return _jsonable(dict(
        img_id=img_id, img_path=info.get('img_path'), ori_shape=info['ori_shape'][:2],
        img_shape=info['img_shape'][:2], pad_shape=info.get('pad_shape', batch_input_shape)[:2],
        batch_input_shape=batch_input_shape[:2], scale_factor=scale_factor,
        flip=bool(info.get('flip', False)), flip_direction=info.get('flip_direction'),
        dtype=dtype))


@HOOKS.register_module()
class OffsetDumpHook(Hook):
    """Write the offset fields of deformable layers to ``out_dir`` during val/test.

    Args:
        out_dir (str): Directory of the dump files (created; relative paths are relative to the
            working directory). When the val loop runs inside training, each evaluation goes to
            ``out_dir/epoch_<n>`` (or ``iter_<n>`` for iteration-based training).
        layers (str | list[str], optional): Module-name patterns selecting the layers
            (``fnmatch`` syntax, or a regular expression prefixed with ``re:``), matched against
            names as in ``model.named_modules()``, e.g. ``'backbone.layer4.*'``. Only deformable
            layers are selected; a pattern matching none is an error. Default: every deformable
            layer of the backbone.
        components (str | list[str]): Which fields to store, from ``offset``, ``offset_used``,
            ``mask``, ``kernel_offset``, ``d_f``, ``d_k``, ``divergence`` or ``'all'``. Each
            layer stores those that apply to it. Default: all but ``d_k`` (which is
            ``offset - d_f``).
        dtype (str): ``'float16'`` (default) or ``'float32'``.
        max_images (int, optional): Dump only the first ``max_images`` images of the evaluation
            order (the same images for any number of ranks).
        max_bytes (int | str, optional): Byte budget (e.g. ``'20GB'``) shared evenly by the ranks;
            a rank stops writing before exceeding its share and logs one warning.
        interval (int): Dump every ``interval``-th image of the evaluation order.
        resume (bool): Skip images whose dump already exists in ``out_dir``. Without it a
            directory already holding dumps is an error (nothing is overwritten).
    """

    priority = 'LOW'

    def __init__(self,
                 out_dir: str,
                 layers: Union[None, str, Sequence[str]] = None,
                 components: Union[str, Sequence[str]] = DEFAULT_COMPONENTS,
                 dtype: str = 'float16',
                 max_images: Optional[int] = None,
                 max_bytes: Union[None, int, float, str] = None,
                 interval: int = 1,
                 resume: bool = False) -> None:
        if not isinstance(out_dir, (str, os.PathLike)) or not str(out_dir):
            raise ValueError(f'OffsetDumpHook: out_dir must be a directory path, got {out_dir!r}')
        self.out_dir = Path(out_dir)
        if isinstance(layers, str):
            layers = [layers]
        self.layer_patterns = None if layers is None else [str(p) for p in layers]
        for pattern in self.layer_patterns or ():
            if pattern.startswith('re:'):
                try:
                    re.compile(pattern[3:])
                except re.error as e:
                    raise ValueError(f'OffsetDumpHook: bad regular expression in layers '
                                     f'{pattern!r}: {e}') from None
        if isinstance(components, str):
            components = COMPONENTS if components == 'all' else [components]
        unknown = [c for c in components if c not in COMPONENTS]
        if unknown or not components:
            raise ValueError(f'OffsetDumpHook: unknown components {unknown or components!r}; '
                             f"choose from {list(COMPONENTS)} or 'all'")
        self.components = tuple(components)
        if dtype not in DTYPES:
            raise ValueError(f'OffsetDumpHook: dtype must be one of {list(DTYPES)}, got {dtype!r}')
        self.dtype = dtype
        for key, value in (('max_images', max_images), ('interval', interval)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise ValueError(f'OffsetDumpHook: {key} must be a positive integer, got {value!r}')
        self.max_images = max_images
        self.interval = interval
        self.max_bytes = None if max_bytes is None else parse_bytes(max_bytes)
        if not isinstance(resume, bool):
            raise ValueError(f'OffsetDumpHook: resume must be True or False, got {resume!r}')
        self.resume = resume
        self._recorders: List[OffsetRecorder] = []
        self.rank, self.world_size = 0, 1
        self._in_training = False
        self._active = False

    # ----------------------------------------------------------------- runner events
    def before_train(self, runner) -> None:
        self._in_training = True

    def after_train(self, runner) -> None:
        self._in_training = False

    def before_val_epoch(self, runner) -> None:
        self._start(runner, runner.val_loop)

    def before_test_epoch(self, runner) -> None:
        self._start(runner, runner.test_loop)

    def before_val_iter(self, runner, batch_idx, data_batch=None) -> None:
        self._reset_batch()

    def before_test_iter(self, runner, batch_idx, data_batch=None) -> None:
        self._reset_batch()

    def after_val_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self._write_batch(runner, data_batch, outputs)

    def after_test_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self._write_batch(runner, data_batch, outputs)

    def after_val_epoch(self, runner, metrics=None) -> None:
        self._finish(runner)

    def after_test_epoch(self, runner, metrics=None) -> None:
        self._finish(runner)

    # ----------------------------------------------------------------- set-up
    def _run_dir(self, runner) -> Path:
        if not self._in_training:
            return self.out_dir
        from mmengine.runner import EpochBasedTrainLoop
        if isinstance(runner.train_loop, EpochBasedTrainLoop):
            return self.out_dir / f'epoch_{runner.epoch}'
        return self.out_dir / f'iter_{runner.iter}'

    def _start(self, runner, loop) -> None:
        self._stop_recording()
        self.rank, self.world_size = get_dist_info()
        self._recorders = select_offset_layers(runner.model, self.layer_patterns, self.components)
        self.dir = self._run_dir(runner)
        problem = self._prepare_dir()
        # Every rank checks before any rank writes; the reduction doubles as a barrier.
        failed = torch.tensor([int(problem is not None)])
        all_reduce(failed)  # in place; a no-op without distributed
        if problem is not None:
            raise problem
        if int(failed.item()):
            raise RuntimeError(f'OffsetDumpHook: another rank could not use {self.dir}; see its log')
        dataloader = loop.dataloader
        self.dataset_size = len(dataloader.dataset)
        sampler = getattr(dataloader.batch_sampler, 'sampler', None) or dataloader.sampler
        from mmengine.dataset import DefaultSampler
        from torch.utils.data import DistributedSampler
        # These samplers give rank r the global positions r, r + W, r + 2W, ... and pad the
        # end with repeats of the first images: positions >= len(dataset) are repeats.
        self.interleaved = self.world_size == 1 or isinstance(sampler,
                                                              (DefaultSampler, DistributedSampler))
        if not self.interleaved:
            self._log(f'the {type(sampler).__name__} sampler does not say which image each rank '
                      'gets; repeated images are caught when the file already exists, and '
                      'max_images/interval count per rank', 'WARNING')
        self.seen = self.written = self.bytes = self.existing = self.repeats = 0
        self.budget_left = None if self.max_bytes is None else self.max_bytes // self.world_size
        self.budget_hit = False
        self.multi_call_warned = False
        for recorder in self._recorders:
            recorder.attach()
        self._active = True
        self._log(f'recording {len(self._recorders)} layers '
                  f'({", ".join(r.name for r in self._recorders[:3])}'
                  f'{", ..." if len(self._recorders) > 3 else ""}) to {self.dir}')

    def _prepare_dir(self) -> Optional[Exception]:
        """Create the directory and prove it writable; an exception to raise, or None."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            probe = self.dir / f'.write-test.{self.rank}.{os.getpid()}.tmp'
            probe.write_bytes(b'')
            probe.unlink()
        except OSError as e:
            return PermissionError(f'OffsetDumpHook: cannot write offset dumps to {self.dir} '
                                   f'({type(e).__name__}: {e.strerror or e}); choose a writable '
                                   'out_dir')
        if self.resume:
            if self.rank == 0:  # temporary files of an interrupted run: nobody writes yet
                for stale in self.dir.glob('.*.npz.*.tmp'):
                    stale.unlink(missing_ok=True)
            return None
        existing = offset_dump_paths(self.dir)
        if existing:
            return FileExistsError(
                f'OffsetDumpHook: {self.dir} already holds {len(existing)} offset dumps (e.g. '
                f'{existing[0].name}); pass resume=True to keep them and dump only the missing '
                'images, or choose an empty out_dir')
        return None

    # ----------------------------------------------------------------- per batch
    def _reset_batch(self) -> None:
        for recorder in self._recorders:
            recorder.reset()

    def _position(self) -> int:
        """Global position of the next image in the evaluation order (this rank's if unknown)."""
        if self.interleaved:
            return self.seen * self.world_size + self.rank
        return self.seen

    def _write_batch(self, runner, data_batch, outputs) -> None:
        if not self._active:
            return
        samples = outputs if outputs is not None else (data_batch or {}).get('data_samples')
        if not samples:
            return
        if not self.multi_call_warned and any(r.calls > 1 for r in self._recorders):
            self.multi_call_warned = True
            self._log('a layer ran more than once for one batch (test-time augmentation?); '
                      'only its first call is dumped', 'WARNING')
        for recorder in self._recorders:
            ran = recorder.offset_out
            if ran is not None and ran.shape[0] != len(samples):
                raise RuntimeError(
                    f'OffsetDumpHook: layer {recorder.name!r} ran on a batch of {ran.shape[0]} '
                    f'images but the batch has {len(samples)} data samples; this model does not '
                    'run its backbone once per batch, which the hook needs')
        dtype = DTYPES[self.dtype]
        for index, sample in enumerate(samples):
            position = self._position()
            self.seen += 1
            if self.interleaved and position >= self.dataset_size:
                self.repeats += 1  # sampler padding: the image belongs to another rank
                continue
            limit = self.max_images if self.interleaved or self.max_images is None else \
                math.ceil(self.max_images / self.world_size)
            if limit is not None and position >= limit:
                continue
            if position % self.interval or self.budget_hit:
                continue
            meta = image_meta(sample, self.dtype)
            path = offset_dump_path(self.dir, meta['img_id'])
            if path.exists():
                self.existing += 1
                continue
            layers, arrays = {}, {}
            for recorder in self._recorders:
                info, layer_arrays = recorder.fields(index, meta['batch_input_shape'],
                                                     meta['img_shape'], dtype)
                layers[recorder.name] = info
                arrays.update(layer_arrays)
            meta['layers'] = layers
            if self.budget_left is not None:
                estimate = _file_size_bound(meta, arrays)
                if estimate > self.budget_left:
                    self.budget_hit = True
                    self._log(f'byte budget reached (max_bytes={self.max_bytes}, '
                              f'{self.budget_left} bytes left on this rank, the next dump needs '
                              f'~{estimate}); no more offset dumps are written in this run',
                              'WARNING', all_ranks=True)
                    continue
            size = write_offset_dump(path, meta, arrays, exclusive=True)
            if size is None:  # another writer published this image first
                self.existing += 1
                continue
            self.written += 1
            self.bytes += size
            if self.budget_left is not None:
                self.budget_left -= size
        if self.budget_hit or (self.max_images is not None and self.interleaved
                               and self._position() >= self.max_images):
            self._stop_recording()  # nothing further will be written: stop paying for the hooks

    # ----------------------------------------------------------------- tear-down
    def _stop_recording(self) -> None:
        for recorder in self._recorders:
            recorder.detach()

    def _finish(self, runner) -> None:
        if not self._active:
            return
        self._active = False
        self._stop_recording()
        self._recorders = []
        totals = torch.tensor(
            [self.written, self.bytes, self.existing, int(self.budget_hit), self.repeats],
            dtype=torch.float64)
        all_reduce(totals)
        written, size, existing, hit, repeats = (int(v) for v in totals.tolist())
        message = (f'wrote {written} offset dumps ({size / 1e6:.1f} MB, '
                   f'{size / max(written, 1) / 1e6:.2f} MB per image) to {self.dir}')
        if existing:
            message += f'; {existing} images were already dumped and were skipped'
        if hit:
            message += f'; the byte budget stopped {hit} of {self.world_size} ranks early'
        if repeats:
            message += f'; {repeats} repeated images (sampler padding) were not written again'
        self._log(message)

    def _log(self, message: str, level: str = 'INFO', all_ranks: bool = False) -> None:
        if self.world_size > 1:
            if not all_ranks and self.rank != 0:
                return
            message = f'[rank {self.rank}] {message}'
        print_log(f'OffsetDumpHook: {message}', logger='current', level=getattr(logging, level))


def add_offset_dump_hook(cfg, out_dir: str, **options) -> dict:
    """Add (or update) an ``OffsetDumpHook`` in ``cfg.custom_hooks``; returns its config.

    Used by ``tools/test.py --dump-offsets DIR [--dump-options k=v ...]``. The options are checked
    here by building the hook once, so a typo fails before the model is built.
    """
    hook_cfg = dict(type='OffsetDumpHook', out_dir=str(out_dir), **options)
    try:
        OffsetDumpHook(**{k: v for k, v in hook_cfg.items() if k != 'type'})
    except TypeError as e:
        raise ValueError(f'bad --dump-options: {e}') from None
    hooks = list(cfg.get('custom_hooks', None) or [])
    for index, hook in enumerate(hooks):
        if hook.get('type') in ('OffsetDumpHook', OffsetDumpHook):
            hooks[index] = hook_cfg  # the command line wins over the config's own dump hook
            break
    else:
        hooks.append(hook_cfg)
    cfg.custom_hooks = hooks
    return hook_cfg
