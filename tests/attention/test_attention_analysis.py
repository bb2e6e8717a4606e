"""The attention statistics (deform_viz.attention.analysis and .report, tools/analyze_attention.py):
known answers on synthetic sampling points, the matching, and the tool on a real tiny-DINO dump."""
import json
import os.path as osp

import numpy as np
import pytest
import torch

from conftest import import_tool, synthetic_config
from deform_viz.analysis import ImageObjects, OffsetInputError
from deform_viz.attention import (AttentionLayerAnalysis, AttentionSettings, attention_across_layers,
                                  match_detections, measure_attention)
from deform_viz.attention.fields import AttentionFields, Detections
from deform_viz.dump import LayerNotFoundError, offset_dump_paths
from tiny_detr import build_tiny, tiny_config

SETTINGS = AttentionSettings(permutations=199)
HEIGHT, WIDTH = 600, 800


def info(levels=2, heads=2, points=4, reference_dim=2, queries=40):
    return dict(type='MultiScaleDeformableAttention', role='decoder', num_heads=heads, num_levels=levels,
                num_points=points, reference_dim=reference_dim, num_queries=queries)


def synthetic_image(rng, modes, count=12, heads=2, points=4, reference_dim=2, queries=40):
    """One image with ``count`` objects of random size on a 4 x 3 grid, a detection per object
    (its box jittered, from its own query) and, per level, sampling points of the kind ``modes[l]``:

    'converge': on the object's centre; 'independent': a fixed shift plus noise, nothing of the
    object; 'size': spread proportional to sqrt(object area); 'box' (4-d references): offsets of a
    fixed spread in units of the reference box, scaled by it as mmcv does.
    Returns (fields, detections, objects).
    """
    levels = len(modes)
    size = rng.uniform(20, 150, count)
    aspect = rng.uniform(0.7, 1.4, count)
    w, h = size * aspect, size / aspect
    cx, cy = 100 + 200 * (np.arange(count) % 4), 100 + 200 * (np.arange(count) // 4)
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    detected = boxes + rng.uniform(-0.03, 0.03, boxes.shape) * np.stack([w, h, w, h], 1)
    det_queries = rng.permutation(queries)[:count]
    reference = np.zeros((queries, reference_dim))
    reference[:, :2] = rng.uniform(0, 800, (queries, 2))
    reference[det_queries, :2] = np.stack([cx, cy], 1) + rng.uniform(-0.4, 0.4, (count, 2)) * np.stack([w, h], 1)
    if reference_dim == 4:
        reference[:, 2:] = rng.uniform(20, 150, (queries, 2))
        reference[det_queries, 2:] = np.stack([detected[:, 2] - detected[:, 0], detected[:, 3] - detected[:, 1]], 1)
    offsets = np.zeros((queries, heads, levels, points, 2))
    for level, mode in enumerate(modes):
        noise = rng.normal(size=(queries, heads, points, 2))
        if mode == 'independent':
            offsets[:, :, level] = np.array([6.0, -4.0]) + 15 * noise
        elif mode == 'converge':
            centre = reference[:, :2].copy()
            centre[det_queries] = np.stack([cx, cy], 1)
            offsets[:, :, level] = (centre - reference[:, :2])[:, None, None] + 3 * noise
        elif mode == 'size':
            scale = np.full(queries, 50.0)
            scale[det_queries] = 0.3 * size
            offsets[:, :, level] = scale[:, None, None, None] * noise
        elif mode == 'box':
            offsets[:, :, level] = noise / points * reference[:, None, None, 2:] * 0.5
    logits = rng.normal(size=(queries, heads, levels * points))
    weights = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).reshape(queries, heads, levels, points)
    fields = AttentionFields('decoder.layers.0.cross_attn', info(levels, heads, points, reference_dim, queries),
                             np.arange(queries), reference.astype(np.float32), offsets.astype(np.float32),
                             weights.astype(np.float32))
    detections = Detections(detected.astype(np.float32), rng.uniform(0.1, 1, count).astype(np.float32),
                            np.zeros(count, np.int64), det_queries, True)
    return fields, detections, ImageObjects(HEIGHT, WIDTH, boxes)


