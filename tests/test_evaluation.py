import json

import pytest
import torch

from deform_viz.evaluation import BestIoUMetric, best_ious


def write_coco(path, images, annotations, categories=('circle', 'square')):
    coco = {'images': [{'id': i, 'file_name': f'{i}.png', 'height': 64, 'width': 64} for i in images],
            'annotations': [{'id': k + 1, 'image_id': img, 'category_id': cat, 'bbox': box,
                             'area': box[2] * box[3], 'iscrowd': crowd}
                            for k, (img, cat, box, crowd) in enumerate(annotations)],
            'categories': [{'id': 10 + k, 'name': name} for k, name in enumerate(categories)]}
    path.write_text(json.dumps(coco))
    return str(path)


def sample(img_id, boxes, labels):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return {'img_id': img_id, 'pred_instances': {'bboxes': boxes, 'labels': torch.tensor(labels, dtype=torch.long),
                                                 'scores': torch.ones(len(boxes))}}


def test_best_ious_respects_labels():
    gt = torch.tensor([[0., 0., 10., 10.], [20., 20., 30., 30.]])
    pred = torch.tensor([[0., 0., 10., 5.], [0., 0., 10., 10.], [20., 20., 30., 30.]])
    # box 0: its own label only reaches 0.5 (the exact box has the other label); box 1: exact
    assert best_ious(gt, torch.tensor([0, 1]), pred, torch.tensor([0, 1, 1])).tolist() == [0.5, 1.0]
    assert best_ious(gt, torch.tensor([0, 1]), pred[:0], torch.tensor([], dtype=torch.long)).tolist() == [0, 0]


def test_metric_averages_every_ground_truth_box(tmp_path):
    ann = write_coco(tmp_path / 'val.json', [1, 2], [
        (1, 10, [0, 0, 10, 10], 0),    # found with IoU 0.5
        (2, 10, [5, 5, 20, 20], 0),    # no prediction in image 2: 0
        (2, 11, [30, 30, 10, 10], 0),  # 0
        (2, 11, [0, 0, 64, 64], 1),    # crowd: left out
    ])
    metric = BestIoUMetric(ann_file=ann)
    metric.dataset_meta = {'classes': ('circle', 'square')}
    metric.process({}, [sample(1, [[0, 0, 10, 5], [0, 0, 10, 10]], [0, 1]), sample(2, [], [])])
    result = metric.evaluate(size=2)
    assert result == {'coco/bbox_mean_best_iou': pytest.approx(0.5 / 3), 'coco/bbox_num_gt': 3.0}


def test_metric_covers_the_evaluated_images_and_refuses_foreign_ones(tmp_path):
    ann = write_coco(tmp_path / 'val.json', [1, 2, 3], [(1, 10, [0, 0, 10, 10], 0), (2, 10, [0, 0, 8, 8], 0)])
    metric = BestIoUMetric(ann_file=ann)
    metric.dataset_meta = {'classes': ('circle', 'square')}
    metric.process({}, [sample(1, [[0, 0, 10, 10]], [0])])   # a subset of the split, as CocoMetric allows
    assert metric.evaluate(size=1) == {'coco/bbox_mean_best_iou': 1.0, 'coco/bbox_num_gt': 1.0}
    metric.process({}, [sample(7, [[0, 0, 10, 10]], [0])])
    with pytest.raises(ValueError, match=r'1 evaluated image\(s\) are not in the annotation file, e.g. \[7\]'):
        metric.evaluate(size=1)
