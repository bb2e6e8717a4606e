# The CPU Mask R-CNN with a full deformable conv (DCNv1 offsets, DecomposedDCN) in every
# bottleneck of c3-c5; `model.backbone.dcn.type=DFOnlyDCN` (or DKOnlyDCN) projects a trained one.
_base_ = './mask-rcnn_r50-w16_fpn_synthetic.py'

model = dict(
    backbone=dict(
        dcn=dict(type='DecomposedDCN', deform_groups=1, fallback_on_stride=False),
        stage_with_dcn=(False, True, True, True)))
custom_hooks = [dict(type='OffsetStatsHook', interval=50)]