def analyse(modes, seed=0, images=3, **kwargs):
    """The layer's result over ``images`` synthetic images."""
    rng = np.random.default_rng(seed)
    analysis = None
    for image_id in range(images):
        fields, detections, objects = synthetic_image(rng, modes, **kwargs)
        analysis = analysis or AttentionLayerAnalysis(fields.name, fields.info, SETTINGS)
        measures = measure_attention({fields.name: fields}, detections, objects, settings=SETTINGS)
        assert measures.matched == len(detections)
        analysis.add(measures.rows[fields.name], measures.missing[fields.name])
    return analysis.result()


def test_points_on_the_centre_point_inwards():
    result = analyse(('independent', 'converge'))
    assert result['num_queries'] == 36 and result['not_stored'] == 0
    converging = result['levels'][1]['inward']
    assert converging['sign_test']['fraction_positive'] > 0.9 and converging['sign_test']['p_greater'] < 1e-6
    assert result['pooled']['inward']['sign_test']['p_greater'] < 1e-6
    across = attention_across_layers({'layer': result})
    assert across['inward']['supporting'] == 1 and across['inward']['contradicting'] == 0
    assert across['per_level']['inward']['layers']['layer']['p_greater_holm'][1] < 1e-6
    assert across['per_level']['inward']['layers']['layer']['p_greater_holm'][0] > 0.05


def test_points_independent_of_the_object_are_not_significant():
    """Over 40 seeds the p-values are roughly uniform: few below 0.05, median near 0.5."""
    p = {'inward': [], 'spread': [], 'inward_level': []}
    for seed in range(40):
        result = analyse(('independent', 'independent'), seed=seed, images=2)
        p['inward'].append(result['pooled']['inward']['sign_test']['p_value'])
        p['spread'].append(result['pooled']['spread']['vs_size']['p_value'])
        p['inward_level'].append(result['levels'][0]['inward']['sign_test']['p_value'])
    for name, values in p.items():
        values = np.array(values)
        assert (values < 0.05).mean() <= 0.15, name
        assert 0.25 < np.median(values) < 0.85, name   # two-sided p of a discrete test: median a bit above 0.5


def test_spread_proportional_to_size_grows():
    result = analyse(('size', 'independent'))
    spread = result['levels'][0]['spread']['vs_size']
    assert spread['rho'] > 0.6 and spread['p_greater'] < 0.01
    assert result['levels'][1]['spread']['vs_size']['p_value'] > 0.05
    assert result['pooled']['normalised_spread'] is None   # 2-d references
    across = attention_across_layers({'a': result, 'b': analyse(('independent', 'independent'), seed=1)})
    assert across['spread_grows_with_size']['supporting'] == 1
    assert across['spread_grows_with_size']['p_greater_holm']['b'] > 0.05
    assert across['normalised_spread_grows_with_size']['tested'] == 0


def test_spread_from_the_box_scale_alone_is_not_learned_growth():
    """4-d references: mmcv scales the offsets with the reference box, so the spread grows with the
    object while the normalised spread does not (over 20 seeds, rarely significant)."""
    result = analyse(('box', 'box'), reference_dim=4)
    assert result['pooled']['spread']['vs_size']['p_greater'] < 0.01
    across = attention_across_layers({'layer': result})
    assert across['spread_grows_with_size']['supporting'] == 1
    normalised = [analyse(('box', 'box'), seed=seed, images=2, reference_dim=4)['pooled']['normalised_spread']
                  for seed in range(20)]
    assert all(n['count'] == 24 for n in normalised)
    assert np.mean([n['vs_size']['p_value'] < 0.05 for n in normalised]) <= 0.15


def test_measures_by_hand():
    """One query, two identical heads, two levels of two points; the object's centre is to the right."""
    offsets = np.array([[[2, 0], [0, 0]], [[4, 0], [-4, 0]]], np.float32)       # (L, P, 2)
    weights = np.array([[0.3, 0.1], [0.4, 0.2]], np.float32)                     # (L, P), sums to 1
    fields = AttentionFields('d', info(2, 2, 2, 4, 1), np.array([0]), np.array([[100, 100, 40, 10]], np.float32),
                             np.stack([offsets] * 2)[None], np.stack([weights] * 2)[None])
    detections = Detections(np.array([[110, 90, 150, 110]], np.float32), np.ones(1, np.float32), np.zeros(1),
                            np.array([0]), True)
    objects = ImageObjects(HEIGHT, WIDTH, np.array([[110, 90, 150, 110]]))
    rows = measure_attention({'d': fields}, detections, objects, settings=SETTINGS).rows['d']
    np.testing.assert_allclose(rows['inward'][0], [1.5, 4 / 3, 1.4], rtol=1e-6)
    pooled_spread = np.sqrt(0.3 * 0.6 ** 2 + 0.1 * 1.4 ** 2 + 0.4 * 2.6 ** 2 + 0.2 * 5.4 ** 2)
    np.testing.assert_allclose(rows['spread'][0], [np.sqrt(0.75), np.sqrt(384 / 27), pooled_spread], rtol=1e-6)
    np.testing.assert_allclose(rows['normalised_spread'][0], rows['spread'][0] / 20, rtol=1e-6)
    np.testing.assert_allclose(rows['centre_distance'], [30])
    np.testing.assert_allclose(rows['sqrt_area'], [np.sqrt(800)])

    objects = ImageObjects(HEIGHT, WIDTH, np.array([[80.5, 90, 120, 110]]))     # centre 0.25 px away: a tie
    detections.bboxes[:] = objects.boxes
    rows = measure_attention({'d': fields}, detections, objects, settings=SETTINGS).rows['d']
    np.testing.assert_array_equal(rows['inward'][0], 0)


