"""pytest plugin: the CPU configs' pretrained backbone for a test session, made in seconds.

The configs load ``deform-viz://resnet50-w16-shapes``. For the whole session this points the
cache (``DEFORM_VIZ_CACHE``) at a temporary directory and the scheme at the ``tiny`` preset
(``DEFORM_VIZ_BACKBONE_PRESET``), and pretrains that preset there once, so every test that builds
a CPU config, in this process or in a tool it launches, loads real weights without a long
pretraining. ``tests/conftest.py`` loads it with ``pytest_plugins = ['conftest_pretrained']``.
"""
import os

import pytest

VARIABLES = ('DEFORM_VIZ_CACHE', 'DEFORM_VIZ_BACKBONE_PRESET')


@pytest.fixture(scope='session', autouse=True)
def tiny_pretrained_backbone(tmp_path_factory) -> dict:
    """The tiny preset's pretraining summary (``checkpoint`` is its path)."""
    from deform_viz.pretraining import PRESET_VARIABLE, PRESETS, pretrain_backbone
    assert PRESET_VARIABLE in VARIABLES
    saved = {name: os.environ.get(name) for name in VARIABLES}
    os.environ['DEFORM_VIZ_CACHE'] = str(tmp_path_factory.mktemp('deform_viz_cache'))
    os.environ[PRESET_VARIABLE] = 'tiny'
    try:
        yield pretrain_backbone(PRESETS['tiny'], log=lambda message: None)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
