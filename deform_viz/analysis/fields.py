"""One dumped layer as data: the offsets a layer used, and everything derived from them.

:class:`LayerOffsets` wraps the arrays of one layer of one dump (see ``deform_viz.dump``), picks
the offsets the convolution actually sampled with, and computes the quantities of the
"revisiting" paper (d_f, d_k, divergence, kernel extent) and the DCN paper (effective dilation,
sampling positions) through ``deform_viz.ops.offset_fields``, in input-map pixels and, via
:class:`~deform_viz.analysis.geometry.FeatureGeometry`, in original-image pixels.
"""
import os
from functools import cached_property
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch

from ..dump import LayerNotFoundError, match_layer_names, offset_dump_path, offset_dump_paths
from ..ops import offset_fields as of
from .geometry import FeatureGeometry


class OffsetInputError(ValueError):
    """A dump, a layer choice or an annotation file cannot be used as asked."""


def dump_files(path, image_ids: Optional[Sequence] = None, max_images: Optional[int] = None) -> List[Path]:
    """The dump files at ``path`` (one ``.npz`` or a dump directory), in image-id order.

    ``image_ids`` keeps the dumps of those images (looked up where ``deform_viz.dump`` puts
    them), ``max_images`` the first N.
    """
    if os.path.isfile(path):
        files = [Path(path)]
    elif not os.path.isdir(path):
        raise FileNotFoundError(f'offset dump {path!r} does not exist (expected a .npz file or a directory of them)')
    else:
        files = offset_dump_paths(path)
        if not files:
            raise OffsetInputError(f'directory {path!r} holds no offset dumps (*.npz); '
                                   f'make them with tools/test.py CONFIG CHECKPOINT --dump-offsets DIR')
    if image_ids is not None:
        wanted = {offset_dump_path(files[0].parent, i): i for i in image_ids}
        missing = [str(i) for p, i in wanted.items() if p not in files]
        if missing:
            raise OffsetInputError(f'no dump for image id(s) {", ".join(missing)} in {path!r}; it has '
                                   f'{len(files)} dump(s), e.g. {", ".join(f.name for f in files[:5])}')
        files = [f for f in files if f in wanted]
    return files[:max_images]


def _to_torch(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64))


