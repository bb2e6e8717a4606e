# Deformable Kernels, global DK (one kernel-offset set per image, from global pooling) with a 4x4
# scope in every 3x3 conv of c3-c5 of Faster R-CNN R-50-FPN 1x.
_base_ = './faster-rcnn_r50-dkernel-local-s4-c3-c5_fpn_2xb4-1x_coco.py'

model = dict(backbone=dict(dcn=dict(mode='global')))
