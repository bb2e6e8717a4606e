# Table 1 of "Revisiting the Deformable Convolution by Visualization" (section 4), Faster R-CNN
# baseline: mmdet's R-50-FPN 1x COCO config trained with the paper's protocol. Every Faster R-CNN
# row of the table (configs in this folder and in ../deformable_kernels) inherits this file.
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['deform_viz'], allow_failed_imports=False)

# 8 images per step (2 GPUs x 4 images), SGD, 1x schedule, lr scaled linearly from mmdet's
# 0.02 at 16 images: 0.02 * 8 / 16.
train_dataloader = dict(batch_size=4)
optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.01))
# `tools/train.py --auto-scale-lr` rescales lr by (GPUs x batch_size) / 8 for other GPU counts.
auto_scale_lr = dict(enable=False, base_batch_size=8)

# No test-time augmentation (never pass --tta); NMS IoU 0.5 in the R-CNN head (mmdet's default,
# pinned here because the paper states it).
model = dict(test_cfg=dict(rcnn=dict(nms=dict(type='nms', iou_threshold=0.5))))
