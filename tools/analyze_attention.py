"""Measure the decoder attention of dumped Deformable DETR / DINO models against COCO ground truth.

    python tools/analyze_attention.py DUMP --ann COCO_JSON [--layer PATTERN ...] [--out report.json]
                                      [--figure-dir DIR | --no-figures] [--workers N] [--max-images N]
                                      [--iou-threshold IOU] ...

DUMP is a dump directory (``tools/test.py ... --dump-offsets DIR`` of a model with
``MultiScaleDeformableAttention``) or one ``.npz`` file; COCO_JSON the annotation file of the dumped
images (checked: same ids, sizes and file names). Detections are matched to the objects
(class-agnostic, greedy by score, one-to-one); per matched decoder query, layer and level (and pooled
over levels): its weighted mean offset towards the object's centre (sign test) and the weighted
spread of its sampling points against object size (Spearman, permutation null), for reference boxes
also the spread over the box's size; then how many layers support each claim after Holm's
correction. With ``--out`` the report's figures (spread vs object size per decoder layer, inward
mean offset per layer and level) go to REPORT_figures/ beside it. ``--workers N`` measures images
in N processes; the report is identical. Definitions: ``deform_viz/attention/analysis.py``.
"""
import argparse
import os
import sys
import time

from deform_viz.analysis import OffsetInputError, report_figure_dir, write_report
from deform_viz.attention import AttentionSettings, analyze_attention, format_attention_markdown


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Statistics of attention dumps against COCO annotations')
    parser.add_argument('dump', help='a dump directory (tools/test.py --dump-offsets DIR) or one .npz dump')
    parser.add_argument('--ann', '--ann-file', dest='ann', required=True, metavar='COCO_JSON',
                        help='COCO annotation file of the dumped images')
    parser.add_argument('--layer', '--layers', dest='layer', nargs='+', metavar='PATTERN',
                        help="attention layer patterns: 're:REGEX', a shell glob, or a word the name contains; "
                        'encoder layers are left out; default: every decoder layer')
    parser.add_argument('--out', metavar='REPORT_JSON', help='also write the full report as JSON')
    parser.add_argument('--figure-dir', metavar='DIR',
                        help='where the report figures go (default with --out: REPORT_figures/ beside it)')
    parser.add_argument('--no-figures', action='store_true', help='draw no figures')
    parser.add_argument('--workers', type=int, default=1, metavar='N',
                        help='processes measuring images (default 1); the report does not depend on it')
    parser.add_argument('--max-images', type=int, metavar='N', help='only the first N images (sorted by id)')
    parser.add_argument('--iou-threshold', type=float, default=0.5, metavar='IOU',
                        help='a detection matches an object at this IoU or more (default 0.5)')
    parser.add_argument('--centre-tie', type=float, default=1.0, metavar='PX',
                        help="a reference point within PX px of its object's centre has no inward direction: "
                        'a tie (default 1)')
    parser.add_argument('--inward-tie', type=float, default=1e-3, metavar='PX',
                        help='an inward mean offset within PX px of 0 is a tie in the sign test (default 1e-3)')
    parser.add_argument('--permutations', type=int, default=999, help='permutations of each null (default 999)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the permutations (default 0)')
    args = parser.parse_args(argv)
    for name in ('max_images', 'workers', 'permutations'):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f'--{name.replace("_", "-")} must be at least 1, got {value}')
    try:
        args.settings = AttentionSettings(iou_threshold=args.iou_threshold, centre_tie=args.centre_tie,
                                          inward_tie=args.inward_tie, permutations=args.permutations, seed=args.seed)
    except ValueError as e:
        parser.error(str(e))
    args.figure_dir = report_figure_dir(args.out, args.figure_dir, args.no_figures)
    return args


def main(argv=None) -> dict:
    """Returns the report (as also written to ``--out``)."""
    args = parse_args(argv)
    start = time.perf_counter()
    report = analyze_attention(args.dump, args.ann, layers=args.layer, settings=args.settings,
                               max_images=args.max_images, workers=args.workers, progress=True,
                               figure_dir=args.figure_dir)
    print(format_attention_markdown(report))
    if args.out:
        print(f'report written to {write_report(report, args.out)}')
    print(f'analysed {report["num_images"]} images in {time.perf_counter() - start:.1f} s '
          f'({args.workers} worker{"" if args.workers == 1 else "s"})')
    return report


if __name__ == '__main__':
    try:
        main()
    except (OffsetInputError, FileNotFoundError, ValueError) as e:
        sys.exit(f'{os.path.basename(sys.argv[0])}: error: {e}')
