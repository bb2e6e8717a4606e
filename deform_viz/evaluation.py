"""Mean best IoU per ground-truth box: a continuous localisation metric beside COCO's AP.

AP counts a detection as right or wrong at each IoU threshold, so small improvements in where the
boxes sit move it in steps. The mean over ground-truth boxes of the best IoU any detection of the
same class reaches (0 when there is none) moves continuously with them. Use it next to mmdet's
``CocoMetric``::

    val_evaluator = [dict(type='CocoMetric', ann_file=ANN, metric='bbox'),
                     dict(type='BestIoUMetric', ann_file=ANN)]

which adds ``coco/bbox_mean_best_iou`` to the metrics.
"""
from typing import Dict, List, Optional, Sequence

import torch
from mmdet.datasets.api_wrappers import COCO
from mmdet.registry import METRICS
from mmdet.structures.bbox import bbox_overlaps
from mmengine.evaluator import BaseMetric


def best_ious(gt_boxes: torch.Tensor, gt_labels: torch.Tensor, pred_boxes: torch.Tensor,
              pred_labels: torch.Tensor) -> torch.Tensor:
    """For each ground-truth box, the highest IoU of a predicted box of its label (0 if none).

    Args:
        gt_boxes: (G, 4) x1, y1, x2, y2.  gt_labels: (G,).
        pred_boxes: (P, 4).  pred_labels: (P,).

    Returns:
        (G,) float IoUs.
    """
    if len(gt_boxes) == 0:
        return gt_boxes.new_zeros(0)
    if len(pred_boxes) == 0:
        return gt_boxes.new_zeros(len(gt_boxes))
    ious = bbox_overlaps(gt_boxes.float(), pred_boxes.float())  # (G, P)
    ious = ious.masked_fill(gt_labels[:, None] != pred_labels[None, :], 0)
    return ious.max(dim=1).values


@METRICS.register_module()
class BestIoUMetric(BaseMetric):
    """``bbox_mean_best_iou``: mean of :func:`best_ious` over the ground-truth boxes of the evaluated
    images (as ``CocoMetric``, the images that were predicted), and ``bbox_num_gt``, how many boxes
    it averages (crowd boxes left out).

    Args:
        ann_file: the COCO json of the evaluated images (as ``CocoMetric``'s ``ann_file``).
    """
    default_prefix: Optional[str] = 'coco'

    def __init__(self, ann_file: str, collect_device: str = 'cpu', prefix: Optional[str] = None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.coco = COCO(ann_file)

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            pred = sample['pred_instances']
            self.results.append((sample['img_id'], pred['bboxes'].cpu(), pred['labels'].cpu()))

    def compute_metrics(self, results: List[tuple]) -> Dict[str, float]:
        cat_ids = self.coco.get_cat_ids(cat_names=self.dataset_meta['classes'])
        label_of = {cat_id: label for label, cat_id in enumerate(cat_ids)}
        predictions = {img_id: (boxes, labels) for img_id, boxes, labels in results}
        unknown = sorted(set(predictions) - set(self.coco.get_img_ids()))
        if unknown:
            raise ValueError(f'BestIoUMetric: {len(unknown)} evaluated image(s) are not in the annotation '
                             f'file, e.g. {unknown[:5]}; is ann_file the one of the evaluated split?')
        per_box = []
        for img_id, (pred_boxes, pred_labels) in predictions.items():
            anns = [a for a in self.coco.load_anns(self.coco.get_ann_ids(img_ids=[img_id]))
                    if not a.get('iscrowd', 0) and a['category_id'] in label_of]
            if not anns:
                continue
            xywh = torch.tensor([a['bbox'] for a in anns], dtype=torch.float32)
            gt_boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
            gt_labels = torch.tensor([label_of[a['category_id']] for a in anns])
            per_box.append(best_ious(gt_boxes, gt_labels, pred_boxes, pred_labels))
        values = torch.cat(per_box) if per_box else torch.zeros(0)
        return {'bbox_mean_best_iou': float(values.mean()) if len(values) else 0.0,
                'bbox_num_gt': float(len(values))}
