"""One layer's statistics over many images: per-image measures merged exactly, then tested.

Moments are merged in the order the images are added and the per-object rows are kept (they
are small: a dozen numbers per object), so the result depends only on the images and their
order, never on how the measuring was spread over processes. The tests run once, in
:meth:`LayerAnalysis.result`, on the kept rows.
"""
from typing import Dict, Optional

import numpy as np

from .annotations import SIZE_CLASSES
from .measures import BOX_COLUMNS, REGIONS, AnalysisSettings, LayerImageMeasures
from .statistics import Moments, mean_with_error, permutation_spearman, sign_test, spearman, swapped_region_iou

LAYER_KEYS = ('type', 'variant', 'kernel_size', 'dilation', 'stride', 'input_stride', 'output_stride',
              'deform_groups')
UNITS = {
    'effective_dilation': 'input-map pixels (zero offsets give the dilation); mean ± std over locations',
    'extent_vs_size': 'radius sqrt(width x height) of the deformed kernel and sqrt(box area), both in pixels '
                      'of the image the network saw',
    'inward_df': 'input-map pixels: d_f projected on the direction to the box centre, mean per object',
    'global_shift': 'input-map pixels: the mean d_f of each image',
    'divergence': 'dimensionless: d_f in input-map pixels differentiated over input-map pixels (central '
                  'differences divided by the output cell spacing), the same scale at every stride',
}


def _ratio(num: float, den: float) -> Optional[float]:
    return float(num / den) if den > 0 else None


def _per_object(values: np.ndarray, tie: float = 0.0) -> dict:
    """mean ± standard error, median and the sign test (``|v| <= tie`` are ties) of per-object values."""
    return {**mean_with_error(values), 'median': float(np.median(values)) if values.size else None,
            'sign_test': sign_test(values, tie)}


