"""The one place that maps between a layer's feature grid and image coordinates.

Every figure and every statistic goes through :class:`FeatureGeometry`, so arrows, circles,
masks and box look-ups agree on where a feature location sits in the image.

Coordinate systems
------------------
``grid``      (row, col) integer indices of the layer's *output* feature map.
``input``     (y, x) float positions in pixels of the layer's *input* feature map; this is
              the unit of mmcv offsets. Output cell (r, c) is centred on input position
              ``(r * sy_conv - pad_y + (Kh-1)/2 * dil_y, ...)``, i.e. ``r * conv_stride`` for the
              usual "same" padding (``padding = dilation * (K-1) / 2``).
``network``   continuous coordinates on the image the network saw (resized, possibly
              flipped, before padding): pixel k spans [k, k+1). Input pixel j of a map with
              stride s is centred on image pixel ``j * s`` (true for ResNet's stem, max-pool and
              bottleneck convs with symmetric padding), so ``y_net = y_in * s + 0.5``.
``image``     continuous coordinates on the ORIGINAL image file, the frame of COCO boxes and
              masks. Mapping undoes the flip (mmdet flips after resizing) and the resize:
              ``x_image = x_unflipped / scale_x``.

All figures are drawn in ``image`` coordinates, on the original image file, with
``imshow(extent=(0, width, height, 0))`` so that pixel k spans [k, k+1) there too.
"""
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Optional, Sequence, Tuple

import numpy as np

FLIP_DIRECTIONS = (None, 'horizontal', 'vertical', 'diagonal')


class GeometryError(ValueError):
    """The dump's metadata does not describe a consistent image/feature geometry."""


def _pair(value, what: str) -> Tuple[float, float]:
    if isinstance(value, (int, float)):
        return float(value), float(value)
    try:
        a, b = value
    except (TypeError, ValueError):
        raise GeometryError(f'{what} must be a number or a pair, got {value!r}') from None
    return float(a), float(b)


