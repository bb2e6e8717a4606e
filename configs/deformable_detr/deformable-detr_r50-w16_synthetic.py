# Deformable DETR sized for CPU on the embedded synthetic dataset: mmdet's DeformableDETR, its
# encoder, decoder and head, with mmdet's losses and matcher, shrunk to 32-dim embeddings,
# 4 heads x 4 levels x 2 points, 2 encoder and 2 decoder layers and 30 queries. The backbone is the
# CPU configs' Bottleneck ResNet-50 with base_channels=16, pretrained on shape crops
# (`python tools/pretrain_backbone.py`, cached). Every MultiScaleDeformableAttention is recorded
# when the model is evaluated with `tools/test.py --dump-offsets DIR` (docs/attention.md).
_base_ = [
    '../_base_/datasets/synthetic_shapes.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['deform_viz'], allow_failed_imports=False)

embed_dims = 32
msda = dict(embed_dims=embed_dims, num_heads=4, num_levels=4, num_points=2, batch_first=True)
model = dict(
    type='DeformableDETR',
    num_queries=30,
    num_feature_levels=4,
    with_box_refine=False,
    as_two_stage=False,
    data_preprocessor=dict(
        type='DetDataPreprocessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_size_divisor=1),
    backbone=dict(
        type='ResNet',
        depth=50,
        base_channels=16,
        num_stages=4,
        out_indices=(1, 2, 3),
        frozen_stages=1,
        norm_cfg=dict(type='BN', requires_grad=False),
        norm_eval=True,
        style='pytorch',
        init_cfg=dict(type='Pretrained', checkpoint='deform-viz://resnet50-w16-shapes')),
    neck=dict(
        type='ChannelMapper',
        in_channels=[128, 256, 512],
        kernel_size=1,
        out_channels=embed_dims,
        act_cfg=None,
        norm_cfg=dict(type='GN', num_groups=8),
        num_outs=4),
    encoder=dict(
        num_layers=2,
        layer_cfg=dict(
            self_attn_cfg=msda,
            ffn_cfg=dict(embed_dims=embed_dims, feedforward_channels=64, ffn_drop=0.1))),
    decoder=dict(
        num_layers=2,
        return_intermediate=True,
        layer_cfg=dict(
            self_attn_cfg=dict(embed_dims=embed_dims, num_heads=4, dropout=0.1, batch_first=True),
            cross_attn_cfg=msda,
            ffn_cfg=dict(embed_dims=embed_dims, feedforward_channels=64, ffn_drop=0.1)),
        post_norm_cfg=None),
    positional_encoding=dict(num_feats=embed_dims // 2, normalize=True, offset=-0.5),
    bbox_head=dict(
        type='DeformableDETRHead',
        embed_dims=embed_dims,
        num_classes=5,
        sync_cls_avg_factor=True,
        loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=2.0),
        loss_bbox=dict(type='L1Loss', loss_weight=5.0),
        loss_iou=dict(type='GIoULoss', loss_weight=2.0)),
    train_cfg=dict(
        assigner=dict(
            type='HungarianAssigner',
            match_costs=[
                dict(type='FocalLossCost', weight=2.0),
                dict(type='BBoxL1Cost', weight=5.0, box_format='xywh'),
                dict(type='IoUCost', iou_mode='giou', weight=2.0)
            ])),
    test_cfg=dict(max_per_img=20))

max_iters = 500
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='MultiStepLR', begin=0, end=max_iters, by_epoch=False, milestones=[int(max_iters * 0.8)],
         gamma=0.1),
]
# mmdet's Deformable DETR optimizer: AdamW, the backbone and the sampling offsets at 0.1x
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=0.0002, weight_decay=0.0001),
    clip_grad=dict(max_norm=0.1, norm_type=2),
    paramwise_cfg=dict(custom_keys={
        'backbone': dict(lr_mult=0.1),
        'sampling_offsets': dict(lr_mult=0.1),
        'reference_points': dict(lr_mult=0.1)
    }))
auto_scale_lr = dict(enable=False, base_batch_size=4)

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters, max_keep_ckpts=1),
    visualization=dict(type='DetVisualizationHook', draw=False))
log_processor = dict(window_size=10, by_epoch=False)
env_cfg = dict(dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0)
