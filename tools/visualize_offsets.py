"""Draw the offset figures of dumped images (made by ``tools/test.py ... --dump-offsets DIR``).

    python tools/visualize_offsets.py DUMP [--layer PATTERN ...] [--image ID ...] [--out DIR]
                                      [--format png|pdf] [--max-images N] [--figures KIND ...]
                                      [--img-root DIR] [--blank] [--points X,Y ...] [--dpi DPI]

DUMP is a dump directory or one ``.npz`` file. For every image and selected layer it writes
``OUT/<image id>/<layer>.<kind>.<format>`` for the kinds

    kernel_points   Fig. 1 of "Revisiting deformable convolution": per-tap offset fields
    df_divergence   Fig. 2: d_f arrows over the image, negative divergence in red
    dk_extent       Fig. 3: d_k circles, radius proportional to sqrt(width x height)
    sampling        DCN-paper Fig. 5/6: where the taps of a few locations sample the image

Figures are drawn in the original image's pixel coordinates, on the file named by the dump's
``img_path`` (``--img-root`` looks the file name up in another folder; ``--blank`` draws on a
grey canvas instead). The same dump always gives byte-identical files.
"""
import argparse
import os
import os.path as osp
import sys

from deform_viz.analysis import OffsetInputError
from deform_viz.visualization import FIGURES, FORMATS, write_dump_figures


def parse_points(values):
    points = []
    for value in values or ():
        try:
            x, y = (float(v) for v in value.split(','))
        except ValueError:
            raise argparse.ArgumentTypeError(f'--points takes X,Y pairs in image pixels, got {value!r}') from None
        points.append((x, y))
    return points or None


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Draw offset-field figures from offset dumps')
    parser.add_argument('dump', help='a dump directory (tools/test.py --dump-offsets DIR) or one .npz dump')
    parser.add_argument('--layer', nargs='+', metavar='PATTERN',
                        help="layer patterns: 're:REGEX', a shell glob or a word the name contains, "
                        "e.g. 'backbone.layer4.*' or layer3; default: every layer with data offsets")
    parser.add_argument('--image', nargs='+', metavar='ID', help='only these image ids')
    parser.add_argument('--out', help='output directory (default: <DUMP>_figures next to the dump)')
    parser.add_argument('--format', choices=FORMATS, default='png', help='file format (default png)')
    parser.add_argument('--max-images', type=int, metavar='N', help='only the first N images (sorted by id)')
    parser.add_argument('--figures', nargs='+', choices=list(FIGURES), default=list(FIGURES), metavar='KIND',
                        help=f'which figures to draw, from {", ".join(FIGURES)} (default: all)')
    parser.add_argument('--img-root', help='folder holding the images, if not at the dumped img_path')
    parser.add_argument('--blank', action='store_true', help='draw on a blank canvas instead of the image')
    parser.add_argument('--offsets', choices=('used', 'predicted'), default='used',
                        help="for d_f-/d_k-only layers: the offsets the layer sampled with ('used', default) "
                        "or those its predictor produced")
    parser.add_argument('--points', nargs='+', metavar='X,Y',
                        help='locations (image px) for the sampling figure; default: chosen from the fields')
    parser.add_argument('--levels', type=int, default=1, metavar='N',
                        help='sampling figure: compose N stacked deformable layers of the dump (the layer and '
                        'the N-1 dumped layers feeding it), as the DCN paper\'s Fig. 6 (default 1)')
    parser.add_argument('--group', type=int, help='deform group to draw (default: mean of the groups; '
                        'group 0 for the sampling figure)')
    parser.add_argument('--div-threshold', type=float, default=0.0,
                        help='Fig. 2 paints cells whose divergence is below this (default 0)')
    parser.add_argument('--max-per-side', type=int, metavar='N',
                        help='at most N arrows / circles per side (defaults: Fig. 1 12, Fig. 2 and 3 32)')
    parser.add_argument('--dpi', type=float, default=150, help='resolution of png files (default 150)')
    parser.add_argument('--width', type=float, default=6.5, help='figure width in inches (default 6.5)')
    args = parser.parse_args(argv)
    for name in ('max_images', 'max_per_side', 'levels'):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f'--{name.replace("_", "-")} must be at least 1, got {value}')
    try:
        args.points = parse_points(args.points)
    except argparse.ArgumentTypeError as e:
        parser.error(str(e))
    if args.out is None:
        base = args.dump.rstrip('/\\')
        args.out = (base[:-4] if base.endswith('.npz') else base) + '_figures'
    return args


def main(argv=None) -> list:
    """Returns the paths written."""
    args = parse_args(argv)
    options = dict(width=args.width, dpi=args.dpi, group=args.group)
    if 'df_divergence' in args.figures:
        options['div_threshold'] = args.div_threshold
    if 'sampling' in args.figures:
        options['points'] = args.points
    if args.max_per_side is not None and set(args.figures) - {'sampling'}:
        options['max_per_side'] = args.max_per_side
    written = write_dump_figures(args.dump, args.out, args.layer, args.figures, args.format, image_ids=args.image,
                                 max_images=args.max_images, progress=True, img_root=args.img_root,
                                 blank=args.blank, source=args.offsets, levels=args.levels, **options)
    images = len({os.path.dirname(p) for p in written})
    print(f'wrote {len(written)} figures of {images} image(s) to {osp.abspath(args.out)}')
    return written


if __name__ == '__main__':
    try:
        main()
    except (OffsetInputError, FileNotFoundError, ValueError) as e:
        sys.exit(f'{os.path.basename(sys.argv[0])}: error: {e}')
