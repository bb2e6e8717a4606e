"""Command line: ``python -m deform_viz.datasets OUT_DIR [--num-train N] [--num-val N] [--size H W] [--seed S] ...``."""
import argparse
import sys
from typing import List, Optional

from ..analysis.annotations import SIZE_CLASSES
from .synthetic_coco import make_synthetic_coco


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog='python -m deform_viz.datasets',
        description='Write the synthetic shapes dataset (COCO format: PNG images, polygon masks) to OUT_DIR. '
                    'Reruns with the same arguments reuse a complete dataset.')
    parser.add_argument('out_dir', metavar='OUT_DIR', help='dataset root (train/, val/, annotations/ go here)')
    parser.add_argument('--num-train', type=int, default=200, help='training images (default: 200)')
    parser.add_argument('--num-val', type=int, default=50, help='validation images (default: 50)')
    parser.add_argument('--size', type=int, nargs=2, metavar=('H', 'W'), default=(192, 192),
                        help='image height and width (default: 192 192)')
    parser.add_argument('--seed', type=int, default=0, help='random seed (default: 0)')
    parser.add_argument('--max-objects', type=int, default=6, help='most objects per image (default: 6)')
    parser.add_argument('--min-object-size', type=float, default=8.0,
                        help='smallest sqrt(mask area) in pixels (default: 8)')
    parser.add_argument('--max-size-fraction', type=float, default=0.5,
                        help='largest sqrt(mask area) as a fraction of the shorter side (default: 0.5)')
    parser.add_argument('--max-aspect', type=float, default=3.0,
                        help='aspect-ratio stretch, log-uniform in [1/A, A] (default: 3)')
    parser.add_argument('--class-texture-prob', type=float, default=0.8,
                        help="probability that an object is filled with its class's texture family (default: 0.8)")
    parser.add_argument('--force', action='store_true', help='regenerate even if the dataset is complete')
    return parser.parse_args(argv)


def format_summary(summary: dict) -> str:
    action = 'reused complete dataset' if summary['reused'] else f'generated in {summary["seconds"]:.1f} s'
    lines = [f'synthetic shapes dataset in {summary["out_dir"]} ({action})',
             f'classes: {", ".join(summary["classes"])}',
             f'{"split":<6}{"images":>8}{"objects":>9}' + ''.join(f'{name:>8}' for name in SIZE_CLASSES)
             + '  annotation file']
    for split, stats in summary['splits'].items():
        sizes = ''.join(f'{stats["per_size"][name]:>8}' for name in SIZE_CLASSES)
        lines.append(f'{split:<6}{stats["images"]:>8}{stats["objects"]:>9}{sizes}  {stats["ann_file"]}')
    return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        summary = make_synthetic_coco(args.out_dir, num_train=args.num_train, num_val=args.num_val,
                                      image_size=tuple(args.size), seed=args.seed,
                                      max_objects=args.max_objects, min_object_size=args.min_object_size,
                                      max_size_fraction=args.max_size_fraction, max_aspect=args.max_aspect,
                                      class_texture_prob=args.class_texture_prob, force=args.force)
    except (ValueError, OSError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    print(format_summary(summary))
    return 0


if __name__ == '__main__':
    sys.exit(main())
