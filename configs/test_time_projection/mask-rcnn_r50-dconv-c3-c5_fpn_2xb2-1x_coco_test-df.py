# Test-time projection: evaluate a checkpoint trained with the full-DCN Mask R-CNN config
# (../revisiting_dcn/mask-rcnn_r50-dconv-c3-c5_fpn_2xb2-1x_coco.py) with every predicted offset field replaced by
# its mean over the kernel points, d_f (paper's Eq. 2), at test time only - no retraining.
# DFOnlyDCN has the same parameters as mmcv's DCN (weight, conv_offset.weight, conv_offset.bias),
# so the DCN checkpoint loads as is:
#   python tools/test.py configs/test_time_projection/mask-rcnn_r50-dconv-c3-c5_fpn_2xb2-1x_coco_test-df.py \
#       work_dirs/mask-rcnn_r50-dconv-c3-c5_fpn_2xb2-1x_coco/epoch_12.pth
_base_ = '../revisiting_dcn/mask-rcnn_r50-dconv-c3-c5_fpn_2xb2-1x_coco.py'

model = dict(backbone=dict(dcn=dict(type='DFOnlyDCN')))