class LayerAnalysis:
    """Accumulates one layer's :class:`~.measures.LayerImageMeasures` over images.

    Usable on in-memory fields as well as on dumps::

        analysis = LayerAnalysis('probe.dcn1', settings=AnalysisSettings())
        for fields, geometry, objects in images:
            analysis.add(measure_layer(LayerOffsets.from_fields(fields, geometry), objects, analysis.settings))
        numbers = analysis.result()
    """

    def __init__(self, name: str, info: Optional[dict] = None, settings: AnalysisSettings = AnalysisSettings()):
        self.name, self.info, self.settings = name, dict(info or {}), settings
        self.num_images = self.num_objects = 0
        self.dilation = {region: Moments() for region in REGIONS}
        self.divergence = {'objects': Moments(), 'background': Moments()}
        self.shift = {'dy': Moments(), 'dx': Moments(), 'magnitude': Moments()}
        self.pixels = {'intersection': 0, 'predicted': 0, 'truth': 0}
        self.mask_sources = set()
        self._rows = {name: [] for name in BOX_COLUMNS}
        self._regions = []  # per image: (placement, packed region, valid, on_objects, truth)

    def add(self, measures: LayerImageMeasures) -> None:
        self.num_images += 1
        self.num_objects += len(measures.boxes['sqrt_area'])
        for region, moments in measures.dilation.items():
            self.dilation[region] = self.dilation[region].merge(moments)
        for part, moments in measures.divergence.items():
            self.divergence[part] = self.divergence[part].merge(moments)
        dy, dx = measures.shift
        for key, value in (('dy', dy), ('dx', dx), ('magnitude', float(np.hypot(dy, dx)))):
            self.shift[key] = self.shift[key].merge(Moments.of([value]))
        for key, count in measures.pixels.items():
            self.pixels[key] += count
        self.mask_sources.update(measures.mask_source.split('+'))
        for name in BOX_COLUMNS:
            self._rows[name].append(np.asarray(measures.boxes[name]))
        region = measures.region
        if region is not None:  # kept small: a bit and two 16-bit counts per cell
            counts = np.uint16 if max(region.valid.max(initial=0), region.on_objects.max(initial=0)) < 2 ** 16 \
                else np.int64
            self._regions.append((region.placement, np.packbits(region.negative), region.negative.size,
                                  region.valid.astype(counts), region.on_objects.astype(counts), region.truth))

    @property
    def boxes(self) -> Dict[str, np.ndarray]:
        """:data:`~.measures.BOX_COLUMNS` -> (num objects,) over every image added so far."""
        return {name: np.concatenate(rows) if rows else np.zeros(0) for name, rows in self._rows.items()}

    def result(self) -> dict:
        """The layer's numbers, each with its count and, where a test applies, its p-value."""
        boxes = self.boxes
        objects = self.dilation['small'].merge(self.dilation['medium']).merge(self.dilation['large'])
        px = self.pixels
        union = px['predicted'] + px['truth'] - px['intersection']
        return {
            'layer': {key: self.info.get(key) for key in LAYER_KEYS},
            'num_images': self.num_images,
            'num_objects': self.num_objects,
            'effective_dilation': {'unit': UNITS['effective_dilation'], 'objects': objects.summary(),
                                   **{region: m.summary() for region, m in self.dilation.items()}},
            'extent_vs_size': self._extent(boxes),
            'inward_df': self._inward(boxes),
            'global_shift': {'unit': UNITS['global_shift'], 'removed': self.settings.remove_global_shift,
                             **{key: m.summary() for key, m in self.shift.items()}},
            'divergence': {'unit': UNITS['divergence'], **{part: m.summary() for part, m in self.divergence.items()}},
            'negative_divergence_mask': {
                'threshold': self.settings.div_threshold,
                'iou': _ratio(px['intersection'], union), 'precision': _ratio(px['intersection'], px['predicted']),
                'recall': _ratio(px['intersection'], px['truth']), 'pixels': dict(px, union=union),
                'ground_truth': '+'.join(sorted(self.mask_sources - {'none'})) or 'none',
                'num_images': self.num_images, 'null': self._region_null()},
        }

    def _region_null(self) -> dict:
        """The negative-divergence mask's IoU against each region scored on another image's objects."""
        regions = self._regions
        placements = {}
        strata = [placements.setdefault(r[0], len(placements)) for r in regions]
        negative = [np.unpackbits(r[1], count=r[2]).astype(bool) for r in regions]
        return {'what': "each image's region scored on another image's objects (derangements among images "
                        'of the same placement)',
                **swapped_region_iou(negative, [r[3] for r in regions], [r[4] for r in regions],
                                     [r[5] for r in regions], strata, self.settings.permutations, self.settings.seed)}

    def _extent(self, boxes) -> dict:
        size, cells = boxes['sqrt_area_network'], boxes['cells']
        permute = dict(permutations=self.settings.permutations, seed=self.settings.seed)
        centre = permutation_spearman(size, boxes['radius_centre'], **permute)
        return {
            'unit': UNITS['extent_vs_size'],
            'num_objects': int(size.size),
            'cells': Moments.of(cells).summary(),
            'centre': {**centre, 'scipy_p_value': spearman(size, boxes['radius_centre'])['p_value'],
                       'radius': Moments.of(boxes['radius_centre']).summary(),
                       # kernels folded over at the box centre have radius 0 (Fig. 3 draws no circle)
                       'folded_share': float((boxes['radius_centre'] <= 0).mean()) if size.size else None},
            **{f'box_{stat}': {**permutation_spearman(size, boxes[f'radius_{stat}'], strata=cells, **permute),
                               'scipy_p_value': spearman(size, boxes[f'radius_{stat}'])['p_value'],
                               'radius': Moments.of(boxes[f'radius_{stat}']).summary()}
               for stat in ('max', 'mean')},
        }

    def _inward(self, boxes) -> dict:
        eligible = boxes['wide'].astype(bool)
        out = {'unit': UNITS['inward_df'], 'global_shift_removed': self.settings.remove_global_shift,
               'min_object_cells': self.settings.min_object_cells,
               'background_ring': self.settings.background_ring, 'narrow_objects': int((~eligible).sum())}
        for part in ('inward', 'background'):
            has = eligible & (boxes[f'{part}_cells'] > 0)
            values, classes = boxes[f'{part}_df'][has], boxes['size_class'][has]
            out['objects' if part == 'inward' else 'background'] = {
                **_per_object(values, self.settings.inward_tie), 'cells': int(boxes[f'{part}_cells'][has].sum()),
                'by_size': {name: _per_object(values[classes == k], self.settings.inward_tie)
                            for k, name in enumerate(SIZE_CLASSES)}}
        both = eligible & (boxes['inward_cells'] > 0) & (boxes['background_cells'] > 0)
        out['objects_minus_background'] = _per_object(boxes['inward_df'][both] - boxes['background_df'][both],
                                                      self.settings.inward_tie)
        return out
