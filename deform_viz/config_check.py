"""Clear errors for deformable-conv settings in a detector config, before anything is built.

mmdet's ResNet rejects a wrong ``stage_with_dcn`` with a bare assert, and the registry's
error for an unknown layer type does not say which types exist; this check names both.
"""
from mmengine.config import Config
from mmengine.registry import MODELS

RESNET_FAMILY = ('ResNet', 'ResNetV1d', 'ResNeXt', 'Res2Net', 'ResNeSt', 'RegNet')


def deformable_conv_types() -> list:
    """Names of every registered deformable conv layer: mmcv's and this package's."""
    from mmcv.ops import DeformConv2d, ModulatedDeformConv2d

    import deform_viz.layers  # noqa: F401  registers our layers
    return sorted(name for name, cls in MODELS.module_dict.items()
                  if issubclass(cls, (DeformConv2d, ModulatedDeformConv2d))
                  or cls.__module__.startswith('deform_viz.layers'))


def check_backbone(backbone: dict) -> None:
    """Validate ``backbone.dcn`` / ``backbone.stage_with_dcn`` of a ResNet-like backbone config."""
    dcn = backbone.get('dcn')
    if dcn is None:
        return
    layer_type = dcn.get('type') if isinstance(dcn, dict) else None
    known = deformable_conv_types()
    if layer_type not in known:
        raise KeyError(f'backbone.dcn.type={layer_type!r} is not a registered deformable conv layer; '
                       f'known types: {", ".join(known)}. Is deform_viz in custom_imports?')
    stages = backbone.get('stage_with_dcn')
    num_stages = backbone.get('num_stages', 4)
    if stages is not None and len(stages) != num_stages:
        raise ValueError(f'backbone.stage_with_dcn={tuple(stages)} has {len(stages)} entries but the '
                         f'backbone has num_stages={num_stages}: give one bool per stage, '
                         f'e.g. (False, True, True, True) for c3-c5')


def check_config(cfg: Config) -> None:
    """Run every check that applies to ``cfg`` (currently: the backbone's deformable convs)."""
    backbone = cfg.get('model', {}).get('backbone')
    if isinstance(backbone, dict) and str(backbone.get('type', '')).split('.')[-1] in RESNET_FAMILY:
        check_backbone(backbone)
