# Table 1, Faster R-CNN, d_f + d_k (full DCN): mmcv's DCN in every 3x3 conv of c3-c5, set exactly
# as in mmdet's dcn/faster-rcnn_r50-dconv-c3-c5_fpn_1x_coco.py, trained with the paper's protocol.
_base_ = './faster-rcnn_r50_fpn_2xb4-1x_coco.py'

model = dict(
    backbone=dict(
        dcn=dict(type='DCN', deform_groups=1, fallback_on_stride=False),
        stage_with_dcn=(False, True, True, True)))
