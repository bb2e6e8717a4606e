# DCN + Deformable Kernels (DK paper, Eq. 11): every 3x3 conv of c3-c5 samples its input at
# DCN offsets (v1, mmcv layout) and resamples its kernel inside a 4x4 scope (local DK).
_base_ = './faster-rcnn_r50-dkernel-local-s4-c3-c5_fpn_2xb4-1x_coco.py'

model = dict(backbone=dict(dcn=dict(deform_data=True, deform_groups=1)))
