# The static-offset control (see faster-rcnn_r50-w16-dconv-static-c3-c5_fpn_synthetic.py) on the
# CPU Mask R-CNN: offset predictors learn only their biases.
_base_ = './mask-rcnn_r50-w16-dconv-c3-c5_fpn_synthetic.py'

optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'conv_offset.weight': dict(lr_mult=0.0, decay_mult=0.0)}))
