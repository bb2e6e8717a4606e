# Faster R-CNN on the embedded synthetic dataset, sized for CPU: a Bottleneck ResNet-50 with
# base_channels=16 (a quarter of the usual widths), FPN with 64 channels. The backbone starts from
# weights pretrained on shape crops (`python tools/pretrain_backbone.py`, cached), loaded, frozen
# and normalised as mmdet's 1x COCO configs treat ImageNet weights.
_base_ = [
    'mmdet::_base_/models/faster-rcnn_r50_fpn.py',
    '../_base_/datasets/synthetic_shapes.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['deform_viz'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        base_channels=16,
        frozen_stages=1,
        norm_eval=True,
        init_cfg=dict(type='Pretrained', checkpoint='deform-viz://resnet50-w16-shapes')),
    neck=dict(in_channels=[64, 128, 256, 512], out_channels=64),
    rpn_head=dict(
        in_channels=64,
        feat_channels=64,
        anchor_generator=dict(scales=[4], ratios=[0.5, 1.0, 2.0])),
    roi_head=dict(
        # 2x2 samples per RoIAlign bin instead of adaptive: mmcv's CPU RoIAlign (backward above all)
        # was half of a training step with sampling_ratio=0
        bbox_roi_extractor=dict(
            out_channels=64, roi_layer=dict(sampling_ratio=2),
            # mmdet maps an RoI to level floor(log2(sqrt(wh) / finest_scale)); COCO's 56 at 800 px,
            # scaled to the 192-px images (56 * 192 / 800), sends each RoI to the level it would
            # reach at the same fraction of a COCO image. Ground-truth boxes of 2000 default images
            # then go 36 / 30 / 26 / 9 % to P2 / P3 / P4 / P5 (with 56: 93 / 7 / 0 / 0).
            finest_scale=13.44),
        bbox_head=dict(in_channels=64, fc_out_channels=256, num_classes=5)),
    # at most 6 objects per image: fewer proposals and RoIs than COCO's defaults suffice
    train_cfg=dict(rpn_proposal=dict(nms_pre=1000, max_per_img=500), rcnn=dict(sampler=dict(num=256))),
    test_cfg=dict(rpn=dict(nms_pre=1000, max_per_img=500)))

# 500 iterations of 4 images: 12 paired runs fit the ablation's 75 minutes on 2 cores (measured
# 0.47 s per iteration for the baseline, 0.57 s with DCN in c3-c5, at 192 px)
max_iters = 500
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='MultiStepLR', begin=0, end=max_iters, by_epoch=False,
         milestones=[int(max_iters * 0.75), int(max_iters * 11 / 12)], gamma=0.1),
]
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=0.0001),
    # Offset predictors learn at the rate their COCO twins use: DCN's at the network's rate (mmdet's
    # default), Deformable Kernels' at 0.01x (set in its config); docs/results/PLAN.md, "Confirmation".
    clip_grad=dict(max_norm=10, norm_type=2))
auto_scale_lr = dict(enable=False, base_batch_size=4)

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters, max_keep_ckpts=1),
    visualization=dict(type='DetVisualizationHook', draw=False))
log_processor = dict(window_size=10, by_epoch=False)
env_cfg = dict(dist_cfg=dict(backend='gloo'))  # CPU-friendly; GPU users may switch to nccl
randomness = dict(seed=0)
