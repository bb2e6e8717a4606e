# The embedded synthetic dataset (deform_viz.datasets.make_synthetic_coco), read by mmdet's own
# CocoDataset and evaluated by its CocoMetric. `python tools/demo.py` generates it under data_root.
dataset_type = 'CocoDataset'
data_root = 'data/synthetic/'
classes = ('circle', 'rectangle', 'triangle', 'star', 'cross')  # == deform_viz.datasets.SYNTHETIC_CLASSES
metainfo = dict(classes=classes)
image_scale = (192, 192)  # the generator's default image size
backend_args = None

train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=True),
    batch_sampler=dict(type='AspectRatioBatchSampler'),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=4),
        pipeline=train_pipeline,
        backend_args=backend_args))
val_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/'),
        test_mode=True,
        pipeline=test_pipeline,
        backend_args=backend_args))
test_dataloader = val_dataloader

# COCO's AP, and the mean best IoU per ground-truth box (deform_viz.evaluation): a continuous
# localisation measure that resolves smaller differences between variants than AP's thresholds
val_evaluator = [
    dict(type='CocoMetric', ann_file=data_root + 'annotations/instances_val.json', metric='bbox',
         format_only=False, backend_args=backend_args),
    dict(type='BestIoUMetric', ann_file=data_root + 'annotations/instances_val.json'),
]
test_evaluator = val_evaluator
