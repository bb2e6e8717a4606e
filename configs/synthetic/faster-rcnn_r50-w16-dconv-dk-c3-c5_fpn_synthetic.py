# The CPU detector with d_k-only deformable convs in c3-c5: every tap's predicted offset is
# replaced by its deviation from the kernel's mean offset (d_k = offset - d_f, Eq. 3).
_base_ = './faster-rcnn_r50-w16-dconv-c3-c5_fpn_synthetic.py'

model = dict(backbone=dict(dcn=dict(type='DKOnlyDCN')))
