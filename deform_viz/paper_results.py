"""The published COCO numbers the configs in ``configs/`` are compared against, in one place.

``deform_viz.results`` puts them beside finished runs, the README tables in
``configs/revisiting_dcn``, ``configs/deformable_kernels`` and ``configs/test_time_projection``
quote them, and ``tests/tools/test_collect_results.py`` checks that the READMEs and this table agree.

APs are fractions (mmdet's ``coco/bbox_mAP`` scale), e.g. 0.374 for 37.4.

Sources
-------
``revisiting``: "Revisiting the Deformable Convolution by Visualization", Table 1. ResNet-50-FPN,
    1x schedule, trained on COCO 2017 train, evaluated on the 5k images of val2017; Faster R-CNN at
    8 images per batch (2 GPUs x 4), Mask R-CNN at 4 (2 GPUs x 2); NMS IoU 0.5; no TTA.
``dkernel``: "Deformable Kernels: Adapting Effective Receptive Fields for Object Deformation"
    (ICLR 2020), Tables 3 and 4: Faster R-CNN with FPN on **ResNet-50-DW** (3x3 convs depthwise,
    doubled bottleneck width) trained on COCO trainval, evaluated on **test-dev**. A different
    backbone and split from ours: compare gains over the matching baseline, not absolute APs.
    The paper has no Mask R-CNN numbers.
"""
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from .variants import LABELS

SOURCES: Dict[str, str] = {
    'revisiting': ('Revisiting the Deformable Convolution by Visualization, Table 1 '
                   '(R-50-FPN, 1x, COCO val2017)'),
    'dkernel': ('Deformable Kernels (ICLR 2020), Tables 3-4 '
                '(Faster R-CNN FPN on ResNet-50-DW, COCO test-dev)'),
}

DETECTORS: Dict[str, str] = {'faster-rcnn': 'Faster R-CNN', 'mask-rcnn': 'Mask R-CNN'}

# Table 1 marks (baseline, d_f, d_k) in the paper's layout.
TABLE1_MARKS: Dict[str, Tuple[bool, bool, bool]] = {
    'baseline': (True, False, False),
    'dcn-df': (False, True, False),
    'dcn-dk': (False, False, True),
    'dcn': (False, True, True),
}


@dataclass(frozen=True)
class PaperRow:
    """One row of a README table: a config and what a paper reports for it."""
    table: str  # 'revisiting_dcn' | 'deformable_kernels' | 'test_time_projection'
    detector: str  # key of DETECTORS
    variant: str  # variant key (deform_viz.variants)
    config: str  # path from the repository root
    bbox_ap: Optional[float] = None  # paper's box AP (fraction), None: not in the paper
    segm_ap: Optional[float] = None  # paper's mask AP (fraction), None: not in the paper
    source: Optional[str] = None  # key of SOURCES

    @property
    def name(self) -> str:
        return f'{DETECTORS[self.detector]}, {LABELS[self.variant]}'


_RD = 'configs/revisiting_dcn/'
_DK = 'configs/deformable_kernels/'
_TP = 'configs/test_time_projection/'