@dataclass(frozen=True)
class FeatureGeometry:
    """Geometry of one layer of one dumped image.

    Args:
        grid_shape: (H, W) of the stored output fields.
        input_stride: stride of the layer's input map on the network image (pair or number).
        output_stride: stride of the layer's output map (pair or number).
        img_shape: (h, w) of the network image after resizing, before padding.
        ori_shape: (h, w) of the original image file.
        scale_factor: (sx, sy) as mmdet stores it (resized = original * scale).
        flip_direction: None or one of 'horizontal', 'vertical', 'diagonal'.
        kernel_size, dilation, padding: the conv's; ``padding=None`` means "same" padding
            ``dilation * (K - 1) / 2``, the only padding mmdet's ResNet uses.
    """
    grid_shape: Tuple[int, int]
    input_stride: Tuple[float, float]
    output_stride: Tuple[float, float]
    img_shape: Tuple[int, int]
    ori_shape: Tuple[int, int]
    scale_factor: Tuple[float, float]
    flip_direction: Optional[str] = None
    kernel_size: Tuple[int, int] = (3, 3)
    dilation: Tuple[int, int] = (1, 1)
    padding: Optional[Tuple[float, float]] = None

    def __post_init__(self):
        if self.flip_direction not in FLIP_DIRECTIONS:
            raise GeometryError(f'unknown flip_direction {self.flip_direction!r}; '
                                f'expected one of {FLIP_DIRECTIONS}')
        for name in ('input_stride', 'output_stride', 'scale_factor'):
            if min(getattr(self, name)) <= 0:
                raise GeometryError(f'{name} must be positive, got {getattr(self, name)}')

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_meta(cls, meta: dict, layer_info: dict, grid_shape: Sequence[int]) -> 'FeatureGeometry':
        """Build from a dump's image metadata and one layer's metadata (see deform_viz.dump)."""
        def need(mapping, key, where):
            if key not in mapping or mapping[key] is None:
                raise GeometryError(f'{where} has no {key!r}; cannot place the layer on the image')
            return mapping[key]

        name = layer_info.get('name', 'layer')
        img_shape = tuple(int(v) for v in need(meta, 'img_shape', 'image metadata')[:2])
        ori_shape = tuple(int(v) for v in need(meta, 'ori_shape', 'image metadata')[:2])
        scale = meta.get('scale_factor')
        if scale is None:  # no Resize in the pipeline: derive it from the shapes
            scale = (img_shape[1] / ori_shape[1], img_shape[0] / ori_shape[0])
        elif isinstance(scale, (list, tuple)) and len(scale) == 4:  # mmdet 2.x: (sx, sy, sx, sy)
            scale = scale[:2]
        flip_direction = meta.get('flip_direction') if meta.get('flip') else None
        padding = layer_info.get('padding')
        return cls(
            grid_shape=tuple(int(v) for v in grid_shape[-2:]),
            input_stride=_pair(need(layer_info, 'input_stride', f'layer {name!r} metadata'), 'input_stride'),
            output_stride=_pair(need(layer_info, 'output_stride', f'layer {name!r} metadata'), 'output_stride'),
            img_shape=img_shape,
            ori_shape=ori_shape,
            scale_factor=_pair(scale, 'scale_factor')[:2],
            flip_direction=flip_direction,
            kernel_size=tuple(int(v) for v in _pair(layer_info.get('kernel_size', 3), 'kernel_size')),
            dilation=tuple(int(v) for v in _pair(layer_info.get('dilation', 1), 'dilation')),
            padding=None if padding is None else _pair(padding, 'padding'))

    # ------------------------------------------------------------------ helpers
    @property
    def conv_stride(self) -> Tuple[float, float]:
        """Output cells per input pixel: output_stride / input_stride, (y, x)."""
        return (self.output_stride[0] / self.input_stride[0], self.output_stride[1] / self.input_stride[1])

    @property
    def _centre_shift(self) -> Tuple[float, float]:
        """Input position of output cell (0, 0): -pad + (K-1)/2 * dilation (0 for same padding)."""
        if self.padding is None:
            return 0.0, 0.0
        return tuple(-p + (k - 1) / 2 * d for p, k, d in zip(self.padding, self.kernel_size, self.dilation))

    @property
    def image_scale(self) -> Tuple[float, float]:
        """Original-image pixels per input-map pixel along (y, x)."""
        return (self.input_stride[0] / self.scale_factor[1], self.input_stride[1] / self.scale_factor[0])

    def _unflip(self, y_net, x_net):
        h, w = self.img_shape
        if self.flip_direction in ('horizontal', 'diagonal'):
            x_net = w - x_net
        if self.flip_direction in ('vertical', 'diagonal'):
            y_net = h - y_net
        return y_net, x_net

    def _flip_signs(self) -> Tuple[float, float]:
        sy = -1.0 if self.flip_direction in ('vertical', 'diagonal') else 1.0
        sx = -1.0 if self.flip_direction in ('horizontal', 'diagonal') else 1.0
        return sy, sx

    # ------------------------------------------------------------------ forward maps
    def grid_to_input(self, rows, cols):
        """Output cell indices -> centre positions in input pixels (y, x)."""
        (cy, cx), (oy, ox) = self.conv_stride, self._centre_shift
        return np.asarray(rows, np.float64) * cy + oy, np.asarray(cols, np.float64) * cx + ox

    def input_to_image(self, y_in, x_in):
        """Positions in input pixels (e.g. sampling positions) -> original-image coordinates (y, x)."""
        y_net = np.asarray(y_in, np.float64) * self.input_stride[0] + 0.5
        x_net = np.asarray(x_in, np.float64) * self.input_stride[1] + 0.5
        y_net, x_net = self._unflip(y_net, x_net)
        return y_net / self.scale_factor[1], x_net / self.scale_factor[0]

    def grid_to_image(self, rows, cols):
        """Output cell indices -> cell centres in original-image coordinates (y, x)."""
        return self.input_to_image(*self.grid_to_input(rows, cols))

    def cell_centres(self):
        """(y, x) arrays of shape (H, W): every output cell's centre on the original image."""
        rows, cols = np.meshgrid(np.arange(self.grid_shape[0]), np.arange(self.grid_shape[1]), indexing='ij')
        return self.grid_to_image(rows, cols)

    def vectors_to_image(self, dy, dx):
        """Displacements in input pixels (offsets, d_f) -> displacements in original-image pixels."""
        (ky, kx), (sy, sx) = self.image_scale, self._flip_signs()
        return np.asarray(dy, np.float64) * ky * sy, np.asarray(dx, np.float64) * kx * sx

    def lengths_to_image(self, height, width):
        """Extents along y and x in input pixels -> original-image pixels (flip does not change them)."""
        ky, kx = self.image_scale
        return np.asarray(height, np.float64) * ky, np.asarray(width, np.float64) * kx

    # ------------------------------------------------------------------ inverse maps
    def image_to_grid_coords(self, y, x):
        """Original-image coordinates -> fractional output-grid coordinates (rows, cols)."""
        y_net = np.asarray(y, np.float64) * self.scale_factor[1]
        x_net = np.asarray(x, np.float64) * self.scale_factor[0]
        y_net, x_net = self._unflip(y_net, x_net)  # the flip is its own inverse
        (cy, cx), (oy, ox) = self.conv_stride, self._centre_shift
        return (((y_net - 0.5) / self.input_stride[0] - oy) / cy,
                ((x_net - 0.5) / self.input_stride[1] - ox) / cx)

    def image_to_input(self, y, x):
        """Original-image coordinates -> positions in the layer's input-map pixels (y, x)."""
        rows, cols = self.image_to_grid_coords(y, x)
        return self.grid_to_input(rows, cols)

    def image_to_grid(self, y, x):
        """Original-image coordinates -> nearest output cell (rows, cols) and an in-grid flag.

        The dump keeps ``ceil(img_shape / output_stride)`` cells whose centres sit at
        ``stride * index``, so the image's last pixels lie up to one cell beyond the last cell
        centre: points less than one cell beyond the outermost centres belong to the border
        cell (flag True); points further out are clipped to it and flagged False.
        """
        rows_f, cols_f = self.image_to_grid_coords(y, x)
        rows, rows_in = _nearest_cell(rows_f, self.grid_shape[0])
        cols, cols_in = _nearest_cell(cols_f, self.grid_shape[1])
        return rows, cols, rows_in & cols_in

    def pixel_cells(self):
        """For every original-image pixel (centre k + 0.5): its nearest cell and an in-grid flag.

        Returns (rows, cols, inside), each (ori_h, ori_w), read-only and shared by equal
        geometries (layers of one image with the same strides); used to paint per-cell values
        (e.g. the negative-divergence mask) at image resolution.
        """
        return _pixel_cells(self.placement)

    @property
    def placement(self) -> 'FeatureGeometry':
        """The geometry reduced to where its output cells sit on the image: equal for the layers of
        an image that share an output grid (a stride-2 block and the blocks after it), so per-pixel
        work can be shared between them."""
        if self._centre_shift != (0.0, 0.0):
            return self
        return replace(self, input_stride=self.output_stride, padding=None, kernel_size=(1, 1), dilation=(1, 1))

    def to_image_resolution(self, values: np.ndarray, fill=0):
        """Paint a (..., H, W) per-cell array onto the original image (nearest cell; pixels
        outside the grid, which only a dump of a cropped region has, get ``fill``)."""
        values = np.asarray(values)
        if values.shape[-2:] != tuple(self.grid_shape):
            raise GeometryError(f'values of shape {values.shape} do not match the grid {self.grid_shape}')
        rows, cols, inside = self.pixel_cells()
        out = values[..., rows, cols]
        return np.where(inside, out, np.asarray(fill, dtype=out.dtype))

    def sum_over_cells(self, values: np.ndarray) -> np.ndarray:
        """The inverse of painting: the sum of an (ori_h, ori_w) per-pixel array over the pixels
        each cell paints (nearest cell, pixels outside the grid left out), (H, W)."""
        values = np.asarray(values)
        if values.shape != tuple(self.ori_shape):
            raise GeometryError(f'values of shape {values.shape} do not match the image {self.ori_shape}')
        (rows, rows_in), (cols, cols_in) = _pixel_axes(self.placement)
        out = np.zeros(self.grid_shape, dtype=np.result_type(values.dtype, np.int64))
        # a cell's pixels are one run of rows times one run of columns (the map is monotone per axis)
        runs_y, runs_x = _runs(rows, rows_in), _runs(cols, cols_in)
        if runs_y.size and runs_x.size:
            sums = np.add.reduceat(values[rows_in], runs_y, axis=0, dtype=out.dtype)
            sums = np.add.reduceat(sums[:, cols_in], runs_x, axis=1)
            out[np.ix_(rows[rows_in][runs_y], cols[cols_in][runs_x])] = sums
        return out

    def grid_extent_on_image(self):
        """Bounding box (x0, y0, x1, y1) of the feature grid on the original image."""
        h, w = self.grid_shape
        ys, xs = self.grid_to_image(np.array([-0.5, h - 0.5]), np.array([-0.5, w - 0.5]))
        return float(min(xs)), float(min(ys)), float(max(xs)), float(max(ys))

    @property
    def cell_size_on_image(self) -> Tuple[float, float]:
        """Size (y, x) of one output cell in original-image pixels."""
        return (self.output_stride[0] / self.scale_factor[1], self.output_stride[1] / self.scale_factor[0])


