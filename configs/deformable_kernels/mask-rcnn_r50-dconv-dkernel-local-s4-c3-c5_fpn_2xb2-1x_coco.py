# DCN + Deformable Kernels (DK paper, Eq. 11) in every 3x3 conv of c3-c5 of Mask R-CNN R-50-FPN 1x:
# data sampled at DCN offsets (v1, mmcv layout), kernel resampled inside a 4x4 scope (local DK).
_base_ = './mask-rcnn_r50-dkernel-local-s4-c3-c5_fpn_2xb2-1x_coco.py'

model = dict(backbone=dict(dcn=dict(deform_data=True, deform_groups=1)))
