"""Measure dumped offset fields against COCO ground truth and print a markdown table per layer.

    python tools/analyze_offsets.py DUMP --ann COCO_JSON [--layer PATTERN ...] [--out report.json]
                                    [--max-images N] [--size-thresholds SMALL LARGE]
                                    [--div-threshold T] [--mask-source auto|masks|boxes]

DUMP is a dump directory (``tools/test.py ... --dump-offsets DIR``) or one ``.npz`` file;
COCO_JSON the annotation file of the dumped images (checked: same ids, sizes and file names).
For each layer it reports

* effective dilation (mean distance between adjacent sampling points, input-map pixels) for
  locations on small / medium / large objects and on background, as the DCN paper's Table 2;
* Spearman correlation between sqrt(box area) and the d_k circle radius (Fig. 3) at the box
  centre and the largest one in the box;
* d_f convergence: mean divergence in boxes vs background, share of in-box d_f pointing to
  the box centre;
* IoU / precision / recall of the negative-divergence region against the object masks
  (boxes for objects without one).

Every number comes with its count of objects, locations or images. Definitions in
``deform_viz/analysis/statistics.py``.
"""
import argparse
import json
import os
import sys

from deform_viz.analysis import (COCO_SIZE_THRESHOLDS, AnalysisSettings, OffsetInputError, analyze_offsets,
                                 format_markdown)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Statistics of offset dumps against COCO annotations')
    parser.add_argument('dump', help='a dump directory (tools/test.py --dump-offsets DIR) or one .npz dump')
    parser.add_argument('--ann', required=True, metavar='COCO_JSON', help='COCO annotation file of the dumped images')
    parser.add_argument('--layer', nargs='+', metavar='PATTERN',
                        help='layer name patterns (shell globs; a plain word matches names containing it); '
                        'default: every layer with data offsets')
    parser.add_argument('--out', metavar='REPORT_JSON', help='also write the full report as JSON')
    parser.add_argument('--max-images', type=int, metavar='N', help='only the first N images (sorted by id)')
    parser.add_argument('--size-thresholds', type=float, nargs=2, default=list(COCO_SIZE_THRESHOLDS),
                        metavar=('SMALL', 'LARGE'),
                        help='sqrt(box area) limits in image px of small and medium objects '
                        '(default: COCO, 32 96; the DCN paper used 96 224 on VOC)')
    parser.add_argument('--div-threshold', type=float, default=0.0,
                        help='the negative-divergence region is where div(d_f) < this (default 0)')
    parser.add_argument('--min-displacement', type=float, default=0.01,
                        help='d_f shorter than this (input px) has no direction (default 0.01)')
    parser.add_argument('--mask-source', choices=('auto', 'masks', 'boxes'), default='auto',
                        help='ground truth for the mask overlap: segmentations where present (auto/masks) '
                        'or boxes')
    parser.add_argument('--offsets', choices=('used', 'predicted'), default='used',
                        help="for d_f-/d_k-only layers: offsets sampled with ('used') or predicted")
    args = parser.parse_args(argv)
    if args.max_images is not None and args.max_images < 1:
        parser.error(f'--max-images must be at least 1, got {args.max_images}')
    if not 0 < args.size_thresholds[0] < args.size_thresholds[1]:
        parser.error(f'--size-thresholds must satisfy 0 < SMALL < LARGE, got {args.size_thresholds}')
    return args


def main(argv=None) -> dict:
    """Returns the report (as also written to ``--out``)."""
    args = parse_args(argv)
    settings = AnalysisSettings(size_thresholds=tuple(args.size_thresholds), div_threshold=args.div_threshold,
                                min_displacement=args.min_displacement, mask_source=args.mask_source)
    report = analyze_offsets(args.dump, args.ann, layers=args.layer, settings=settings, source=args.offsets,
                             max_images=args.max_images, progress=True)
    print(format_markdown(report))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        tmp = f'{args.out}.tmp.{os.getpid()}'
        with open(tmp, 'w') as f:
            json.dump(report, f, indent=1, allow_nan=False)
        os.replace(tmp, args.out)
        print(f'report written to {os.path.abspath(args.out)}')
    return report


if __name__ == '__main__':
    try:
        main()
    except (OffsetInputError, FileNotFoundError, ValueError) as e:
        sys.exit(f'{os.path.basename(sys.argv[0])}: error: {e}')
