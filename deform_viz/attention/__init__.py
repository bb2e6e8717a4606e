"""Deformable attention (mmcv's ``MultiScaleDeformableAttention`` in Deformable DETR and DINO):
recording its sampling points during val/test (:mod:`.recording`), their dump format
(:mod:`.format`, version 2 of :mod:`deform_viz.dump`) and reading them back (:mod:`.fields`).
"""
from .format import ATTENTION_COMPONENTS, attention_bytes_per_image, encoder_lattice
from .recording import AttentionRecorder, AttentionRecording, DetectionLinker, is_attention, sampling_locations

__all__ = ['ATTENTION_COMPONENTS', 'attention_bytes_per_image', 'encoder_lattice', 'AttentionRecorder',
           'AttentionRecording', 'DetectionLinker', 'is_attention', 'sampling_locations']
