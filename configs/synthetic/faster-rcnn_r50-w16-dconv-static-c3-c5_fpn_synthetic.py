# Control for the full DCN: the same detector with its offset predictors' weights frozen at zero
# (their zero initialisation) and only their biases learned. Each deformable layer then learns one
# offset field shared by every position and image: a static kernel shape and shift, no offsets
# that depend on the data. What this row gains over the baseline needs no data-dependent offsets.
_base_ = './faster-rcnn_r50-w16-dconv-c3-c5_fpn_synthetic.py'

# the weights get lr 0; the biases learn at the network's rate (or --offset-lr-mult's, whose shorter
# key 'conv_offset' mmengine matches after this one)
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'conv_offset.weight': dict(lr_mult=0.0, decay_mult=0.0)}))
