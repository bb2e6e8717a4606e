"""Draw the deformable-attention figures of dumped images (Deformable DETR, DINO: ``tools/test.py ...
--dump-offsets DIR``).

    python tools/visualize_attention.py DUMP [--detections N] [--decoder-layers PATTERN ...]
                                        [--pixel X Y [--pixel X Y ...]] [--encoder-layers PATTERN ...]
                                        [--heads H ...] [--levels L ...] [--query-level L] [--no-zoom]
                                        [--image ID ...] [--max-images N] [--out DIR] [--format png|pdf]
                                        [--img-root DIR] [--blank] [--dpi DPI] [--width INCHES]

For every image it writes ``OUT/<image id>/attention.detections.<format>``: Deformable DETR's Fig. 6
for the N best detections (default 3), the sampling points of the decoder query that produced each,
coloured by feature level, area proportional to the attention weight, with its reference point and
box; one column per decoder layer (default: the last; ``--decoder-layers decoder`` puts every layer
side by side). With ``--pixel X Y`` (original-image pixels, repeatable) also
``attention.pixels.<format>``: the encoder's points of the stored query nearest to each pixel.
"""
import argparse
import os
import os.path as osp
import sys

from deform_viz.analysis import OffsetInputError
from deform_viz.visualization import FORMATS
from deform_viz.visualization.attention_figures import write_attention_figures


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Draw deformable-attention figures from offset dumps')
    parser.add_argument('dump', help='a dump directory (tools/test.py --dump-offsets DIR) or one .npz dump')
    parser.add_argument('--detections', type=int, default=3, metavar='N',
                        help='decoder figure of the N best-scoring detections (default 3; 0: none)')
    parser.add_argument('--decoder-layers', nargs='+', metavar='PATTERN',
                        help="decoder attention layers ('re:REGEX', a glob or a word the name contains), side by "
                        "side; default: the last decoder layer")
    parser.add_argument('--pixel', nargs=2, type=float, action='append', metavar=('X', 'Y'),
                        help='a pixel (original-image x, y) for the encoder figure; repeat for more')
    parser.add_argument('--encoder-layers', nargs='+', metavar='PATTERN',
                        help='encoder attention layers for the pixels; default: the last encoder layer')
    parser.add_argument('--heads', nargs='+', type=int, metavar='H', help='only these heads (default all)')
    parser.add_argument('--levels', nargs='+', type=int, metavar='L', help='only these feature levels (default all)')
    parser.add_argument('--query-level', type=int, metavar='L',
                        help='pixels: the nearest stored encoder query of this level (default: of any level)')
    parser.add_argument('--no-zoom', action='store_true', help='decoder panels show the whole image')
    parser.add_argument('--image', nargs='+', metavar='ID', help='only these image ids')
    parser.add_argument('--max-images', type=int, metavar='N', help='only the first N images (sorted by id)')
    parser.add_argument('--out', help='output directory (default: <DUMP>_figures next to the dump)')
    parser.add_argument('--format', choices=FORMATS, default='png', help='file format (default png)')
    parser.add_argument('--img-root', help='folder holding the images, if not at the dumped img_path')
    parser.add_argument('--blank', action='store_true', help='draw on a blank canvas instead of the image')
    parser.add_argument('--dpi', type=float, default=150, help='resolution of png files (default 150)')
    parser.add_argument('--width', type=float, default=6.5, help='figure width in inches (default 6.5)')
    args = parser.parse_args(argv)
    if args.detections < 0:
        parser.error(f'--detections must be 0 or more, got {args.detections}')
    if args.max_images is not None and args.max_images < 1:
        parser.error(f'--max-images must be at least 1, got {args.max_images}')
    if not args.detections and not args.pixel:
        parser.error('nothing to draw: --detections 0 and no --pixel')
    if args.out is None:
        base = args.dump.rstrip('/\\')
        args.out = (base[:-4] if base.endswith('.npz') else base) + '_figures'
    return args


def main(argv=None) -> list:
    """Returns the paths written."""
    args = parse_args(argv)
    written = write_attention_figures(
        args.dump, args.out, detections=args.detections, decoder_layers=args.decoder_layers,
        pixels=[tuple(p) for p in args.pixel or ()], encoder_layers=args.encoder_layers, heads=args.heads,
        levels=args.levels, query_level=args.query_level, zoom=not args.no_zoom, fmt=args.format,
        image_ids=args.image, max_images=args.max_images, img_root=args.img_root, blank=args.blank,
        width=args.width, dpi=args.dpi, progress=True)
    images = len({os.path.dirname(p) for p in written})
    print(f'wrote {len(written)} figures of {images} image(s) to {osp.abspath(args.out)}')
    return written


if __name__ == '__main__':
    try:
        main()
    except (OffsetInputError, FileNotFoundError, ValueError) as e:
        sys.exit(f'{os.path.basename(sys.argv[0])}: error: {e}')
