# The CPU Mask R-CNN with d_k-only deformable convs in c3-c5 (each tap's offset minus the mean).
_base_ = './mask-rcnn_r50-w16-dconv-c3-c5_fpn_synthetic.py'

model = dict(backbone=dict(dcn=dict(type='DKOnlyDCN')))
