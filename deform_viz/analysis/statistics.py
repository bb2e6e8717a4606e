"""Statistics of offset fields against COCO ground truth, accumulated over dumped images.

Definitions (all distances in original-image pixels unless stated):

* A feature location belongs to the smallest non-crowd box containing its cell centre; it is
  *background* when no box (crowd or not) contains it; locations only inside crowd regions
  are left out.
* Size classes use sqrt(box width x box height) against two thresholds (COCO: 32, 96).
* **Effective dilation** (DCN paper, Table 2): mean distance between horizontally and
  vertically adjacent sampling points, in pixels of the layer's input map, so zero offsets
  give the layer's dilation. With G deform groups, the G filters at a location are G samples.
* **d_k extent vs object size**: per object, the Fig. 3 radius sqrt(width x height) (mean over
  groups) at the cell nearest the box centre, and the largest radius among cells whose centre
  is inside the box (the centre cell when none is); Spearman correlation with sqrt(box area).
* **d_f convergence**: mean divergence of d_f (input pixels per output cell) in boxes vs
  background; fraction of in-box locations whose d_f has a positive component towards the
  centre of their box, skipping the cell at the centre and displacements shorter than
  ``min_displacement`` input pixels.
* **Negative-divergence mask**: cells with mean (over groups) divergence below
  ``div_threshold``, painted at image resolution with the nearest-cell rule, against the union
  of GT masks (or boxes); crowd-only pixels are ignored; IoU, precision and recall are pooled
  over all pixels of all images.
"""
import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from .annotations import BACKGROUND, COCO_SIZE_THRESHOLDS, SIZE_CLASSES, ImageObjects, size_class
from .fields import LayerOffsets

REGIONS = SIZE_CLASSES + ('background',)


@dataclass
class AnalysisSettings:
    size_thresholds: Sequence[float] = COCO_SIZE_THRESHOLDS
    div_threshold: float = 0.0
    min_displacement: float = 0.01
    mask_source: str = 'auto'


def summarize(values) -> Dict[str, Optional[float]]:
    """mean, std (population) and count of a 1-d sample; None for an empty sample."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        return {'mean': None, 'std': None, 'count': 0}
    return {'mean': float(values.mean()), 'std': float(values.std()), 'count': int(values.size)}


def spearman(x, y) -> Dict[str, Optional[float]]:
    """Spearman's rho and its p-value; None when fewer than 3 pairs or a constant input."""
    from scipy.stats import spearmanr
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {'rho': None, 'p_value': None, 'count': int(x.size)}
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        result = spearmanr(x, y)
    rho, p = float(result[0]), float(result[1])
    return {'rho': None if np.isnan(rho) else rho, 'p_value': None if np.isnan(p) else p, 'count': int(x.size)}


def _ratio(num: float, den: float) -> Optional[float]:
    return float(num / den) if den > 0 else None


@dataclass
class ImageTruth:
    """Ground truth of one image prepared once for all layers."""
    objects: ImageObjects
    object_mask: np.ndarray
    crowd_mask: np.ndarray
    mask_source: str

    @classmethod
    def build(cls, objects: ImageObjects, mask_source: str = 'auto') -> 'ImageTruth':
        obj, crowd, used = objects.object_mask(mask_source)
        return cls(objects, obj, crowd, used)


