"""Measure dumped offset fields against COCO ground truth: markdown tables, a JSON report, figures.

    python tools/analyze_offsets.py DUMP --ann COCO_JSON [--layer PATTERN ...] [--out report.json]
                                    [--figure-dir DIR | --no-figures] [--workers N] [--max-images N]
                                    [--size-thresholds SMALL LARGE] [--keep-global-shift] ...

DUMP is a dump directory (``tools/test.py ... --dump-offsets DIR``) or one ``.npz`` file;
COCO_JSON the annotation file of the dumped images (checked: same ids, sizes and file names).
Per layer: effective dilation by object size (DCN paper, Table 2), d_k extent vs object size
(Spearman at the box centre; per-box maxima and means against a null that keeps each box's
cell count), inward d_f per object with a sign test and a background control, divergence of
d_f (dimensionless) and its negative-divergence mask against the objects; then how many layers
support each claim after Holm's correction. Every number comes with its count and, where a test
applies, its p-value. ``--workers N`` measures images in N processes; the report is identical.
Definitions: ``deform_viz/analysis/measures.py``.
"""
import argparse
import os
import sys

from deform_viz.analysis import (COCO_SIZE_THRESHOLDS, AnalysisSettings, OffsetInputError, analyze_offsets,
                                 format_markdown, report_figure_dir, write_report)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Statistics of offset dumps against COCO annotations')
    parser.add_argument('dump', help='a dump directory (tools/test.py --dump-offsets DIR) or one .npz dump')
    parser.add_argument('--ann', required=True, metavar='COCO_JSON', help='COCO annotation file of the dumped images')
    parser.add_argument('--layer', nargs='+', metavar='PATTERN',
                        help="layer patterns: 're:REGEX', a shell glob, or a word the name contains; "
                        'default: every layer with data offsets')
    parser.add_argument('--out', metavar='REPORT_JSON', help='also write the full report as JSON')
    parser.add_argument('--figure-dir', metavar='DIR',
                        help='where the report figures go (default with --out: REPORT_figures/ beside it)')
    parser.add_argument('--no-figures', action='store_true', help='draw no figures')
    parser.add_argument('--workers', type=int, default=1, metavar='N',
                        help='processes measuring images (default 1); the report does not depend on it')
    parser.add_argument('--max-images', type=int, metavar='N', help='only the first N images (sorted by id)')
    parser.add_argument('--size-thresholds', type=float, nargs=2, default=list(COCO_SIZE_THRESHOLDS),
                        metavar=('SMALL', 'LARGE'),
                        help='sqrt(box area) limits in image px of small and medium objects '
                        '(default: COCO, 32 96; the DCN paper used 96 224 on VOC)')
    parser.add_argument('--mask-source', choices=('auto', 'masks', 'boxes'), default='auto',
                        help='object cells from segmentations where present (auto/masks) or from boxes')
    parser.add_argument('--min-object-cells', type=float, default=3.0, metavar='CELLS',
                        help='inward d_f: objects at least this many cells wide and high (default 3)')
    parser.add_argument('--keep-global-shift', action='store_true',
                        help="inward d_f: keep each image's mean d_f instead of removing it first")
    parser.add_argument('--background-ring', type=float, default=0.5, metavar='FRACTION',
                        help='control: background cells within FRACTION x sqrt(box area) of their nearest box '
                        '(default 0.5)')
    parser.add_argument('--div-threshold', type=float, default=0.0,
                        help='the negative-divergence region is where div(d_f) < this (dimensionless, default 0)')
    parser.add_argument('--inward-tie', type=float, default=1e-3, metavar='PX',
                        help='inward d_f: an object whose mean inward d_f is within PX input px of 0 is a tie '
                        'in the sign test (default 1e-3: zero up to rounding)')
    parser.add_argument('--permutations', type=int, default=999, help='permutations of each null (default 999)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the permutations (default 0)')
    parser.add_argument('--offsets', choices=('used', 'predicted'), default='used',
                        help="for d_f-/d_k-only layers: offsets sampled with ('used') or predicted")
    args = parser.parse_args(argv)
    for name in ('max_images', 'workers', 'permutations'):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f'--{name.replace("_", "-")} must be at least 1, got {value}')
    try:
        args.settings = AnalysisSettings(
            size_thresholds=tuple(args.size_thresholds), mask_source=args.mask_source,
            min_object_cells=args.min_object_cells, remove_global_shift=not args.keep_global_shift,
            background_ring=args.background_ring, div_threshold=args.div_threshold, inward_tie=args.inward_tie,
            permutations=args.permutations, seed=args.seed)
    except ValueError as e:
        parser.error(str(e))
    args.figure_dir = report_figure_dir(args.out, args.figure_dir, args.no_figures)
    return args


def main(argv=None) -> dict:
    """Returns the report (as also written to ``--out``)."""
    args = parse_args(argv)
    report = analyze_offsets(args.dump, args.ann, layers=args.layer, settings=args.settings, source=args.offsets,
                             max_images=args.max_images, workers=args.workers, progress=True,
                             figure_dir=args.figure_dir)
    print(format_markdown(report))
    if args.out:
        print(f'report written to {write_report(report, args.out)}')
    return report


if __name__ == '__main__':
    try:
        main()
    except (OffsetInputError, FileNotFoundError, ValueError) as e:
        sys.exit(f'{os.path.basename(sys.argv[0])}: error: {e}')
