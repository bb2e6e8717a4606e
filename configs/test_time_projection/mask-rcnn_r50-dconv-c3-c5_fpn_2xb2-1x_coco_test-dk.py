# Test-time projection: evaluate a checkpoint trained with the full-DCN Mask R-CNN config
# (../revisiting_dcn/mask-rcnn_r50-dconv-c3-c5_fpn_2xb2-1x_coco.py) with every predicted offset field replaced by
# itself minus its mean over the kernel points, d_k (paper's Eq. 3), at test time only - no retraining.
# DKOnlyDCN has the same parameters as mmcv's DCN (weight, conv_offset.weight, conv_offset.bias),
# so the DCN checkpoint loads as is:
#   python tools/test.py configs/test_time_projection/mask-rcnn_r50-dconv-c3-c5_fpn_2xb2-1x_coco_test-dk.py \
#       work_dirs/mask-rcnn_r50-dconv-c3-c5_fpn_2xb2-1x_coco/epoch_12.pth
_base_ = '../revisiting_dcn/mask-rcnn_r50-dconv-c3-c5_fpn_2xb2-1x_coco.py'

model = dict(backbone=dict(dcn=dict(type='DKOnlyDCN')))