def test_matching_greedy_by_score_one_to_one():
    gt = np.array([[0, 0, 10, 10], [20, 0, 30, 10], [50, 50, 60, 60]], np.float64)
    det = np.array([[1, 0, 11, 10],       # IoU 0.82 with gt 0
                    [0, 0, 10, 10],       # identical to gt 0, lower score: gt 0 is taken
                    [21, 0, 31, 10],      # gt 1, but its query (7) already has an object
                    [20, 0, 30, 10],      # gt 1
                    [50, 50, 56, 60]])    # IoU 0.6 with gt 2
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    d, g, iou = match_detections(det, scores, gt, 0.5, queries=np.array([7, 3, 7, 4, 5]))
    assert d.tolist() == [0, 3, 4] and g.tolist() == [0, 1, 2]
    np.testing.assert_allclose(iou, [9 / 11, 1, 0.6])
    assert match_detections(det, scores, gt, 0.7, queries=np.array([7, 3, 7, 4, 5]))[0].tolist() == [0, 3]
    d, g, _ = match_detections(det, scores, gt, 0.5)
    assert d.tolist() == [0, 2, 4] and g.tolist() == [0, 1, 2]
    assert match_detections(det[:0], scores[:0], gt)[0].size == 0


def test_unlinked_detections_are_refused():
    fields, detections, objects = synthetic_image(np.random.default_rng(0), ('independent', ))
    detections.linked = False
    with pytest.raises(OffsetInputError, match='not linked to the decoder queries'):
        measure_attention({fields.name: fields}, detections, objects)


# ---------------------------------------------------------------------------- a real dump
@pytest.fixture(scope='module')
def dino_dump(synthetic_data_root, tmp_path_factory):
    """tools/test.py --dump-offsets of the perturbed tiny DINO on 3 val images, and an annotation file
    for them whose objects are 6 of its detections (of distinct queries) per image, moved by 1 px, so
    that the untrained model's queries have objects to match."""
    root = tmp_path_factory.mktemp('dino_dump')
    checkpoint = str(root / 'dino.pth')
    torch.save({'state_dict': build_tiny('dino').state_dict(), 'meta': {}}, checkpoint)
    cfg = synthetic_config(tiny_config('dino'), synthetic_data_root, str(root / 'work'),
                           {'test_dataloader.dataset.indices': 3, 'model.backbone.init_cfg': None})
    config = str(root / 'config.py')
    cfg.dump(config)
    dump_dir = root / 'dumps'
    import_tool('test').main([config, checkpoint, '--work-dir', str(root / 'work'), '--dump-offsets', str(dump_dir)])
    with open(osp.join(synthetic_data_root, 'annotations', 'instances_val.json')) as f:
        coco = json.load(f)
    from deform_viz.dump import load_offset_dump
    dumps = [load_offset_dump(p) for p in offset_dump_paths(dump_dir)]
    coco['images'] = [i for i in coco['images'] if i['id'] in {d.img_id for d in dumps}]
    coco['annotations'] = []
    for dump in dumps:
        det = dump.detections
        _, first = np.unique(det.queries, return_index=True)
        for k in sorted(first, key=lambda k: -det.scores[k])[:6]:
            x0, y0, x1, y1 = det.bboxes[k].tolist()
            coco['annotations'].append(dict(id=len(coco['annotations']) + 1, image_id=dump.img_id, category_id=1,
                                            bbox=[x0 + 1, y0 + 1, x1 - x0, y1 - y0], area=(x1 - x0) * (y1 - y0),
                                            iscrowd=0))
    ann = root / 'ann.json'
    ann.write_text(json.dumps(coco))
    return dump_dir, str(ann)


