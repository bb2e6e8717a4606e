# The CPU Mask R-CNN with local Deformable Kernels (scope 4x4) in every bottleneck of c3-c5.
_base_ = './mask-rcnn_r50-w16_fpn_synthetic.py'

model = dict(
    backbone=dict(
        dcn=dict(type='DeformableKernel', mode='local', scope=4, fallback_on_stride=False),
        stage_with_dcn=(False, True, True, True)))
custom_hooks = [dict(type='OffsetStatsHook', interval=50)]
