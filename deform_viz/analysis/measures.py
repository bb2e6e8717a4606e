"""What one layer's offsets show on one image: the per-image half of every statistic.

:func:`measure_layer` takes a :class:`~.fields.LayerOffsets` (from a dump, or built from
in-memory fields with ``LayerOffsets.from_fields``) and the image's :class:`~.annotations.ImageObjects`,
and returns a :class:`LayerImageMeasures`: moments per region and one row per object, small and
mergeable, so that :class:`~.accumulate.LayerAnalysis` can combine any number of images exactly.

Definitions (units as in the report's ``units``):

* A cell belongs to the smallest box containing its centre (``region``: the box's size class);
  *background* is outside every box and crowd region. Size classes use sqrt(box area) in
  original-image pixels (COCO's convention).
* **Effective dilation** (DCN paper, Table 2): mean distance between adjacent sampling points in
  input-map pixels (zero offsets give the dilation); each deform group counts as a sample.
* **d_k extent vs size**: the Fig. 3 radius sqrt(width x height) (mean over groups) and
  sqrt(box area), both in pixels of the image the network saw, so that images resized by
  different factors compare. Per box: the radius at the cell nearest the box centre, and the
  maximum and mean over the cells whose centre is inside the box (the centre cell when none is),
  with that number of cells.
* **Inward d_f**: d_f (mean over groups, input-map pixels, the image's mean d_f removed first
  when ``remove_global_shift``) projected on the unit vector from the cell towards its object's
  box centre, averaged per object over the cells of its mask (its box without one), the centre
  cell excluded. Objects narrower than ``min_object_cells`` cells along x or y are flagged
  (``wide`` False). The control: the same over the background cells whose nearest box is that
  object's, within ``background_ring`` x sqrt(box area) of it.
* **Divergence** of d_f, dimensionless (see :attr:`~.fields.LayerOffsets.divergence`).
* **Negative-divergence mask**: cells with mean divergence below ``div_threshold`` painted at
  image resolution (nearest cell), counted against the union of the object masks; pixels only in
  crowd regions are left out. Its null scores each image's region against the objects of another
  image with the same placement (:func:`~.statistics.swapped_region_iou`).
"""
from dataclasses import asdict, dataclass
from typing import Dict, Optional, Tuple, Union

import numpy as np

from .annotations import BACKGROUND, COCO_SIZE_THRESHOLDS, SIZE_CLASSES, ImageObjects, size_class
from .fields import LayerOffsets
from .geometry import FeatureGeometry
from .statistics import Moments

REGIONS = SIZE_CLASSES + ('background',)
MASK_SOURCES = ('auto', 'masks', 'boxes')
#: the per-object columns of :attr:`LayerImageMeasures.boxes`
BOX_COLUMNS = ('sqrt_area', 'sqrt_area_network', 'size_class', 'cells', 'radius_centre', 'radius_max',
               'radius_mean', 'wide', 'inward_df', 'inward_cells', 'background_df', 'background_cells')


@dataclass(frozen=True)
class AnalysisSettings:
    """Choices of the analysis; every one is recorded in the report."""
    size_thresholds: Tuple[float, float] = COCO_SIZE_THRESHOLDS
    mask_source: str = 'auto'
    min_object_cells: float = 3.0
    remove_global_shift: bool = True
    background_ring: float = 0.5
    div_threshold: float = 0.0
    inward_tie: float = 1e-3  # input px: a smaller mean inward d_f of an object is a tie in the sign test
    permutations: int = 999
    seed: int = 0

    def __post_init__(self):
        lo, hi = self.size_thresholds
        if not 0 < lo < hi:
            raise ValueError(f'size thresholds must satisfy 0 < small < large, got {tuple(self.size_thresholds)}')
        if self.mask_source not in MASK_SOURCES:
            raise ValueError(f'mask_source must be one of {MASK_SOURCES}, got {self.mask_source!r}')
        if self.min_object_cells < 1:
            raise ValueError(f'min_object_cells must be at least 1, got {self.min_object_cells}')
        if self.background_ring <= 0:
            raise ValueError(f'background_ring must be positive, got {self.background_ring}')
        if self.permutations < 1:
            raise ValueError(f'permutations must be at least 1, got {self.permutations}')
        if not self.inward_tie >= 0:
            raise ValueError(f'inward_tie must be non-negative, got {self.inward_tie}')

    def as_dict(self) -> dict:
        return dict(asdict(self), size_thresholds=list(self.size_thresholds))


