"""``OffsetDumpHook``: record the offset fields of deformable layers while a detector is evaluated.

Enable it from a config or from ``tools/test.py --dump-offsets DIR``::

    custom_hooks = [dict(type='OffsetDumpHook', out_dir='work_dirs/offsets')]

In ``before_{val,test}_epoch`` it attaches forward hooks to the selected layers (and to their offset
predictors), keeps the predictor outputs of each batch (nothing is recomputed), and in
``after_{val,test}_iter`` writes one file per image in the format of :mod:`deform_viz.dump`. The
forward hooks are removed after the epoch; a runner without this hook pays nothing.
"""
import logging
import math
import os
import re
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from mmengine.dist import all_reduce, get_dist_info
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.registry import HOOKS

from ..dump import (COMPONENTS, check_layer_patterns, dump_size_bound, image_meta, offset_dump_path,
                    offset_dump_paths, write_offset_dump)
from ..attention.recording import DECODER_QUERIES
from .recording import LayerRecording

DEFAULT_COMPONENTS = ('offset', 'offset_used', 'mask', 'kernel_offset', 'd_f', 'divergence')
DTYPES = {'float16': np.float16, 'float32': np.float32}
_UNITS = {'': 1, 'B': 1, 'K': 1e3, 'KB': 1e3, 'M': 1e6, 'MB': 1e6, 'G': 1e9, 'GB': 1e9,
          'KIB': 2**10, 'MIB': 2**20, 'GIB': 2**30, 'T': 1e12, 'TB': 1e12}


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


@HOOKS.register_module()
class OffsetDumpHook(Hook):
    """Write the offset fields of deformable layers to ``out_dir`` during val/test.

    Args:
        out_dir (str): Directory of the dump files (created; relative paths are relative to the
            working directory). When the val loop runs inside training, each evaluation goes to
            ``out_dir/epoch_<n>`` (or ``iter_<n>`` for iteration-based training).
        layers (str | list[str], optional): Layer patterns (:func:`deform_viz.dump.match_layer_names`:
            ``'backbone.layer4.*'``, ``'re:backbone\\.layer3\\.[05]\\.conv2'``, ``'layer3'``) on
            the names of ``model.named_modules()``, layers stored in pattern order. Only deformable
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
        encoder_stride (int): ``MultiScaleDeformableAttention`` over the feature maps (the
            encoders of Deformable DETR and DINO): store the queries of every ``encoder_stride``-th
            cell of each level in both directions; 1 stores the full field (docs/attention.md).
        decoder_queries (str): attention of the object queries: ``'all'`` (default) stores every
            query, ``'detections'`` those that produced a detection.

    The layer patterns select attention modules too; by default every one is recorded, with the
    detections and the query of each (format version 2, :mod:`deform_viz.attention.format`).
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
                 resume: bool = False,
                 encoder_stride: int = 8,
                 decoder_queries: str = 'all') -> None:
        if not isinstance(out_dir, (str, os.PathLike)) or not str(out_dir):
            raise ValueError(f'OffsetDumpHook: out_dir must be a directory path, got {out_dir!r}')
        self.out_dir = Path(out_dir)
        try:
            check_layer_patterns(layers)
        except ValueError as e:
            raise ValueError(f'OffsetDumpHook: {e}') from None
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
        if isinstance(encoder_stride, bool) or not isinstance(encoder_stride, int) or encoder_stride < 1:
            raise ValueError(f'OffsetDumpHook: encoder_stride must be a positive integer, got {encoder_stride!r}')
        if decoder_queries not in DECODER_QUERIES:
            raise ValueError(f'OffsetDumpHook: decoder_queries must be one of {list(DECODER_QUERIES)}, '
                             f'got {decoder_queries!r}')
        self.recording = LayerRecording('OffsetDumpHook', layers, self.components,
                                        attention=dict(encoder_stride=encoder_stride,
                                                       decoder_queries=decoder_queries))
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
        self.recording.reset()

    def before_test_iter(self, runner, batch_idx, data_batch=None) -> None:
        self.recording.reset()

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
        self.rank, self.world_size = get_dist_info()
        self.recording.start(runner.model)  # before the directory: a bad pattern creates nothing
        self.dir = self._run_dir(runner)
        problem = self._prepare_dir()
        # Every rank checks before any rank writes; the reduction doubles as a barrier.
        failed = torch.tensor([int(problem is not None)])
        all_reduce(failed)  # in place; a no-op without distributed
        if problem is not None or int(failed.item()):
            self.recording.stop()
            raise problem or RuntimeError(f'OffsetDumpHook: another rank could not use {self.dir}; '
                                          'see its log')
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
        self.multi_call_warned = self.unlinked_warned = False
        self._active = True
        names = [r.name for r in self.recording] + [r.name for r in self.recording.attention]
        self._log(f'recording {len(names)} layers ({", ".join(names[:3])}'
                  f'{", ..." if len(names) > 3 else ""}) to {self.dir}')

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
        recorders = list(self.recording) + list(self.recording.attention)
        if not self.multi_call_warned and any(r.calls > 1 for r in recorders):
            self.multi_call_warned = True
            self._log('a layer ran more than once for one batch (test-time augmentation?); '
                      'only its first call is dumped', 'WARNING')
        for recorder in recorders:
            if recorder.batch_size not in (None, len(samples)):
                raise RuntimeError(
                    f'OffsetDumpHook: layer {recorder.name!r} ran on a batch of {recorder.batch_size} '
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
            for recorder in self.recording:
                info, fields = recorder.image_fields(index, meta['batch_input_shape'],
                                                     meta['img_shape'])
                layers[recorder.name] = info
                arrays.update({f'{recorder.name}/{c}': t.cpu().numpy().astype(dtype)
                               for c, t in fields.items()})
            meta['layers'] = layers
            if len(self.recording.attention):
                meta['attention'], meta['detections'], attention_arrays, linked = \
                    self.recording.attention.image_arrays(index, sample, meta, dtype)
                arrays.update(attention_arrays)
                if not linked and not self.unlinked_warned:
                    self.unlinked_warned = True
                    self._log('could not tell which decoder query produced each detection (no DETR head '
                              'or its detections differ from its top-k); their queries are stored as -1',
                              'WARNING')
            if self.budget_left is not None:
                estimate = dump_size_bound(meta, arrays)
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
            self.recording.stop()  # nothing further will be written: stop paying for the hooks

    # ----------------------------------------------------------------- tear-down
    def _finish(self, runner) -> None:
        if not self._active:
            return
        self._active = False
        self.recording.stop()
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
