# Table 1, Mask R-CNN, d_f only: the DCN row with each predicted offset field replaced by its
# mean over the kernel points, d_f(p0) (paper's Eq. 2), during training and testing.
_base_ = './mask-rcnn_r50-dconv-c3-c5_fpn_2xb2-1x_coco.py'

model = dict(backbone=dict(dcn=dict(type='DFOnlyDCN')))