class ImageTruth:
    """An image's objects prepared once for all of its layers: the union of the object masks, and
    per output grid the number of valid and of object pixels that each cell paints."""

    def __init__(self, objects: ImageObjects):
        self.objects = objects
        self.object_pixels = objects.union_mask()
        self.valid_pixels = ~(objects.crowd_mask() & ~self.object_pixels)
        self.num_object_pixels = int(self.object_pixels.sum())
        self._counts = {}

    def cell_pixel_counts(self, geometry: FeatureGeometry) -> Tuple[np.ndarray, np.ndarray]:
        """(valid, on objects) pixel counts per cell, each (H * W,)."""
        key = geometry.placement
        if key not in self._counts:
            if tuple(geometry.ori_shape) != self.object_pixels.shape:
                raise ValueError(f'image {self.objects.image_id}: the layer is placed on a {geometry.ori_shape} '
                                 f'image, the annotations are {self.object_pixels.shape} (h, w)')
            self._counts[key] = (geometry.sum_over_cells(self.valid_pixels).ravel(),
                                 geometry.sum_over_cells(self.object_pixels).ravel())
        return self._counts[key]


@dataclass
class LayerImageMeasures:
    """One layer on one image.

    dilation: region -> Moments of the effective dilation (input px); divergence: 'objects' /
    'background' -> Moments (dimensionless); shift: the image's mean d_f (dy, dx) in input px;
    boxes: :data:`BOX_COLUMNS` -> (N,) per object whose centre lies on the grid; pixels: counts
    of the negative-divergence mask ('intersection', 'predicted', 'truth'); mask_source: what
    the object cells came from ('masks', 'boxes', 'masks+boxes', 'none'); region: the mask per
    cell, for the null that scores it against other images' objects.
    """
    dilation: Dict[str, Moments]
    divergence: Dict[str, Moments]
    shift: Tuple[float, float]
    boxes: Dict[str, np.ndarray]
    pixels: Dict[str, int]
    mask_source: str
    region: Optional['RegionCells'] = None


@dataclass(frozen=True)
class RegionCells:
    """The negative-divergence region of one layer on one image, per output cell (H * W,):
    ``negative`` (bool), the ``valid`` and ``on_objects`` pixel counts each cell paints, and the
    image's object pixels (``truth``). ``placement`` (hashable) says where the cells sit on the
    image: two images' regions are scored against each other's objects only when it is equal."""
    placement: object
    negative: np.ndarray
    valid: np.ndarray
    on_objects: np.ndarray
    truth: int


