# Table 1, Faster R-CNN, d_f only: the DCN row with each predicted offset field replaced by its
# mean over the kernel points, d_f(p0) (paper's Eq. 2), during training and testing.
_base_ = './faster-rcnn_r50-dconv-c3-c5_fpn_2xb4-1x_coco.py'

model = dict(backbone=dict(dcn=dict(type='DFOnlyDCN')))
