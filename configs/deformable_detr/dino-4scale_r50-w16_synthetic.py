# DINO-4scale sized for CPU on the embedded synthetic dataset: mmdet's DINO with its contrastive
# denoising, mixed query selection and look-forward-twice refinement, small like the CPU Deformable
# DETR (8 heads x 4 levels x 2 points, 2 + 2 layers, 30 queries) but with 256-dim embeddings, as
# mmdet 3.3's query position encoding (coordinate_to_encoding) has 128 features per coordinate
# built in.
_base_ = './deformable-detr_r50-w16_synthetic.py'

embed_dims = 256
msda = dict(embed_dims=embed_dims, num_heads=8, num_levels=4, num_points=2, batch_first=True, dropout=0.0)
model = dict(
    type='DINO',
    num_queries=30,
    with_box_refine=True,
    as_two_stage=True,
    neck=dict(out_channels=embed_dims, norm_cfg=dict(type='GN', num_groups=32)),
    encoder=dict(
        layer_cfg=dict(
            self_attn_cfg=msda,
            ffn_cfg=dict(embed_dims=embed_dims, feedforward_channels=256, ffn_drop=0.0))),
    decoder=dict(
        layer_cfg=dict(
            self_attn_cfg=dict(embed_dims=embed_dims, num_heads=8, dropout=0.0, batch_first=True),
            cross_attn_cfg=msda,
            ffn_cfg=dict(embed_dims=embed_dims, feedforward_channels=256, ffn_drop=0.0))),
    positional_encoding=dict(num_feats=embed_dims // 2, normalize=True, offset=0.0, temperature=20),
    bbox_head=dict(
        type='DINOHead',
        embed_dims=embed_dims,
        loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0)),
    dn_cfg=dict(label_noise_scale=0.5, box_noise_scale=1.0,
                group_cfg=dict(dynamic=True, num_groups=None, num_dn_queries=10)),
    test_cfg=dict(max_per_img=20))
# mmdet's DINO optimizer: AdamW at 1e-4, the backbone at 0.1x
optim_wrapper = dict(
    optimizer=dict(lr=0.0001),
    paramwise_cfg=dict(_delete_=True, custom_keys={'backbone': dict(lr_mult=0.1)}))
