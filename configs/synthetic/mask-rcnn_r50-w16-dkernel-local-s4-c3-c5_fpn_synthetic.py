# The CPU Mask R-CNN with local Deformable Kernels (scope 4x4) in every bottleneck of c3-c5.
_base_ = './mask-rcnn_r50-w16_fpn_synthetic.py'

model = dict(
    backbone=dict(
        dcn=dict(type='DeformableKernel', mode='local', scope=4, fallback_on_stride=False),
        stage_with_dcn=(False, True, True, True)))
custom_hooks = [dict(type='OffsetStatsHook', interval=50)]
# as configs/deformable_kernels/: the kernel-offset predictors learn at 1/100 of the network's rate
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'conv2.conv_offset': dict(lr_mult=0.01)}))