@dataclass
class LayerStatistics:
    """Accumulates one layer's statistics over images; :meth:`result` gives the numbers."""
    name: str
    info: dict
    settings: AnalysisSettings = field(default_factory=AnalysisSettings)
    _dilation: Dict[str, List[np.ndarray]] = field(default_factory=lambda: {r: [] for r in REGIONS})
    _div_in: List[np.ndarray] = field(default_factory=list)
    _div_bg: List[np.ndarray] = field(default_factory=list)
    _cosines: List[np.ndarray] = field(default_factory=list)
    _toward_skipped: int = 0
    _sizes: List[float] = field(default_factory=list)
    _r_centre: List[float] = field(default_factory=list)
    _r_largest: List[float] = field(default_factory=list)
    _pixels: Dict[str, int] = field(default_factory=lambda: dict(intersection=0, predicted=0, truth=0))
    _mask_sources: set = field(default_factory=set)
    _num_images: int = 0
    _num_objects: int = 0

    def add(self, layer: LayerOffsets, truth: ImageTruth) -> None:
        objects, geom = truth.objects, layer.geometry
        ys, xs = layer.cell_centres_image
        owner = objects.assign(ys, xs)                                   # (H, W)
        self._num_images += 1
        self._num_objects += objects.num_objects

        # effective dilation by region
        classes = size_class(objects.sqrt_areas, self.settings.size_thresholds)
        eff = layer.effective_dilation                                  # (G, H, W)
        region_of = np.full(owner.shape, -1)                          # -1: not an object location
        region_of[owner >= 0] = classes[owner[owner >= 0]]
        for k, region in enumerate(SIZE_CLASSES):
            self._dilation[region].append(eff[:, region_of == k].ravel())
        self._dilation['background'].append(eff[:, owner == BACKGROUND].ravel())

        # divergence in boxes vs background
        div = layer.divergence
        self._div_in.append(div[:, owner >= 0].ravel())
        self._div_bg.append(div[:, owner == BACKGROUND].ravel())

        # does d_f point towards the centre of the location's box?
        if objects.num_objects:
            centres = objects.centres                                   # (N, 2) y, x
            inbox = owner >= 0
            to_y = centres[owner[inbox], 0] - ys[inbox]
            to_x = centres[owner[inbox], 1] - xs[inbox]
            cell_h, cell_w = geom.cell_size_on_image
            at_centre = (np.abs(to_y) <= cell_h / 2) & (np.abs(to_x) <= cell_w / 2)
            dfy, dfx = layer.d_f_image[:, 0][:, inbox], layer.d_f_image[:, 1][:, inbox]   # (G, M)
            min_len = self.settings.min_displacement * float(np.mean(geom.image_scale))
            norm_df = np.hypot(dfy, dfx)
            norm_to = np.hypot(to_y, to_x)
            keep = (norm_df >= min_len) & ~at_centre[None]
            cos = (dfy * to_y + dfx * to_x) / np.maximum(norm_df * norm_to, 1e-12)
            self._cosines.append(cos[keep])
            self._toward_skipped += int((~keep).sum())

            # d_k extent at the box centre and the largest one in the box
            radius = layer.radius_image.mean(0)                         # (H, W)
            rows, cols, inside = geom.image_to_grid(centres[:, 0], centres[:, 1])
            for i, box in enumerate(objects.boxes):
                if not inside[i]:
                    continue
                in_box = (xs >= box[0]) & (xs < box[2]) & (ys >= box[1]) & (ys < box[3])
                r_centre = radius[rows[i], cols[i]]
                self._sizes.append(float(objects.sqrt_areas[i]))
                self._r_centre.append(float(r_centre))
                self._r_largest.append(float(radius[in_box].max()) if in_box.any() else float(r_centre))

        # negative-divergence mask against the objects
        negative = div.mean(0) < self.settings.div_threshold
        predicted = geom.to_image_resolution(negative, fill=False)
        valid = ~truth.crowd_mask
        self._pixels['intersection'] += int((predicted & truth.object_mask & valid).sum())
        self._pixels['predicted'] += int((predicted & valid).sum())
        self._pixels['truth'] += int((truth.object_mask & valid).sum())
        self._mask_sources.update(truth.mask_source.split('+'))

    def result(self) -> dict:
        cos = np.concatenate(self._cosines) if self._cosines else np.zeros(0)
        px = self._pixels
        union = px['predicted'] + px['truth'] - px['intersection']
        layer_info = {k: self.info.get(k) for k in ('type', 'variant', 'kernel_size', 'dilation', 'stride',
                                                    'input_stride', 'output_stride', 'deform_groups')}
        return {
            'layer': layer_info,
            'num_images': self._num_images,
            'num_objects': self._num_objects,
            'effective_dilation': {
                'unit': 'input-map pixels (zero offsets give the dilation)',
                **{r: summarize(np.concatenate(self._dilation[r])) for r in REGIONS}},
            'extent_vs_size': {
                'unit': 'radius sqrt(width x height) and sqrt(box area) in image pixels',
                'num_objects': len(self._sizes),
                'radius_at_centre': summarize(self._r_centre),
                'largest_radius': summarize(self._r_largest),
                'spearman_centre': spearman(self._sizes, self._r_centre),
                'spearman_largest': spearman(self._sizes, self._r_largest)},
            'divergence': {
                'unit': 'input-map pixels per output cell',
                'in_boxes': summarize(np.concatenate(self._div_in) if self._div_in else []),
                'background': summarize(np.concatenate(self._div_bg) if self._div_bg else [])},
            'towards_centre': {
                'fraction': float((cos > 0).mean()) if cos.size else None,
                'mean_cosine': float(cos.mean()) if cos.size else None,
                'count': int(cos.size),
                'skipped': self._toward_skipped},
            'negative_divergence_mask': {
                'iou': _ratio(px['intersection'], union),
                'precision': _ratio(px['intersection'], px['predicted']),
                'recall': _ratio(px['intersection'], px['truth']),
                'pixels': dict(px, union=union),
                'ground_truth': '+'.join(sorted(self._mask_sources - {'none'})) or 'none',
                'num_images': self._num_images},
        }
