# The CPU Deformable DETR with iterative box refinement (mmdet's deformable-detr-refine).
_base_ = './deformable-detr_r50-w16_synthetic.py'
model = dict(with_box_refine=True)
