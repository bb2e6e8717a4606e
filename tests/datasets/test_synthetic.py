"""The synthetic COCO dataset: valid COCO, log-uniform sizes, stretched shapes, determinism,
idempotence, mmdet loading."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from scipy import stats

from deform_viz.datasets import SYNTHETIC_CLASSES, SYNTHETIC_METAINFO, make_synthetic_coco, synthetic_coco
from deform_viz.datasets.__main__ import main as cli_main
from deform_viz.datasets.shapes import polygon_area
from deform_viz.datasets.synthetic_coco import GenerationArgs, sample_aspect, sample_object_size

SMALL = dict(num_train=6, num_val=3, image_size=(96, 128), seed=0)
TINY = dict(num_train=2, num_val=1, image_size=(64, 64))


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp('synthetic')
    return root, make_synthetic_coco(root, **SMALL)


def load_coco(root: Path, split: str) -> COCO:
    return COCO(str(root / 'annotations' / f'instances_{split}.json'))


def file_bytes(root: Path) -> dict:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob('*')) if path.is_file()}


def test_layout_and_summary(dataset):
    root, summary = dataset
    assert not summary['reused']
    assert summary['classes'] == SYNTHETIC_CLASSES
    assert len(SYNTHETIC_METAINFO['palette']) == len(SYNTHETIC_METAINFO['classes']) == len(SYNTHETIC_CLASSES)
    for split, num_images in (('train', SMALL['num_train']), ('val', SMALL['num_val'])):
        stats = summary['splits'][split]
        coco = json.loads(Path(stats['ann_file']).read_text())
        assert stats['images'] == len(coco['images']) == num_images
        assert stats['objects'] == len(coco['annotations']) == sum(stats['per_class'].values())
        assert sum(stats['per_size'].values()) == stats['objects']
        assert sorted(os.listdir(root / split)) == [f'{i:06d}.png' for i in range(1, num_images + 1)]
        assert coco['info']['generation_args']['seed'] == SMALL['seed']


@pytest.mark.parametrize('split', ['train', 'val'])
def test_valid_coco_with_boxes_in_images_and_masks_in_boxes(dataset, split):
    root, _ = dataset
    coco = load_coco(root, split)
    assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == list(SYNTHETIC_CLASSES)
    assert coco.getImgIds() == list(range(1, SMALL[f'num_{split}'] + 1))
    assert sorted(coco.getAnnIds()) == list(range(1, len(coco.anns) + 1))
    height, width = SMALL['image_size']
    for image_id in coco.getImgIds():
        image = coco.loadImgs(image_id)[0]
        assert (image['height'], image['width']) == (height, width)
        with Image.open(root / split / image['file_name']) as png:
            assert png.size == (width, height) and png.mode == 'RGB'
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        assert 1 <= len(anns) <= 6
        for ann in anns:
            x, y, w, h = ann['bbox']
            polygon = np.array(ann['segmentation'][0]).reshape(-1, 2)
            assert ann['iscrowd'] == 0 and len(ann['segmentation']) == 1
            assert 0 <= x and 0 <= y and x + w <= width and y + h <= height
            np.testing.assert_allclose([x, y, x + w, y + h], [*polygon.min(0), *polygon.max(0)], atol=0.011)
            assert ann['area'] == pytest.approx(polygon_area(polygon), abs=0.01)
            mask = coco.annToMask(ann)
            assert mask.shape == (height, width)
            rows, cols = np.nonzero(mask)
            assert cols.min() >= np.floor(x) and cols.max() + 1 <= np.ceil(x + w)  # pixel j spans [j, j+1)
            assert rows.min() >= np.floor(y) and rows.max() + 1 <= np.ceil(y + h)
            assert mask.sum() == pytest.approx(ann['area'], rel=0.3, abs=12)


def test_objects_are_disjoint_and_visible(dataset):
    """No two masks overlap and each object differs clearly from the background around it."""
    root, _ = dataset
    coco = load_coco(root, 'train')
    for image_id in coco.getImgIds():
        with Image.open(root / 'train' / coco.loadImgs(image_id)[0]['file_name']) as png:
            luma = np.asarray(png.convert('L'), dtype=float)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        masks = np.stack([coco.annToMask(ann).astype(bool) for ann in anns])
        assert masks.sum(0).max() == 1
        for ann, mask in zip(anns, masks):
            x, y, w, h = ann['bbox']
            around = np.zeros_like(mask)
            around[max(int(y) - 3, 0):int(y + h) + 4, max(int(x) - 3, 0):int(x + w) + 4] = True
            around &= ~masks.any(0)
            assert abs(luma[mask].mean() - luma[around].mean()) > 40


def test_sampled_sizes_and_aspects_are_log_uniform():
    """The sampler itself: sqrt(area) log-uniform in [8, 96] px, aspect in [1/3, 3] (KS, fixed seed)."""
    args = GenerationArgs(1, 1, (192, 192), 0, 6, 8.0, 0.5, 3.0, 0.8)
    rng = np.random.default_rng(0)
    sizes = np.array([sample_object_size(rng, args) for _ in range(20000)])
    aspects = np.array([sample_aspect(rng, args) for _ in range(20000)])
    assert sizes.min() >= 8 and sizes.max() <= 96
    assert stats.kstest(np.log(sizes), stats.uniform(np.log(8), np.log(12)).cdf).pvalue > 0.01
    assert stats.kstest(np.log(aspects), stats.uniform(-np.log(3), 2 * np.log(3)).cdf).pvalue > 0.01
    # a sampler uniform in sqrt(area) instead would fail: the test can tell them apart
    uniform_sizes = rng.uniform(8, 96, size=20000)
    assert stats.kstest(np.log(uniform_sizes), stats.uniform(np.log(8), np.log(12)).cdf).pvalue < 1e-6


@pytest.fixture(scope='module')
def size_sample(tmp_path_factory):
    """400 default images (192 px): sizes and shapes of all their objects."""
    root = tmp_path_factory.mktemp('sizes')
    make_synthetic_coco(root, num_train=400, num_val=1, seed=3)
    return json.loads((root / 'annotations' / 'instances_train.json').read_text())['annotations']


def test_object_sizes_cover_every_octave_log_uniformly(size_sample):
    """Objects that find no room are left out (large ones more often), so the dataset's sizes are
    log-uniform only to within a few percent: KS distance < 0.06 (uniform in sqrt(area): ~0.3)."""
    sizes = np.sqrt([ann['area'] for ann in size_sample])
    assert len(sizes) > 1200
    assert sizes.min() >= 8 * 0.999 and sizes.max() <= 96 * 1.001
    assert stats.kstest(np.log(sizes), stats.uniform(np.log(8), np.log(12)).cdf).statistic < 0.06
    octaves = np.histogram(np.log2(sizes / 8), bins=[0, 1, 2, 3, np.log2(12)])[0] / len(sizes)
    expected = np.diff([0, 1, 2, 3, np.log2(12)]) / np.log2(12)  # 0.28, 0.28, 0.28, 0.16
    np.testing.assert_allclose(octaves, expected, atol=0.06)  # the top octave loses ~15 %, the others gain


def test_shapes_are_stretched_before_rotation(size_sample):
    """Rectangles (squares before the stretch) keep right angles and side ratios in [1, 3], spread
    as |log aspect| uniform: a third have a ratio above 2 (exact: 1 - log 2 / log 3 = 0.37)."""
    ratios = []
    for ann in size_sample:
        if ann['category_id'] != SYNTHETIC_CLASSES.index('rectangle') + 1:
            continue
        corners = np.array(ann['segmentation'][0]).reshape(4, 2)
        sides = np.roll(corners, -1, axis=0) - corners
        lengths = np.linalg.norm(sides, axis=1)
        assert abs(np.dot(sides[0], sides[1])) / (lengths[0] * lengths[1]) < 0.01  # vertices rounded to 0.01 px
        ratios.append(lengths.max() / lengths.min())
    ratios = np.array(ratios)
    assert len(ratios) > 200 and ratios.max() <= 3 * 1.01
    assert np.mean(ratios > 2) == pytest.approx(1 - np.log(2) / np.log(3), abs=0.08)


def test_interiors_are_textured_with_contrast_to_the_background():
    """A 40-px square of class circle on flat grey: concentric rings about its centre (equal luma
    at equal radius), every pixel >= 60 luma from the background, the two colours visible."""
    from deform_viz.datasets.render import MIN_FILL_CONTRAST, MIN_LUMINANCE_CONTRAST, paint_shape
    canvas = np.full((64, 64, 3), 128, dtype=np.uint8)
    square = np.array([[12.0, 12.0], [52.0, 12.0], [52.0, 52.0], [12.0, 52.0]])
    paint_shape(canvas, square, 'circle', np.random.default_rng(0), class_texture_prob=1.0)
    luma = canvas.astype(float) @ [0.299, 0.587, 0.114]
    inside = luma[13:51, 13:51]
    assert np.abs(inside - 128).min() >= MIN_LUMINANCE_CONTRAST - 1
    assert inside.max() - inside.min() >= MIN_FILL_CONTRAST - 2
    for d in (3, 7, 12, 17):  # pixel centres at the same distance from the centre (32, 32)
        ring = [luma[32 + d, 32], luma[32 - d - 1, 32], luma[32, 32 + d], luma[32, 32 - d - 1]]
        assert max(ring) - min(ring) <= 1.0, (d, ring)
    np.testing.assert_array_equal(canvas[:12], 128)  # outside the square nothing changed


def test_class_texture_prob_sets_how_often_a_class_wears_its_own_texture():
    from deform_viz.datasets.textures import CLASS_TEXTURES, FILLS, choose_fill
    rng = np.random.default_rng(0)
    fills = [choose_fill(rng, 'star', 0.8) for _ in range(5000)]
    assert np.mean([f == CLASS_TEXTURES['star'] for f in fills]) == pytest.approx(0.8, abs=0.02)
    others = [f for f in fills if f != CLASS_TEXTURES['star']]
    counts = np.array([others.count(name) for name in FILLS if name != CLASS_TEXTURES['star']])
    assert stats.chisquare(counts).pvalue > 0.01  # the other families equally often
    assert {choose_fill(rng, 'star', 1.0) for _ in range(50)} == {'rays'}


def test_generator_version_bump_regenerates(tmp_path, monkeypatch):
    make_synthetic_coco(tmp_path, **TINY)
    assert make_synthetic_coco(tmp_path, **TINY)['reused']
    info = json.loads((tmp_path / 'annotations' / 'instances_train.json').read_text())['info']
    assert info['version'] == str(synthetic_coco.GENERATOR_VERSION) == '2'
    monkeypatch.setattr(synthetic_coco, 'GENERATOR_VERSION', 3)
    assert not make_synthetic_coco(tmp_path, **TINY)['reused']
    assert json.loads((tmp_path / 'annotations' / 'instances_val.json').read_text())['info']['version'] == '3'


def test_same_seed_same_files_other_seed_differs(tmp_path):
    first = file_bytes(Path(make_synthetic_coco(tmp_path / 'a', seed=5, **TINY)['out_dir']))
    again = file_bytes(Path(make_synthetic_coco(tmp_path / 'b', seed=5, **TINY)['out_dir']))
    other = file_bytes(Path(make_synthetic_coco(tmp_path / 'c', seed=6, **TINY)['out_dir']))
    assert first == again
    assert first.keys() == other.keys()
    assert all(first[name] != other[name] for name in first)
    # an image depends on (seed, split, index) only, not on how many images are made
    more = make_synthetic_coco(tmp_path / 'd', seed=np.int64(5), **{**TINY, 'num_train': np.int32(3)})
    assert (Path(more['out_dir']) / 'train/000002.png').read_bytes() == first['train/000002.png']


def test_rerun_skips_and_changed_arguments_regenerate(tmp_path):
    make_synthetic_coco(tmp_path, **{**TINY, 'num_train': 3})
    ann_file = tmp_path / 'annotations' / 'instances_train.json'
    written = ann_file.stat().st_mtime_ns
    assert make_synthetic_coco(tmp_path, **{**TINY, 'num_train': 3})['reused']
    assert ann_file.stat().st_mtime_ns == written
    assert not make_synthetic_coco(tmp_path, **{**TINY, 'num_train': 3}, force=True)['reused']

    summary = make_synthetic_coco(tmp_path, **TINY)  # fewer images: the third one is removed
    assert not summary['reused']
    assert sorted(os.listdir(tmp_path / 'train')) == ['000001.png', '000002.png']
    assert json.loads(ann_file.read_text())['info']['generation_args']['num_train'] == 2


@pytest.mark.parametrize('damage', ['delete_image', 'delete_val_json', 'truncate_json'])
def test_incomplete_dataset_is_regenerated(tmp_path, damage):
    reference = file_bytes(Path(make_synthetic_coco(tmp_path / 'reference', **TINY)['out_dir']))
    root = tmp_path / 'damaged'
    make_synthetic_coco(root, **TINY)
    if damage == 'delete_image':
        (root / 'val' / '000001.png').unlink()
    elif damage == 'delete_val_json':
        (root / 'annotations' / 'instances_val.json').unlink()
    else:
        ann_file = root / 'annotations' / 'instances_train.json'
        ann_file.write_text(ann_file.read_text()[:100])
    assert not make_synthetic_coco(root, **TINY)['reused']
    assert file_bytes(root) == reference


@pytest.mark.parametrize('kwargs, message', [
    (dict(num_train=0), 'num_train must be an integer >= 1'),
    (dict(num_val=-2), 'num_val must be an integer >= 1'),
    (dict(num_train=2.5), 'num_train must be an integer'),
    (dict(num_train=True), 'num_train must be an integer'),
    (dict(seed=-1), 'seed must be an integer >= 0'),
    (dict(max_objects=0), 'max_objects must be an integer >= 1'),
    (dict(image_size=(16, 64)), r'image_size must be \(height, width\) with integer sides >= 32'),
    (dict(image_size=(64,)), 'image_size must be'),
    (dict(image_size=(64, 64), min_object_size=40), r'min_object_size must be in \(0, 32\] px'),
    (dict(max_size_fraction=0.6), r'max_size_fraction must be in \(0, 0.5\]'),
    (dict(min_object_size='big'), 'min_object_size must be a number'),
    (dict(max_aspect=0.5), r'max_aspect must be in \[1, 10\]'),
    (dict(class_texture_prob=1.5), r'class_texture_prob must be in \[0, 1\]'),
])
def test_bad_arguments_fail_clearly(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_synthetic_coco(tmp_path / 'never', **{**TINY, **kwargs})
    assert not (tmp_path / 'never').exists()


def test_out_dir_that_is_a_file_fails(tmp_path):
    (tmp_path / 'file').write_text('')
    with pytest.raises(NotADirectoryError, match='is not a directory'):
        make_synthetic_coco(tmp_path / 'file', **TINY)


def test_cli_prints_summary_and_reports_bad_arguments(tmp_path, capsys):
    argv = [str(tmp_path), '--num-train', '2', '--num-val', '1', '--size', '64', '80', '--seed', '3']
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert 'generated in' in out and 'circle, rectangle' in out
    assert json.loads((tmp_path / 'annotations/instances_val.json').read_text())['images'][0]['width'] == 80
    assert cli_main(argv) == 0
    assert 'reused complete dataset' in capsys.readouterr().out
    assert cli_main([str(tmp_path), '--num-val', '0']) == 2
    assert 'num_val must be an integer >= 1' in capsys.readouterr().err


def test_mmdet_coco_dataset_and_metric_read_it(dataset):
    """mmdet's own CocoDataset + pipeline load images, boxes and masks; CocoMetric scores GT as 1.0."""
    import torch
    from mmdet.datasets import CocoDataset
    from mmdet.evaluation import CocoMetric
    from mmdet.utils import register_all_modules
    register_all_modules()
    root, _ = dataset
    ann_file = 'annotations/instances_val.json'
    data = CocoDataset(
        data_root=str(root), ann_file=ann_file, data_prefix=dict(img='val/'),
        metainfo=dict(classes=SYNTHETIC_CLASSES),
        pipeline=[dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True, with_mask=True)])
    coco = load_coco(root, 'val')
    assert len(data) == SMALL['num_val']
    metric = CocoMetric(ann_file=str(root / ann_file), metric=['bbox', 'segm'])
    metric.dataset_meta = data.metainfo
    for index in range(len(data)):
        item = data[index]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=item['img_id']))
        assert item['img'].shape == (*SMALL['image_size'], 3)
        assert len(item['gt_bboxes']) == len(anns) == len(item['gt_masks'])
        masks = item['gt_masks'].to_ndarray()
        np.testing.assert_array_equal(masks, np.stack([coco.annToMask(ann) for ann in anns]))
        labels = torch.as_tensor(item['gt_bboxes_labels'])
        assert [SYNTHETIC_CLASSES[i] for i in labels] == [coco.cats[a['category_id']]['name'] for a in anns]
        metric.process({}, [dict(img_id=item['img_id'], ori_shape=item['ori_shape'], pred_instances=dict(
            bboxes=item['gt_bboxes'].tensor, scores=torch.ones(len(labels)), labels=labels,
            masks=torch.as_tensor(masks).bool()))])
    results = metric.compute_metrics(metric.results)
    assert results['bbox_mAP'] == pytest.approx(1.0) and results['segm_mAP'] == pytest.approx(1.0)
