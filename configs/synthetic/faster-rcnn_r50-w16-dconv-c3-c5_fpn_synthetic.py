# The CPU detector with a full deformable conv (DCNv1 offsets) in every bottleneck of c3-c5,
# through deform_viz's DecomposedDCN: the same parameters as mmcv's DCN, with a fast CPU path.
# `--cfg-options model.backbone.dcn.type=DFOnlyDCN` (or DKOnlyDCN) evaluates a trained one with
# its offsets projected, as configs/test_time_projection/ does for the COCO DCN.
_base_ = './faster-rcnn_r50-w16_fpn_synthetic.py'

model = dict(
    backbone=dict(
        dcn=dict(type='DecomposedDCN', deform_groups=1, fallback_on_stride=False),
        stage_with_dcn=(False, True, True, True)))
# offset statistics (|offset|, |d_f|, |d_k|, effective dilation) in the log and vis_data every 50 iterations
custom_hooks = [dict(type='OffsetStatsHook', interval=50)]
