# mmdet's DINO-4scale R-50, 12 epochs (4-d reference boxes, 900 queries), unchanged,
# with the sampling points of every MultiScaleDeformableAttention (encoder and decoder) and the
# detections' queries dumped at each validation: the first 100
# images, to work_dirs/attention/<this config's name>/epoch_<n>. `tools/test.py CONFIG CKPT
# --dump-offsets DIR` replaces this hook for a full evaluation (docs/attention.md).
_base_ = 'mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py'
custom_imports = dict(imports=['deform_viz'], allow_failed_imports=False)
custom_hooks = [
    dict(type='OffsetDumpHook', max_images=100,
         out_dir='work_dirs/attention/dino-4scale_r50_8xb2-12e_coco')
]
