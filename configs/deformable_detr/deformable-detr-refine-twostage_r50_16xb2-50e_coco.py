# mmdet's two-stage Deformable DETR with box refinement (4-d reference boxes), unchanged,
# with the sampling points of every MultiScaleDeformableAttention (encoder and decoder) and the
# detections' queries dumped at each validation: the first 100
# images, to work_dirs/attention/<this config's name>/epoch_<n>. `tools/test.py CONFIG CKPT
# --dump-offsets DIR` replaces this hook for a full evaluation (docs/attention.md).
_base_ = 'mmdet::deformable_detr/deformable-detr-refine-twostage_r50_16xb2-50e_coco.py'
custom_imports = dict(imports=['deform_viz'], allow_failed_imports=False)
custom_hooks = [
    dict(type='OffsetDumpHook', max_images=100,
         out_dir='work_dirs/attention/deformable-detr-refine-twostage_r50_16xb2-50e_coco')
]