class LayerOffsets:
    """The offsets one layer used on one image, with derived fields.

    Args:
        name: layer name (module path).
        info: the layer's metadata from the dump.
        arrays: component -> array as loaded (``offset`` (G, K*K, 2, H, W), optional
            ``offset_used``, ``mask``).
        meta: the image metadata of the dump.
        source: ``'used'`` (default) takes ``offset_used`` when the layer kept only d_f or d_k
            and ``offset`` otherwise; ``'predicted'`` always takes ``offset``.

    Arrays are numpy float64; shapes use G deform groups, K*K taps and the (H, W) grid.
    Quantities named ``*_image`` are in original-image pixels, ``*_network`` in pixels of the
    image the network saw, the rest in input-map pixels. :meth:`from_fields` builds one from
    in-memory offsets.
    """

    def __init__(self, name: str, info: dict, arrays: dict, meta: dict, source: str = 'used'):
        if source not in ('used', 'predicted'):
            raise ValueError(f"source must be 'used' or 'predicted', got {source!r}")
        key = 'offset_used' if source == 'used' and 'offset_used' in arrays else 'offset'
        if key not in arrays:
            raise OffsetInputError(
                f'layer {name!r} ({info.get("variant", info.get("type", "?"))}) has no data offsets '
                f'in the dump (components: {sorted(arrays)}); figures and statistics need an '
                f"'offset' array (deformable-kernel layers without deform_data only have kernel offsets)")
        fields = np.asarray(arrays[key], dtype=np.float64)
        if fields.ndim != 5 or fields.shape[2] != 2:
            raise OffsetInputError(f'layer {name!r}: {key!r} has shape {fields.shape}, expected (G, K*K, 2, H, W)')
        geometry = FeatureGeometry.from_meta(meta, dict(info, name=name), fields.shape[-2:])
        mask = None if 'mask' not in arrays else np.asarray(arrays['mask'], dtype=np.float64)
        self._set(name, dict(info), meta, fields, geometry, key, mask)

    def _set(self, name, info, meta, fields, geometry, component, mask):
        self.name, self.info, self.meta, self.component = name, info, meta, component
        self.kernel_size, self.dilation = geometry.kernel_size, geometry.dilation
        if fields.shape[1] != self.kernel_size[0] * self.kernel_size[1]:
            raise OffsetInputError(f'layer {name!r}: {component!r} has {fields.shape[1]} taps but kernel_size '
                                   f'{self.kernel_size} needs {self.kernel_size[0] * self.kernel_size[1]}')
        if tuple(fields.shape[-2:]) != tuple(geometry.grid_shape):
            raise OffsetInputError(f'layer {name!r}: fields of grid {fields.shape[-2:]} with a geometry of grid '
                                   f'{geometry.grid_shape}')
        self.fields, self.geometry, self.mask = fields, geometry, mask

    @classmethod
    def from_fields(cls, fields, geometry: FeatureGeometry, name: str = 'layer', image_id=None,
                    info: Optional[dict] = None) -> 'LayerOffsets':
        """One layer from in-memory offsets (numpy or torch) ``(G, K*K, 2, H, W)`` in input-map
        pixels, placed on the image by ``geometry`` (kernel size and dilation included)."""
        if isinstance(fields, torch.Tensor):
            fields = fields.detach().cpu().numpy()
        fields = np.asarray(fields, dtype=np.float64)
        if fields.ndim != 5 or fields.shape[2] != 2:
            raise OffsetInputError(f'layer {name!r}: fields have shape {fields.shape}, expected (G, K*K, 2, H, W)')
        layer = cls.__new__(cls)
        info = dict(info or {}, kernel_size=list(geometry.kernel_size), dilation=list(geometry.dilation),
                    input_stride=list(geometry.input_stride), output_stride=list(geometry.output_stride))
        layer._set(name, info, {'img_id': image_id}, fields, geometry, 'offset', None)
        return layer

    @classmethod
    def from_dump(cls, dump, layer: str, source: str = 'used') -> 'LayerOffsets':
        """The layer named ``layer`` of a loaded dump (``deform_viz.dump.OffsetDump``)."""
        if layer not in dump.layers:
            raise LayerNotFoundError(f'{dump.path}: no layer {layer!r}; '
                                     f'its layers are: {", ".join(dump.layers) or "(none)"}')
        fields = dump.layers[layer]
        return cls(layer, fields.info, fields.arrays, dump.meta, source=source)

    # ------------------------------------------------------------------ identity
    @property
    def image_id(self):
        return self.meta.get('img_id')

    @property
    def num_groups(self) -> int:
        return self.fields.shape[0]

    @property
    def grid_shape(self):
        return self.fields.shape[-2:]

    # ------------------------------------------------------------------ input-pixel quantities
    @cached_property
    def _t(self) -> torch.Tensor:
        return _to_torch(self.fields)

    @cached_property
    def d_f(self) -> np.ndarray:
        """Mean offset over taps (paper Eq. 2), (G, 2, H, W)."""
        return of.offset_df(self._t).numpy()

    @cached_property
    def d_k(self) -> np.ndarray:
        """Offsets minus d_f (Eq. 3), (G, K*K, 2, H, W)."""
        return of.offset_dk(self._t).numpy()

    @cached_property
    def divergence(self) -> np.ndarray:
        """Divergence of d_f (Eq. 4), (G, H, W), dimensionless: d_f in input pixels differentiated
        over input pixels (central differences divided by the output cell spacing in input pixels),
        so layers of every stride share one scale; d_f = -k * (p - p0) gives -2k."""
        cy, cx = self.geometry.conv_stride
        d_f = of.offset_df(self._t)
        return of.divergence(torch.stack([d_f[:, 0] / cy, d_f[:, 1] / cx], dim=1)).numpy()

    @cached_property
    def extent(self):
        """(width, height) of each deformed kernel, each (G, H, W), input pixels."""
        w, h = of.kernel_extent(self._t, self.kernel_size, self.dilation)
        return w.numpy(), h.numpy()

    @cached_property
    def effective_dilation(self) -> np.ndarray:
        """Mean distance between adjacent sampling points (DCN paper), (G, H, W), input pixels."""
        return of.effective_dilation(self._t, self.kernel_size, self.dilation).numpy()

    @cached_property
    def sampling_offsets(self) -> np.ndarray:
        """Sampling positions relative to each location's centre, (G, K*K, 2, H, W), input pixels."""
        return of.sampling_positions(self._t, self.kernel_size, self.dilation).numpy()

    # ------------------------------------------------------------------ image-pixel quantities
    @cached_property
    def d_f_image(self) -> np.ndarray:
        """d_f as displacements on the original image, (G, 2, H, W) (dy, dx) in image pixels."""
        dy, dx = self.geometry.vectors_to_image(self.d_f[:, 0], self.d_f[:, 1])
        return np.stack([dy, dx], axis=1)

    @cached_property
    def radius_network(self) -> np.ndarray:
        """Fig. 3 radius sqrt(width * height) in pixels of the image the network saw, (G, H, W)."""
        width, height = self.extent
        sy, sx = self.geometry.input_stride
        return np.sqrt(np.clip(width * sx * height * sy, 0, None))

    @cached_property
    def radius_image(self) -> np.ndarray:
        """Fig. 3 radius sqrt(width * height) in original-image pixels, (G, H, W); 0 where folded."""
        width, height = self.extent
        h_img, w_img = self.geometry.lengths_to_image(height, width)
        return np.sqrt(np.clip(w_img * h_img, 0, None))

    @cached_property
    def rigid_radius_image(self) -> float:
        """The radius a rigid (zero-offset) kernel of this layer has, in original-image pixels."""
        zero = torch.zeros((1, self.fields.shape[1], 2, 1, 1), dtype=torch.float64)
        w, h = of.kernel_extent(zero, self.kernel_size, self.dilation)
        h_img, w_img = self.geometry.lengths_to_image(h.item(), w.item())
        return float(np.sqrt(max(w_img * h_img, 0.0)))

    @cached_property
    def sampling_image(self) -> np.ndarray:
        """Absolute sampling positions on the original image, (G, K*K, 2, H, W) as (y, x)."""
        rows, cols = np.meshgrid(np.arange(self.grid_shape[0]), np.arange(self.grid_shape[1]), indexing='ij')
        cy, cx = self.geometry.grid_to_input(rows, cols)
        y_in = self.sampling_offsets[:, :, 0] + cy
        x_in = self.sampling_offsets[:, :, 1] + cx
        y, x = self.geometry.input_to_image(y_in, x_in)
        return np.stack([y, x], axis=2)

    @cached_property
    def cell_centres_image(self):
        """(y, x), each (H, W): cell centres on the original image."""
        return self.geometry.cell_centres()


