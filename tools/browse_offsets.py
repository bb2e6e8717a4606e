"""Write one self-contained HTML page to explore offset dumps in a browser.

    python tools/browse_offsets.py DUMP [--ann COCO_JSON] [--img-root DIR] [--max-images N] [--out PAGE.html]
                                   [--layer PATTERN ...] [--levels N] [--points-per-side N]
                                   [--arrows-per-side N] [--div-threshold T] [--offsets used|predicted]
                                   [--attention-layer PATTERN ...] [--detections N]

DUMP is a dump directory (``tools/test.py ... --dump-offsets DIR``) or one ``.npz`` file. The page
(default: DUMP.html next to the dump) holds the images, the data and the script: it opens from
disk or in a notebook (``IPython.display.IFrame('PAGE.html', width='100%', height=800)``) and
fetches nothing. Per image and layer: d_f arrows with the negative-divergence mask, d_k extent
circles, per-tap offset fields; hover or click a location for where its taps sample the image,
composed through up to ``--levels`` stacked deformable layers. With ``--ann``: ground-truth boxes
and masks, and the tables and figures of ``tools/analyze_offsets.py`` for the same images.
Deformable attention layers (Deformable DETR, DINO) are in the same layer list: on a decoder layer,
choose one of the ``--detections`` best detections to see its query's sampling points per head and
level; on an encoder layer, click a pixel for the nearest stored encoder query's (docs/attention.md).
Size: at COCO size (800x1333 input, R-50 DCN c3-c5: 13 layers) an image adds 0.73 MB of data with the
defaults (0.33 MB with ``--levels 1``, 4.0 MB with ``--levels 3``) plus its image file; ``--max-images``
bounds the page. The page parses an image's data only when it is shown.
"""
import argparse
import os
import sys

from deform_viz.analysis import OffsetInputError
from deform_viz.visualization.browser import (ARROWS_PER_SIDE, DETECTIONS, LEVELS, MAX_LEVELS, POINTS_PER_SIDE,
                                              write_offset_browser)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Write an HTML page to browse offset dumps')
    parser.add_argument('dump', help='a dump directory (tools/test.py --dump-offsets DIR) or one .npz dump')
    parser.add_argument('--ann', metavar='COCO_JSON', help='COCO annotations of the dumped images: boxes, masks '
                        'and the analysis tables on the page')
    parser.add_argument('--img-root', metavar='DIR', help='folder holding the images, if not at the dumped img_path')
    parser.add_argument('--max-images', type=int, default=20, metavar='N',
                        help='the first N images, sorted by id (default 20; 0: all)')
    parser.add_argument('--out', metavar='PAGE.html', help='the page (default: DUMP.html beside the dump)')
    parser.add_argument('--layer', nargs='+', metavar='PATTERN',
                        help="conv layer patterns: 're:REGEX', a shell glob or a word the name contains; "
                        'default: every layer with data offsets')
    parser.add_argument('--levels', type=int, default=LEVELS, metavar='N',
                        help=f'sampling points composed through up to N stacked deformable layers (default {LEVELS}, '
                        f'at most {MAX_LEVELS}; each level multiplies the points per location by K*K)')
    parser.add_argument('--points-per-side', type=int, default=POINTS_PER_SIDE, metavar='N',
                        help=f'pickable locations per side of each grid (default {POINTS_PER_SIDE})')
    parser.add_argument('--arrows-per-side', type=int, default=ARROWS_PER_SIDE, metavar='N',
                        help=f'd_f arrows and d_k circles per side (default {ARROWS_PER_SIDE})')
    parser.add_argument('--div-threshold', type=float, default=0.0,
                        help='the mask shows cells whose divergence of d_f is below this (default 0)')
    parser.add_argument('--offsets', choices=('used', 'predicted'), default='used',
                        help="for d_f-/d_k-only layers: the offsets sampled with ('used', default) or predicted")
    parser.add_argument('--attention-layer', nargs='+', metavar='PATTERN',
                        help='attention layer patterns (Deformable DETR, DINO); default: every attention layer')
    parser.add_argument('--detections', type=int, default=DETECTIONS, metavar='N',
                        help=f'decoder layers: the queries of the N best detections linked to a query '
                        f'(default {DETECTIONS})')
    args = parser.parse_args(argv)
    for name in ('levels', 'points_per_side', 'arrows_per_side', 'detections'):
        if getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be at least 1, got {getattr(args, name)}')
    if args.levels > MAX_LEVELS:
        parser.error(f'--levels must be at most {MAX_LEVELS}, got {args.levels}')
    if args.max_images < 0:
        parser.error(f'--max-images must be 0 (all) or more, got {args.max_images}')
    if args.out is None:
        base = args.dump.rstrip('/\\')
        args.out = (base[:-4] if base.endswith('.npz') else base) + '.html'
    return args


def main(argv=None):
    """Returns the :class:`~deform_viz.visualization.browser.BrowserPage` written."""
    args = parse_args(argv)
    page = write_offset_browser(args.dump, args.out, ann_file=args.ann, img_root=args.img_root,
                                max_images=args.max_images or None, layers=args.layer, levels=args.levels,
                                points_per_side=args.points_per_side, arrows_per_side=args.arrows_per_side,
                                div_threshold=args.div_threshold, source=args.offsets,
                                attention_layers=args.attention_layer, detections=args.detections, progress=True)
    print(f'wrote {page.summary()}')
    return page


if __name__ == '__main__':
    try:
        main()
    except (OffsetInputError, FileNotFoundError, ValueError) as e:
        sys.exit(f'{os.path.basename(sys.argv[0])}: error: {e}')
