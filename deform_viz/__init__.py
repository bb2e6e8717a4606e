"""deform-viz: deformable convolution variants, offset dumps and offset figures for MMDetection 3.x.

Importing the package checks the OpenMMLab stack and registers every layer, hook, metric and
checkpoint scheme, so a config only needs ``custom_imports = dict(imports=['deform_viz'], allow_failed_imports=False)``.
"""
from .version import __version__
from ._deps import check_dependencies

check_dependencies()

from . import datasets, evaluation, hooks, layers, ops, pretraining  # noqa: E402,F401  (registers modules)

__all__ = ['__version__']
