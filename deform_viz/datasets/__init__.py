"""The embedded default dataset: synthetic shapes in COCO format (:mod:`.synthetic_coco`), and the
shape crops the CPU detectors' backbone is pretrained on (:mod:`.crops`)."""
from .synthetic_coco import SYNTHETIC_CLASSES, SYNTHETIC_METAINFO, make_synthetic_coco

__all__ = ['SYNTHETIC_CLASSES', 'SYNTHETIC_METAINFO', 'make_synthetic_coco']
