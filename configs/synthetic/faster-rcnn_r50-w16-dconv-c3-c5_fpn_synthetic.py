# The CPU detector with a full deformable conv (DCNv1 offsets) in every bottleneck of c3-c5,
# through deform_viz's DecomposedDCN: the same parameters as mmcv's DCN, with a fast CPU path.
_base_ = './faster-rcnn_r50-w16_fpn_synthetic.py'

model = dict(
    backbone=dict(
        dcn=dict(type='DecomposedDCN', component='full', deform_groups=1, fallback_on_stride=False),
        stage_with_dcn=(False, True, True, True)))
