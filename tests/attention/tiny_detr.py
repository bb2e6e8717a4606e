"""Tiny Deformable DETR / DINO models for the attention tests (a helper module: tests/conftest.py
owns the conftest name): mmdet's real models built from the CPU configs in configs/deformable_detr/,
their sampling offsets and attention weights perturbed so that every query samples somewhere of its
own (mmcv initialises both predictors to zero weights)."""
import os.path as osp

import torch

from conftest import REPO

CONFIG_DIR = osp.join(REPO, 'configs', 'deformable_detr')
TINY = {
    'plain': 'deformable-detr_r50-w16_synthetic.py',
    'refine': 'deformable-detr-refine_r50-w16_synthetic.py',
    'twostage': 'deformable-detr-refine-twostage_r50-w16_synthetic.py',
    'dino': 'dino-4scale_r50-w16_synthetic.py',
}


def tiny_config(kind: str) -> str:
    return osp.join(CONFIG_DIR, TINY[kind])


def perturb(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights in every attention module's offset and weight predictors (seeded)."""
    from mmcv.ops import MultiScaleDeformableAttention
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, MultiScaleDeformableAttention):
                for layer, scale in ((module.sampling_offsets, 0.2), (module.attention_weights, 0.5)):
                    layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * scale)
    return model


def build_tiny(kind: str, seed: int = 0):
    """The tiny model of ``kind`` (init_weights, no pretrained backbone), perturbed, in eval mode."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    from deform_viz.engine import load_config
    register_all_modules()
    cfg = load_config(tiny_config(kind))
    cfg.model.backbone.init_cfg = None
    torch.manual_seed(seed)
    model = MODELS.build(cfg.model)
    model.init_weights()
    return perturb(model, seed).eval()
