"""The synthetic COCO dataset: valid COCO, consistent geometry, determinism, idempotence, mmdet loading."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from deform_viz.datasets import SYNTHETIC_CLASSES, SYNTHETIC_METAINFO, make_synthetic_coco
from deform_viz.datasets.__main__ import main as cli_main
from deform_viz.datasets.shapes import polygon_area

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


def test_sizes_span_coco_small_medium_and_large(tmp_path):
    summary = make_synthetic_coco(tmp_path, num_train=12, num_val=1, image_size=(320, 320), seed=1)
    per_size = summary['splits']['train']['per_size']
    assert all(per_size[name] > 0 for name in ('small', 'medium', 'large')), per_size
    assert set(summary['splits']['train']['per_class']) == set(SYNTHETIC_CLASSES)


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
    (dict(image_size=(64, 64), min_object_size=50), r'min_object_size must be in \(0, 38.4\]'),
    (dict(max_object_fraction=1.5), r'max_object_fraction must be in \(0, 1\]'),
    (dict(min_object_size='big'), 'min_object_size must be a number'),
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
