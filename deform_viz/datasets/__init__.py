"""The embedded default dataset: synthetic shapes in COCO format (see :mod:`.synthetic_coco`)."""
from .synthetic_coco import SYNTHETIC_CLASSES, SYNTHETIC_METAINFO, make_synthetic_coco

__all__ = ['SYNTHETIC_CLASSES', 'SYNTHETIC_METAINFO', 'make_synthetic_coco']
