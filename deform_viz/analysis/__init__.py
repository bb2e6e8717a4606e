"""Numbers from offset dumps: geometry between feature grid and image, per-layer fields, and
statistics against COCO ground truth (effective dilation by object size, d_k extent vs object
size, d_f convergence, negative-divergence mask vs objects)."""
from .annotations import (COCO_SIZE_THRESHOLDS, DCN_PAPER_SIZE_THRESHOLDS, SIZE_CLASSES, CocoGroundTruth,
                          ImageObjects, size_class)
from .fields import (LayerNotFoundError, LayerOffsets, OffsetInputError, dump_files, iter_dumps, layer_offsets,
                     match_layers)
from .geometry import FeatureGeometry, GeometryError
from .report import analyze_offsets, format_markdown
from .statistics import REGIONS, AnalysisSettings, ImageTruth, LayerStatistics, spearman, summarize

__all__ = [
    'AnalysisSettings', 'COCO_SIZE_THRESHOLDS', 'CocoGroundTruth', 'DCN_PAPER_SIZE_THRESHOLDS', 'FeatureGeometry',
    'GeometryError', 'ImageObjects', 'ImageTruth', 'LayerNotFoundError', 'LayerOffsets', 'LayerStatistics',
    'OffsetInputError', 'REGIONS', 'SIZE_CLASSES', 'analyze_offsets', 'dump_files', 'format_markdown',
    'iter_dumps', 'layer_offsets', 'match_layers', 'size_class', 'spearman', 'summarize',
]