def measure_layer(layer: LayerOffsets, objects: Union[ImageObjects, ImageTruth],
                  settings: AnalysisSettings = AnalysisSettings()) -> LayerImageMeasures:
    """Measure one layer of one image (see the module docstring for the definitions)."""
    truth = objects if isinstance(objects, ImageTruth) else ImageTruth(objects)
    objects, geom = truth.objects, layer.geometry
    ys, xs = geom.cell_centres()                                        # (H, W) image px
    owner = objects.assign(ys, xs)
    classes = size_class(objects.sqrt_areas, settings.size_thresholds)
    region = np.full(owner.shape, -1)
    region[owner >= 0] = classes[owner[owner >= 0]]

    eff, div = layer.effective_dilation, layer.divergence                # (G, H, W)
    dilation = {name: Moments.of(eff[:, region == k]) for k, name in enumerate(SIZE_CLASSES)}
    dilation['background'] = Moments.of(eff[:, owner == BACKGROUND])
    divergence = {'objects': Moments.of(div[:, owner >= 0]), 'background': Moments.of(div[:, owner == BACKGROUND])}

    d_f = layer.d_f.mean(0)                                              # (2, H, W) input px
    shift = d_f.mean(axis=(1, 2))
    if settings.remove_global_shift:
        d_f = d_f - shift[:, None, None]

    valid, on_objects = truth.cell_pixel_counts(geom)
    negative = (div.mean(0) < settings.div_threshold).ravel()
    pixels = {'intersection': int(on_objects[negative].sum()), 'predicted': int(valid[negative].sum()),
              'truth': truth.num_object_pixels}
    region_cells = RegionCells(geom.placement, negative, valid, on_objects, truth.num_object_pixels)
    return LayerImageMeasures(dilation, divergence, (float(shift[0]), float(shift[1])),
                              _box_rows(layer, objects, d_f, owner, classes, settings), pixels, objects.mask_source,
                              region_cells)


def _box_rows(layer: LayerOffsets, objects: ImageObjects, d_f: np.ndarray, owner: np.ndarray,
              classes: np.ndarray, settings: AnalysisSettings) -> Dict[str, np.ndarray]:
    """The per-object columns of :data:`BOX_COLUMNS` for the objects whose centre is on the grid."""
    geom = layer.geometry
    centres = objects.centres
    rows, cols, on_grid = geom.image_to_grid(centres[:, 0], centres[:, 1])
    keep = np.flatnonzero(on_grid)
    out = {name: np.zeros(len(keep)) for name in BOX_COLUMNS}
    if not len(keep):
        return out
    ys, xs = geom.cell_centres()
    in_box = objects.box_contains(ys, xs)[keep]                         # (n, H, W)
    mask_owner = objects.assign(ys, xs, use_masks=True)
    distance = objects.distance_to_boxes(ys, xs)                        # (N, H, W) image px
    nearest, gap = distance.argmin(0), distance.min(0)

    # unit vectors from every cell towards every kept object's centre, in input-map pixels
    grid_r, grid_c = np.mgrid[0:geom.grid_shape[0], 0:geom.grid_shape[1]]
    py, px = geom.grid_to_input(grid_r, grid_c)
    cy, cx = geom.image_to_input(centres[keep, 0], centres[keep, 1])
    to_y, to_x = cy[:, None, None] - py, cx[:, None, None] - px         # (n, H, W)
    inward = (d_f[0] * to_y + d_f[1] * to_x) / np.maximum(np.hypot(to_y, to_x), 1e-12)

    radius = layer.radius_network.mean(0)                               # (H, W) network px
    box = objects.boxes[keep]
    cell_h, cell_w = geom.cell_size_on_image
    sqrt_area = objects.sqrt_areas[keep]
    sx, sy = geom.scale_factor
    out.update(sqrt_area=sqrt_area, sqrt_area_network=sqrt_area * np.sqrt(sx * sy), size_class=classes[keep],
               wide=((box[:, 2] - box[:, 0]) / cell_w >= settings.min_object_cells)
               & ((box[:, 3] - box[:, 1]) / cell_h >= settings.min_object_cells))
    for j, i in enumerate(keep):
        centre = rows[i], cols[i]
        cells = radius[in_box[j]]
        out['cells'][j] = cells.size
        cells = cells if cells.size else radius[centre][None]
        out['radius_centre'][j], out['radius_max'][j], out['radius_mean'][j] = radius[centre], cells.max(), cells.mean()
        own = mask_owner == i
        own[centre] = False
        ring = (owner == BACKGROUND) & (nearest == i) & (gap <= settings.background_ring * sqrt_area[j])
        for name, where in (('inward', own), ('background', ring)):
            values = inward[j][where]
            out[f'{name}_cells'][j] = values.size
            out[f'{name}_df'][j] = values.mean() if values.size else np.nan
    return out