@pytest.mark.slow
def test_tool_on_a_real_dump(dino_dump, tmp_path, capsys):
    dump_dir, ann = dino_dump
    analyze = import_tool('analyze_attention').main
    out = tmp_path / 'report.json'
    report = analyze([str(dump_dir), '--ann', ann, '--out', str(out), '--workers', '2', '--permutations', '99'])
    printed = capsys.readouterr().out
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert list(report['layers']) == ['decoder.layers.0.cross_attn', 'decoder.layers.1.cross_attn']
    assert report['skipped_encoder_layers'] == [] and report['num_images'] == 3
    matched = report['matching']['matched']
    assert report['matching']['objects'] == 18 and 12 <= matched <= 18
    for result in report['layers'].values():
        assert result['layer']['reference_dim'] == 4 and result['num_queries'] == matched
        assert result['pooled']['normalised_spread']['count'] == matched
        assert len(result['levels']) == 4
    assert '| decoder.layers.1.cross_attn | ' in printed and 'decoder.layers.0.cross_attn · level 3' in printed
    assert 'Across layers (Holm over the 2 decoder layers' in printed and 'analysed 3 images in' in printed
    figures = ['spread_vs_size.png', 'normalised_spread_vs_size.png', 'inward_offset.png']   # 4-d references
    assert report['figures'] == [str(tmp_path / 'report_figures' / f) for f in figures]
    assert sorted(p.name for p in (tmp_path / 'report_figures').iterdir()) == sorted(figures)
    assert 'Figures: ' + ', '.join(report['figures']) in printed

    one = analyze([str(dump_dir), '--ann', ann, '--layers', 'layers.1', 'encoder', '--permutations', '99',
                   '--figure-dir', str(tmp_path / 'elsewhere')])
    assert [osp.basename(p) for p in one['figures']] == figures and osp.isdir(tmp_path / 'elsewhere')
    assert list(one['layers']) == ['decoder.layers.1.cross_attn']
    assert one['skipped_encoder_layers'] == ['encoder.layers.0.self_attn', 'encoder.layers.1.self_attn']
    assert one['layers']['decoder.layers.1.cross_attn'] == report['layers']['decoder.layers.1.cross_attn']
    none = analyze([str(dump_dir), '--ann', ann, '--out', str(tmp_path / 'none' / 'r.json'), '--no-figures',
                    '--permutations', '99'])
    assert 'figures' not in none and sorted(p.name for p in (tmp_path / 'none').iterdir()) == ['r.json']


def _rewrite_meta(path, edit):
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(str(arrays.pop('__meta__')))
    edit(meta)
    np.savez(path, __meta__=np.array(json.dumps(meta)), **arrays)


@pytest.mark.slow
@pytest.mark.parametrize('edit, message', [
    (lambda m: m.update(flip=True, flip_direction='horizontal'), 'flipped at test time'),
    (lambda m: m['detections'].update(linked=False), 'are not linked to the decoder queries'),
    (lambda m: m.pop('attention'), 'holds no attention layers'),
])
def test_tool_refuses_unusable_dumps(dino_dump, tmp_path, edit, message):
    dump_dir, ann = dino_dump
    copy = tmp_path / 'dumps'
    copy.mkdir()
    paths = offset_dump_paths(dump_dir)
    for path in paths:
        (copy / path.name).write_bytes(path.read_bytes())
    _rewrite_meta(copy / paths[-1].name, edit)
    with pytest.raises(OffsetInputError, match=rf'{paths[-1].name}: .*{message}'):
        import_tool('analyze_attention').main([str(copy), '--ann', ann])


@pytest.mark.slow
def test_tool_names_a_choice_without_decoder_layers(dino_dump):
    dump_dir, ann = dino_dump
    with pytest.raises(LayerNotFoundError, match='no decoder attention layer matched.*encoder.layers.0.self_attn'):
        import_tool('analyze_attention').main([str(dump_dir), '--ann', ann, '--layer', 'encoder'])
    with pytest.raises(LayerNotFoundError, match="pattern 'backbone' matches no attention layer"):
        import_tool('analyze_attention').main([str(dump_dir), '--ann', ann, '--layer', 'backbone'])
