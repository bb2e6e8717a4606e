"""Recorded sampling points against what mmcv samples with, and the query-to-detection link
against the head's own outputs, on mmdet's real tiny Deformable DETR and DINO.

The reference for the locations and weights is a spy on mmcv's
``multi_scale_deformable_attn_pytorch`` (the function the module calls on CPU): the tensors it is
handed are what the module samples with. The pixel conversion is redone here from the feature-map
sizes and mmdet's nearest-neighbour padding masks, without the valid ratios the model computes.
"""
import math

import numpy as np
import pytest
import torch
from mmcv.ops import MultiScaleDeformableAttention

from tiny_detr import build_tiny
from deform_viz.attention import sampling_locations
from deform_viz.dump import image_meta
from deform_viz.hooks.recording import select_layers_and_attention

pytestmark = pytest.mark.usefixtures('single_thread')

SHAPES = [(136, 120), (104, 152)]  # two images padded to one 136 x 152 batch: valid ratios < 1
SCALES = [(0.85, 0.75), (0.65, 0.85)]  # (sx, sy): resized = original * scale


def batch(model):
    from mmdet.structures import DetDataSample
    generator = torch.Generator().manual_seed(1)
    inputs, samples = [], []
    for index, ((h, w), (sx, sy)) in enumerate(zip(SHAPES, SCALES)):
        inputs.append((torch.rand(3, h, w, generator=generator) * 255).to(torch.uint8))
        samples.append(DetDataSample(metainfo=dict(
            img_id=index, img_path=f'{index}.png', img_shape=(h, w),
            ori_shape=(round(h / sy), round(w / sx)), scale_factor=(sx, sy))))
    return model.data_preprocessor(dict(inputs=inputs, data_samples=samples), False)


def run_recorded(model, **options):
    """Predict one batch with the recording attached and mmcv's sampling function spied on."""
    import mmcv.ops.multi_scale_deform_attn as msda
    _, recording = select_layers_and_attention(model, None, ['offset'], 'Test', **options)
    original, seen = msda.multi_scale_deformable_attn_pytorch, []

    def spy(value, spatial_shapes, locations, weights):
        seen.append((spatial_shapes.clone(), locations.clone(), weights.clone()))
        return original(value, spatial_shapes, locations, weights)

    data = batch(model)
    recording.attach()
    msda.multi_scale_deformable_attn_pytorch = spy
    try:
        with torch.no_grad():
            outputs = model(**data, mode='predict')
    finally:
        msda.multi_scale_deformable_attn_pytorch = original
    names = [name for name, m in model.named_modules() if isinstance(m, MultiScaleDeformableAttention)]
    return recording, dict(zip(names, seen)), outputs


def valid_cells(size: int, image: int, cells: int) -> int:
    """Cells of a level mmdet's nearest-neighbour resized padding mask marks valid."""
    return sum(1 for j in range(cells) if math.floor(j * size / cells) < image)


def to_pixels(locations, spatial_shapes, batch_shape, img_shape, scale):
    """Normalized (.., L, P, 2) locations of one image -> original-image pixels, independently."""
    out = np.empty_like(locations)
    for level, (height, width) in enumerate(spatial_shapes.tolist()):
        valid_w = valid_cells(batch_shape[1], img_shape[1], width)
        valid_h = valid_cells(batch_shape[0], img_shape[0], height)
        out[..., level, :, 0] = locations[..., level, :, 0] * width / valid_w * img_shape[1] / scale[0]
        out[..., level, :, 1] = locations[..., level, :, 1] * height / valid_h * img_shape[0] / scale[1]
    return out


@pytest.mark.parametrize('kind', ['plain', 'twostage', 'dino'])
def test_locations_and_weights_are_what_mmcv_samples_with(kind):
    model = build_tiny(kind)
    recording, seen, outputs = run_recorded(model, encoder_stride=1)
    assert len(recording) == 4  # 2 encoder + 2 decoder layers
    for recorder in recording:
        spatial_shapes, locations, weights = seen[recorder.name]
        for b, sample in enumerate(outputs):
            meta = image_meta(sample, 'float32')
            info, arrays = recorder.image_fields(b, meta)
            queries = arrays['queries']
            want = to_pixels(locations[b, queries].numpy(), spatial_shapes, meta['batch_input_shape'],
                             SHAPES[b], SCALES[b])
            if recorder.role == 'encoder':
                h, w = SHAPES[b]
                # full field: exactly the valid cells of every level
                cells = [valid_cells(136, h, hh) * valid_cells(152, w, ww) for hh, ww in info['spatial_shapes']]
                assert len(queries) == sum(cells) < info['num_queries']
            else:
                assert list(queries) == list(range(info['num_queries']))
            got = arrays['reference'][:, None, None, None, :2] + arrays['offsets']
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)
            np.testing.assert_allclose(arrays['weights'], weights[b, queries].numpy(), rtol=1e-5, atol=1e-7)
            assert info['reference_dim'] == (4 if recorder.role == 'decoder' and kind != 'plain' else 2)
            # the model's valid ratios agree with the masks counted here
            ratios = np.array(info['valid_ratios'])
            counted = [[valid_cells(152, SHAPES[b][1], ww) / ww, valid_cells(136, SHAPES[b][0], hh) / hh]
                       for hh, ww in info['spatial_shapes']]
            np.testing.assert_allclose(ratios, counted, rtol=1e-6)
            assert np.allclose(arrays['weights'].sum((2, 3)), 1, atol=1e-5)


