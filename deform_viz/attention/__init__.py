"""Deformable attention (mmcv's ``MultiScaleDeformableAttention`` in Deformable DETR and DINO):
recording its sampling points during val/test (:mod:`.recording`), their dump format
(:mod:`.format`, version 2 of :mod:`deform_viz.dump`), reading them back (:mod:`.fields`), and
their statistics against ground truth (:mod:`.analysis`, :mod:`.report`; imported on first use,
as they import :mod:`deform_viz.dump`, which imports this package).
"""
import importlib

from .format import ATTENTION_COMPONENTS, attention_bytes_per_image, encoder_lattice
from .recording import AttentionRecorder, AttentionRecording, DetectionLinker, is_attention, sampling_locations

_LAZY = {
    **dict.fromkeys(('AttentionSettings', 'AttentionLayerAnalysis', 'AttentionImageMeasures', 'match_detections',
                     'measure_attention', 'query_measures', 'attention_across_layers'), '.analysis'),
    **dict.fromkeys(('AttentionMeasurer', 'analyze_attention', 'check_attention_dump', 'decoder_layers',
                     'format_attention_markdown'), '.report'),
}

__all__ = ['ATTENTION_COMPONENTS', 'attention_bytes_per_image', 'encoder_lattice', 'AttentionRecorder',
           'AttentionRecording', 'DetectionLinker', 'is_attention', 'sampling_locations', *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
