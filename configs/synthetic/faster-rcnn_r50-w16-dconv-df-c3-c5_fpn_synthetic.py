# The CPU detector with d_f-only deformable convs in c3-c5: every tap's predicted offset is
# replaced by the mean offset over the kernel (d_f, Eq. 2 of the revisiting paper).
_base_ = './faster-rcnn_r50-w16-dconv-c3-c5_fpn_synthetic.py'

model = dict(backbone=dict(dcn=dict(type='DFOnlyDCN')))