PAPER_ROWS: Tuple[PaperRow, ...] = (
    # "Revisiting", Table 1, in the paper's order (Mask R-CNN first).
    PaperRow('revisiting_dcn', 'mask-rcnn', 'baseline', _RD + 'mask-rcnn_r50_fpn_2xb2-1x_coco.py',
             0.382, 0.347, 'revisiting'),
    PaperRow('revisiting_dcn', 'mask-rcnn', 'dcn-df', _RD + 'mask-rcnn_r50-dconv-df-c3-c5_fpn_2xb2-1x_coco.py',
             0.388, 0.351, 'revisiting'),
    PaperRow('revisiting_dcn', 'mask-rcnn', 'dcn-dk', _RD + 'mask-rcnn_r50-dconv-dk-c3-c5_fpn_2xb2-1x_coco.py',
             0.418, 0.375, 'revisiting'),
    PaperRow('revisiting_dcn', 'mask-rcnn', 'dcn', _RD + 'mask-rcnn_r50-dconv-c3-c5_fpn_2xb2-1x_coco.py',
             0.420, 0.376, 'revisiting'),
    PaperRow('revisiting_dcn', 'faster-rcnn', 'baseline', _RD + 'faster-rcnn_r50_fpn_2xb4-1x_coco.py',
             0.374, None, 'revisiting'),
    PaperRow('revisiting_dcn', 'faster-rcnn', 'dcn-df', _RD + 'faster-rcnn_r50-dconv-df-c3-c5_fpn_2xb4-1x_coco.py',
             0.380, None, 'revisiting'),
    PaperRow('revisiting_dcn', 'faster-rcnn', 'dcn-dk', _RD + 'faster-rcnn_r50-dconv-dk-c3-c5_fpn_2xb4-1x_coco.py',
             0.413, None, 'revisiting'),
    PaperRow('revisiting_dcn', 'faster-rcnn', 'dcn', _RD + 'faster-rcnn_r50-dconv-c3-c5_fpn_2xb4-1x_coco.py',
             0.416, None, 'revisiting'),
    # Deformable Kernels, Table 3 (3x3 DKs only, no 1x1 DKs) and Table 4 ("with DCN" rows).
    # The baseline and DCN rows reuse the Table 1 configs; their DK-paper numbers are the
    # references the DK rows' gains are measured from.
    PaperRow('deformable_kernels', 'faster-rcnn', 'baseline', _RD + 'faster-rcnn_r50_fpn_2xb4-1x_coco.py',
             0.366, None, 'dkernel'),
    PaperRow('deformable_kernels', 'faster-rcnn', 'dkernel-global-s4',
             _DK + 'faster-rcnn_r50-dkernel-global-s4-c3-c5_fpn_2xb4-1x_coco.py', 0.367, None, 'dkernel'),
    PaperRow('deformable_kernels', 'faster-rcnn', 'dkernel-local-s4',
             _DK + 'faster-rcnn_r50-dkernel-local-s4-c3-c5_fpn_2xb4-1x_coco.py', 0.378, None, 'dkernel'),
    PaperRow('deformable_kernels', 'faster-rcnn', 'dcn', _RD + 'faster-rcnn_r50-dconv-c3-c5_fpn_2xb4-1x_coco.py',
             0.399, None, 'dkernel'),
    PaperRow('deformable_kernels', 'faster-rcnn', 'dcn-dkernel-local-s4',
             _DK + 'faster-rcnn_r50-dconv-dkernel-local-s4-c3-c5_fpn_2xb4-1x_coco.py', 0.406, None, 'dkernel'),
    PaperRow('deformable_kernels', 'mask-rcnn', 'baseline', _RD + 'mask-rcnn_r50_fpn_2xb2-1x_coco.py'),
    PaperRow('deformable_kernels', 'mask-rcnn', 'dkernel-local-s4',
             _DK + 'mask-rcnn_r50-dkernel-local-s4-c3-c5_fpn_2xb2-1x_coco.py'),
    PaperRow('deformable_kernels', 'mask-rcnn', 'dcn', _RD + 'mask-rcnn_r50-dconv-c3-c5_fpn_2xb2-1x_coco.py'),
    PaperRow('deformable_kernels', 'mask-rcnn', 'dcn-dkernel-local-s4',
             _DK + 'mask-rcnn_r50-dconv-dkernel-local-s4-c3-c5_fpn_2xb2-1x_coco.py'),
    # Test-time projection of a full-DCN checkpoint: neither paper ran it. The first row of each
    # detector is the DCN run itself (Table 1's value), the reference of the projected rows.
    PaperRow('test_time_projection', 'faster-rcnn', 'dcn', _RD + 'faster-rcnn_r50-dconv-c3-c5_fpn_2xb4-1x_coco.py',
             0.416, None, 'revisiting'),
    PaperRow('test_time_projection', 'faster-rcnn', 'dcn@test-df',
             _TP + 'faster-rcnn_r50-dconv-c3-c5_fpn_2xb4-1x_coco_test-df.py'),
    PaperRow('test_time_projection', 'faster-rcnn', 'dcn@test-dk',
             _TP + 'faster-rcnn_r50-dconv-c3-c5_fpn_2xb4-1x_coco_test-dk.py'),
    PaperRow('test_time_projection', 'mask-rcnn', 'dcn', _RD + 'mask-rcnn_r50-dconv-c3-c5_fpn_2xb2-1x_coco.py',
             0.420, 0.376, 'revisiting'),
    PaperRow('test_time_projection', 'mask-rcnn', 'dcn@test-df',
             _TP + 'mask-rcnn_r50-dconv-c3-c5_fpn_2xb2-1x_coco_test-df.py'),
    PaperRow('test_time_projection', 'mask-rcnn', 'dcn@test-dk',
             _TP + 'mask-rcnn_r50-dconv-c3-c5_fpn_2xb2-1x_coco_test-dk.py'),
)

TABLES: Dict[str, str] = {
    'revisiting_dcn': 'Table 1 of "Revisiting the Deformable Convolution by Visualization"',
    'deformable_kernels': 'Deformable Kernels in c3-c5',
    'test_time_projection': 'Full-DCN checkpoints with d_f / d_k projection at test time only',
}


def paper_rows(table: Optional[str] = None) -> Tuple[PaperRow, ...]:
    """The rows of one README table (or all rows), in table order."""
    if table is not None and table not in TABLES:
        raise KeyError(f'unknown table {table!r}; known: {sorted(TABLES)}')
    return tuple(r for r in PAPER_ROWS if table is None or r.table == table)

