# Deformable Kernels (Gao et al., ICLR 2020), local DK with a 4x4 kernel scope in every 3x3 conv
# of c3-c5 of Faster R-CNN R-50-FPN 1x, trained with the same protocol as the Table 1 rows of
# ../revisiting_dcn so the two tables compare directly.
_base_ = '../revisiting_dcn/faster-rcnn_r50_fpn_2xb4-1x_coco.py'

model = dict(
    backbone=dict(
        dcn=dict(type='DeformableKernel', mode='local', scope=4, fallback_on_stride=False),
        stage_with_dcn=(False, True, True, True)))
# The DK paper trains its kernel-offset predictors at 1/100 of the network's learning rate.
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'conv2.conv_offset': dict(lr_mult=0.01)}))
