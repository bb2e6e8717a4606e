# The CPU Deformable DETR with box refinement and two-stage queries (mmdet's
# deformable-detr-refine-twostage): 4-d reference boxes in the decoder. 256-dim embeddings, as
# mmdet 3.3's proposal position embedding (get_proposal_pos_embed) has 128 features per coordinate
# built in; the rest stays small (8 heads x 4 levels x 2 points, 2 + 2 layers, 30 queries).
_base_ = './deformable-detr-refine_r50-w16_synthetic.py'

embed_dims = 256
msda = dict(embed_dims=embed_dims, num_heads=8, num_levels=4, num_points=2, batch_first=True)
model = dict(
    as_two_stage=True,
    neck=dict(out_channels=embed_dims, norm_cfg=dict(type='GN', num_groups=32)),
    encoder=dict(layer_cfg=dict(
        self_attn_cfg=msda,
        ffn_cfg=dict(embed_dims=embed_dims, feedforward_channels=256))),
    decoder=dict(layer_cfg=dict(
        self_attn_cfg=dict(embed_dims=embed_dims, num_heads=8),
        cross_attn_cfg=msda,
        ffn_cfg=dict(embed_dims=embed_dims, feedforward_channels=256))),
    positional_encoding=dict(num_feats=embed_dims // 2),
    bbox_head=dict(embed_dims=embed_dims))