def test_encoder_lattice_and_reference_pixels():
    model = build_tiny('plain')
    recording, _, outputs = run_recorded(model, encoder_stride=3)
    recorder = next(r for r in recording if r.role == 'encoder')
    meta = image_meta(outputs[1], 'float32')  # 104 x 152: rows padded
    info, arrays = recorder.image_fields(1, meta)
    assert info['query_stride'] == 3
    starts = np.cumsum([0] + [h * w for h, w in info['spatial_shapes']])
    for level, (height, width) in enumerate(info['spatial_shapes']):
        rows = valid_cells(136, 104, height)
        cols = valid_cells(152, 152, width)
        kept = arrays['queries'][(arrays['queries'] >= starts[level]) & (arrays['queries'] < starts[level + 1])]
        r, c = np.divmod(kept - starts[level], width)
        want_rows = np.arange(((rows - 1) % 3) // 2, rows, 3)
        want_cols = np.arange(((cols - 1) % 3) // 2, cols, 3)
        assert sorted(set(r)) == list(want_rows) and sorted(set(c)) == list(want_cols)
        assert len(kept) == len(want_rows) * len(want_cols)
        # the reference point of an encoder cell is its centre, as a fraction of the valid cells
        ref = arrays['reference'][np.isin(arrays['queries'], kept)]
        np.testing.assert_allclose(ref[:, 0], (c + 0.5) / cols * 152 / SCALES[1][0], rtol=1e-5)
        np.testing.assert_allclose(ref[:, 1], (r + 0.5) / rows * 104 / SCALES[1][1], rtol=1e-5)


def box_of(cls_bbox, img_shape, scale):
    """The head's box for a (cx, cy, w, h) prediction, rescaled to the original image."""
    cx, cy, w, h = cls_bbox
    box = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    box[0::2] = np.clip(box[0::2] * img_shape[1], 0, img_shape[1]) / scale[0]
    box[1::2] = np.clip(box[1::2] * img_shape[0], 0, img_shape[0]) / scale[1]
    return box


@pytest.mark.parametrize('kind', ['plain', 'dino'])
def test_query_of_each_detection_is_the_heads(kind):
    """Each linked query's own class score and box (the head's last-layer outputs, captured here)
    are the detection's score and box."""
    model = build_tiny(kind)
    head_outputs = []
    handle = model.bbox_head.register_forward_hook(lambda m, i, o: head_outputs.append(o))
    try:
        recording, _, outputs = run_recorded(model)
    finally:
        handle.remove()
    cls_scores, bbox_preds = (t[-1] for t in head_outputs[0])
    for b, sample in enumerate(outputs):
        pred = sample.pred_instances
        queries, linked = recording.linker.link(b, pred)
        assert linked and len(queries) == len(pred) == model.bbox_head.test_cfg['max_per_img']
        for i, q in enumerate(queries):
            label = int(pred.labels[i])
            assert float(cls_scores[b, q, label].sigmoid()) == pytest.approx(float(pred.scores[i]), rel=1e-6)
            np.testing.assert_allclose(pred.bboxes[i].numpy(), box_of(bbox_preds[b, q].numpy(), SHAPES[b], SCALES[b]),
                                       rtol=1e-5, atol=1e-3)
        # detections re-ordered (a head that post-processes): matched by label and score instead
        order = torch.randperm(len(pred), generator=torch.Generator().manual_seed(0))
        matched, linked = recording.linker.link(b, pred[order])
        assert linked and list(matched) == list(queries[order.numpy()])


def test_decoder_queries_of_detections_only():
    model = build_tiny('plain')
    recording, _, outputs = run_recorded(model, decoder_queries='detections')
    meta = image_meta(outputs[0], 'float16')
    layers, detections, arrays, linked = recording.image_arrays(0, outputs[0], meta, np.float16)
    assert linked and detections['count'] == len(outputs[0].pred_instances)
    det_queries = arrays['__detections__/queries']
    decoder = [n for n, info in layers.items() if info['role'] == 'decoder']
    unique = list(dict.fromkeys(det_queries.tolist()))
    for name in decoder:
        assert arrays[f'{name}/queries'].tolist() == unique
        assert arrays[f'{name}/offsets'].dtype == np.float16 and arrays[f'{name}/reference'].dtype == np.float32


@pytest.mark.parametrize('reference_dim', [2, 4])
def test_sampling_locations_by_hand(reference_dim):
    """The location rule on a bare module against scalar loops (mmcv's docstring rule)."""
    torch.manual_seed(0)
    m = MultiScaleDeformableAttention(embed_dims=16, num_heads=2, num_levels=3, num_points=2, batch_first=True)
    torch.nn.init.normal_(m.sampling_offsets.weight, std=0.3)
    torch.nn.init.normal_(m.attention_weights.weight, std=0.3)
    shapes = torch.tensor([[6, 8], [3, 4], [2, 2]])
    query = torch.randn(5, 16)
    reference = torch.rand(5, 3, reference_dim)
    with torch.no_grad():
        locations, weights = sampling_locations(m, query, reference, shapes)
        raw = m.sampling_offsets(query).view(5, 2, 3, 2, 2)
        logits = m.attention_weights(query).view(5, 2, 6)
    for q in range(5):
        for h in range(2):
            norm = sum(math.exp(v) for v in logits[q, h].tolist())
            for lv in range(3):
                for p in range(2):
                    dx, dy = raw[q, h, lv, p].tolist()
                    ref = reference[q, lv].tolist()
                    if reference_dim == 2:
                        want = (ref[0] + dx / shapes[lv, 1].item(), ref[1] + dy / shapes[lv, 0].item())
                    else:
                        want = (ref[0] + dx / 2 * ref[2] * 0.5, ref[1] + dy / 2 * ref[3] * 0.5)
                    assert locations[q, h, lv, p].tolist() == pytest.approx(want, rel=1e-5, abs=1e-6)
                    assert weights[q, h, lv, p].item() == pytest.approx(
                        math.exp(logits[q, h, lv * 2 + p].item()) / norm, rel=1e-5)
