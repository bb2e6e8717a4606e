# Table 1, Mask R-CNN, d_f + d_k (full DCN): mmcv's DCN in every 3x3 conv of c3-c5, set exactly
# as in mmdet's dcn/mask-rcnn_r50-dconv-c3-c5_fpn_1x_coco.py, trained with the paper's protocol.
_base_ = './mask-rcnn_r50_fpn_2xb2-1x_coco.py'

model = dict(
    backbone=dict(
        dcn=dict(type='DCN', deform_groups=1, fallback_on_stride=False),
        stage_with_dcn=(False, True, True, True)))