def _nearest_cell(coords: np.ndarray, size: int):
    """Fractional grid coordinates along one axis -> nearest cell index (clipped) and an in-grid flag."""
    return np.clip(np.floor(coords + 0.5), 0, size - 1).astype(np.int64), (coords > -1) & (coords < size)


def _runs(index: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Start positions, among the kept entries, of the runs of equal ``index``."""
    kept = index[keep]
    return np.flatnonzero(np.r_[True, kept[1:] != kept[:-1]]) if kept.size else np.zeros(0, np.int64)


@lru_cache(maxsize=16)
def _pixel_axes(geometry: FeatureGeometry):
    """((rows, rows in grid) per pixel row, (cols, cols in grid) per pixel column) of a placement:
    resize and flip act on each axis alone."""
    h, w = geometry.ori_shape
    rows_f, _ = geometry.image_to_grid_coords(np.arange(h) + 0.5, np.zeros(h))
    _, cols_f = geometry.image_to_grid_coords(np.zeros(w), np.arange(w) + 0.5)
    return _nearest_cell(rows_f, geometry.grid_shape[0]), _nearest_cell(cols_f, geometry.grid_shape[1])


@lru_cache(maxsize=16)
def _pixel_cells(geometry: FeatureGeometry):
    h, w = geometry.ori_shape
    (rows, rows_in), (cols, cols_in) = _pixel_axes(geometry)
    out = (np.broadcast_to(rows[:, None], (h, w)), np.broadcast_to(cols[None, :], (h, w)),
           rows_in[:, None] & cols_in[None, :])
    out[2].setflags(write=False)   # the broadcast views are read-only already
    return out
