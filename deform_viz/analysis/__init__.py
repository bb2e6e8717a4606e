"""Numbers from offset fields against ground truth: effective dilation by object size, d_k
extent vs object size, inward d_f, divergence and its mask, with the tests that go with them.

Layers: :mod:`.geometry` (grid <-> image), :mod:`.fields` (one layer's offsets and derived
fields), :mod:`.annotations` (objects of an image), :mod:`.measures` (one layer on one image),
:mod:`.accumulate` (over images, tested), :mod:`.report` (a dump directory, in parallel).
:func:`measure_layer` and :class:`LayerAnalysis` work on in-memory fields as well as on dumps.
"""
from ..dump import LayerNotFoundError
from .accumulate import UNITS, LayerAnalysis
from .annotations import (COCO_SIZE_THRESHOLDS, DCN_PAPER_SIZE_THRESHOLDS, SIZE_CLASSES, CocoGroundTruth,
                          ImageObjects, size_class)
from .fields import LayerOffsets, OffsetInputError, dump_files, layer_offsets
from .geometry import FeatureGeometry, GeometryError
from .measures import REGIONS, AnalysisSettings, ImageTruth, LayerImageMeasures, measure_layer
from .report import (across_layers, analyze_offsets, format_markdown, headline, measure_dumps, report_figure_dir,
                     write_report)
from .statistics import Moments, holm, mean_with_error, permutation_spearman, sign_test, spearman, summarize

__all__ = [
    'AnalysisSettings', 'COCO_SIZE_THRESHOLDS', 'CocoGroundTruth', 'DCN_PAPER_SIZE_THRESHOLDS', 'FeatureGeometry',
    'GeometryError', 'ImageObjects', 'ImageTruth', 'LayerAnalysis', 'LayerImageMeasures', 'LayerNotFoundError',
    'LayerOffsets', 'Moments', 'OffsetInputError', 'REGIONS', 'SIZE_CLASSES', 'UNITS', 'across_layers',
    'analyze_offsets', 'dump_files', 'format_markdown', 'headline', 'holm', 'layer_offsets', 'mean_with_error',
    'measure_dumps', 'measure_layer', 'permutation_spearman', 'report_figure_dir', 'sign_test', 'size_class',
    'spearman', 'summarize', 'write_report',
]
