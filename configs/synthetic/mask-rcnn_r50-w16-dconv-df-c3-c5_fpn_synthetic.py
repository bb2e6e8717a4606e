# The CPU Mask R-CNN with d_f-only deformable convs in c3-c5 (the mean offset over the kernel).
_base_ = './mask-rcnn_r50-w16-dconv-c3-c5_fpn_synthetic.py'

model = dict(backbone=dict(dcn=dict(type='DFOnlyDCN')))
