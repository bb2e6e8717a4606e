"""OffsetFigureHook: figures of the first val images reach the visualizer's backends, each epoch."""
import os

import pytest
import torch
from torch import nn

import deform_viz  # noqa: F401  registers the layers and hooks
from analysis.synthetic_dumps import write_image
from mmengine.registry import HOOKS


class TinyDetector(nn.Module):
    def __init__(self):
        super().__init__()
        from deform_viz.layers import DecomposedDCN
        dcn = DecomposedDCN(4, 4, 3, stride=2, padding=1, modulated=True, backend='torch')
        torch.manual_seed(0)
        nn.init.normal_(dcn.conv_offset.weight, std=0.5)   # non-zero offsets, so the figures show something
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3, stride=4, padding=1), dcn)
        self.head = nn.Conv2d(4, 1, 1)


def sample(img_id, img_path, size=64):
    from mmdet.structures import DetDataSample
    return DetDataSample(metainfo=dict(img_id=img_id, img_path=img_path, ori_shape=(size, size),
                                       img_shape=(size, size), pad_shape=(size, size),
                                       batch_input_shape=(size, size), scale_factor=(1.0, 1.0), flip=False,
                                       flip_direction=None))


@pytest.fixture
def runner(tmp_path):
    from types import SimpleNamespace

    from mmengine.visualization import Visualizer
    visualizer = Visualizer(name=f'figure-hook-{tmp_path.name}', vis_backends=[dict(type='LocalVisBackend')],
                            save_dir=str(tmp_path / 'vis'))
    return SimpleNamespace(model=TinyDetector(), visualizer=visualizer, epoch=3, iter=30)


def run_val(hook, runner, samples):
    hook.before_val_epoch(runner)
    hook.before_val_iter(runner, 0)
    with torch.no_grad():
        runner.model.backbone(torch.randn(len(samples), 3, 64, 64))
    hook.after_val_iter(runner, 0, None, samples)
    hook.after_val_epoch(runner)


def test_hook_sends_figures_and_removes_its_forward_hooks(runner, tmp_path):
    image = write_image(str(tmp_path / 'img' / '1.png'), (64, 64))
    hook = HOOKS.build(dict(type='OffsetFigureHook', num_images=1, figures=['df_divergence', 'kernel_points'],
                            dpi=40, width=4.0))
    dcn = runner.model.backbone[1]
    hook.before_val_epoch(runner)
    assert dcn._forward_hooks and dcn.conv_offset._forward_hooks
    hook.before_val_iter(runner, 0)
    with torch.no_grad():
        runner.model.backbone(torch.randn(2, 3, 64, 64))
    hook.after_val_iter(runner, 0, None, [sample(1, image), sample(2, image)])
    assert not dcn._forward_hooks and not dcn.conv_offset._forward_hooks   # done after num_images
    hook.after_val_epoch(runner)

    saved = sorted(os.listdir(tmp_path / 'vis' / 'vis_data' / 'vis_image'))
    assert saved == ['offsets_df_divergence_img1_backbone.1_3.png', 'offsets_kernel_points_img1_backbone.1_3.png']
    for name in saved:
        assert os.path.getsize(tmp_path / 'vis' / 'vis_data' / 'vis_image' / name) > 5000


def test_hook_interval_missing_image_and_bad_options(runner, tmp_path, caplog):
    hook = HOOKS.build(dict(type='OffsetFigureHook', interval=2, figures='dk_extent', dpi=30, width=3.0))
    run_val(hook, runner, [sample(7, str(tmp_path / 'gone.png'))])          # 1st run: drawn, blank canvas
    runner.epoch = 4
    run_val(hook, runner, [sample(7, str(tmp_path / 'gone.png'))])          # 2nd run: skipped
    images = sorted(os.listdir(tmp_path / 'vis' / 'vis_data' / 'vis_image'))
    assert images == ['offsets_dk_extent_img7_backbone.1_3.png']
    assert not runner.model.backbone[1]._forward_hooks

    strict = HOOKS.build(dict(type='OffsetFigureHook', blank_if_missing=False))
    from deform_viz.visualization import ImageNotFoundError
    with pytest.raises(ImageNotFoundError):
        run_val(strict, runner, [sample(7, str(tmp_path / 'gone.png'))])
    strict.after_val_epoch(runner)

    with pytest.raises(ValueError, match='unknown figure kind'):
        HOOKS.build(dict(type='OffsetFigureHook', figures=['fig4']))
    with pytest.raises(ValueError, match='num_images must be a positive integer'):
        HOOKS.build(dict(type='OffsetFigureHook', num_images=0))
    with pytest.raises(ValueError, match=r'OffsetFigureHook: layers pattern .*matches no'):
        HOOKS.build(dict(type='OffsetFigureHook', layers='neck.*')).before_val_epoch(runner)