def layer_offsets(dump, patterns=None, source: str = 'used', skip_without_offsets: bool = False) -> List[LayerOffsets]:
    """:class:`LayerOffsets` for the layers of ``dump`` matching ``patterns``.

    With ``skip_without_offsets``, layers that have no data offsets (pure deformable-kernel
    layers) are left out instead of raising, unless that leaves nothing.
    """
    names = match_layer_names(dump.layers, patterns, where=str(dump.path))
    out, skipped = [], []
    for name in names:
        try:
            out.append(LayerOffsets.from_dump(dump, name, source=source))
        except OffsetInputError as e:
            if not skip_without_offsets or 'has no data offsets' not in str(e):
                raise
            skipped.append(str(e))
    if not out:
        raise OffsetInputError('none of the selected layers has data offsets:\n' + '\n'.join(skipped))
    return out


def _bilinear(field: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Sample ``field`` (..., H, W) at fractional (rows, cols) (M,), clamped to the grid: (..., M)."""
    h, w = field.shape[-2:]
    rows, cols = np.clip(rows, 0, h - 1), np.clip(cols, 0, w - 1)
    r0, c0 = np.floor(rows).astype(np.int64), np.floor(cols).astype(np.int64)
    r1, c1 = np.minimum(r0 + 1, h - 1), np.minimum(c0 + 1, w - 1)
    fr, fc = rows - r0, cols - c0
    return (field[..., r0, c0] * (1 - fr) * (1 - fc) + field[..., r0, c1] * (1 - fr) * fc
            + field[..., r1, c0] * fr * (1 - fc) + field[..., r1, c1] * fr * fc)


def stacked_sampling_positions(top: LayerOffsets, below: Sequence[LayerOffsets], row: int, col: int,
                               group: int = 0) -> List[np.ndarray]:
    """Where a location of ``top`` samples the image through a stack of deformable layers.

    ``below`` are the deformable layers feeding ``top``, nearest first, each producing the map
    the previous one reads (its output stride equals that layer's input stride; the 1x1 convs
    of a bottleneck between them do not move positions). Level 0 holds the K*K taps of ``top``
    at cell (row, col); level i holds, for every point of level i-1, the taps of ``below[i-1]``
    there, with that layer's sampling offsets bilinearly interpolated at the fractional position
    (clamped to its grid), as in the DCN paper's Fig. 5/6.

    Returns a list of (M_i, 2) arrays of (y, x) original-image coordinates, M_i = (K*K)^(i+1).
    """
    if not 0 <= group < top.num_groups:
        raise ValueError(f'group {group} does not exist; {top.name} has {top.num_groups} deform group(s)')
    cy, cx = top.geometry.grid_to_input(row, col)
    pos = top.sampling_offsets[group, :, :, row, col] + np.array([cy, cx])   # (K*K, 2) top input px
    levels = [np.stack(top.geometry.input_to_image(pos[:, 0], pos[:, 1]), axis=1)]
    upper = top
    for lower in below:
        if lower.image_id != top.image_id:
            raise OffsetInputError(f'{lower.name} is from image {lower.image_id}, {top.name} from {top.image_id}')
        if lower.geometry.output_stride != upper.geometry.input_stride:
            raise OffsetInputError(
                f'{lower.name} (output stride {lower.geometry.output_stride}) does not produce the map '
                f'{upper.name} reads (input stride {upper.geometry.input_stride}); pass the layers feeding '
                f'each other, nearest first')
        g = min(group, lower.num_groups - 1)
        # upper's input pixels are lower's output cells
        rel = _bilinear(lower.sampling_offsets[g], pos[:, 0], pos[:, 1])      # (K*K, 2, M)
        base_y, base_x = lower.geometry.grid_to_input(pos[:, 0], pos[:, 1])   # (M,) lower input px
        ys = (rel[:, 0] + base_y[None]).T.reshape(-1)                         # (M * K*K,)
        xs = (rel[:, 1] + base_x[None]).T.reshape(-1)
        pos = np.stack([ys, xs], axis=1)
        levels.append(np.stack(lower.geometry.input_to_image(ys, xs), axis=1))
        upper = lower
    return levels


def feeding_layers(dump, top: str, depth: int, source: str = 'used') -> List[LayerOffsets]:
    """Up to ``depth`` layers of ``dump`` that feed ``top`` one after the other, nearest first:
    walking back in the dump's layer order (the model's module order), each the closest earlier
    layer with data offsets, stopping where its output stride is not the input stride of the one
    above. Layers that are not in the dump (rigid convs, unselected layers) are not seen."""
    names = list(dump.layers)
    if top not in names:
        raise LayerNotFoundError(f'{dump.path}: no layer {top!r}; its layers are: {", ".join(names)}')
    chain, upper = [], LayerOffsets.from_dump(dump, top, source)
    for name in reversed(names[:names.index(top)]):
        if len(chain) >= depth:
            break
        try:
            candidate = LayerOffsets.from_dump(dump, name, source)
        except OffsetInputError:
            continue
        if candidate.geometry.output_stride != upper.geometry.input_stride:
            break  # a gap in the stack: composing further would be wrong
        chain.append(candidate)
        upper = candidate
    return chain
