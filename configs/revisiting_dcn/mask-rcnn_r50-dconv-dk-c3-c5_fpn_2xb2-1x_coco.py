# Table 1, Mask R-CNN, d_k only: the DCN row with each predicted offset field minus its mean
# over the kernel points, d_k = offset - d_f (paper's Eq. 3), during training and testing.
_base_ = './mask-rcnn_r50-dconv-c3-c5_fpn_2xb2-1x_coco.py'

model = dict(backbone=dict(dcn=dict(type='DKOnlyDCN')))
