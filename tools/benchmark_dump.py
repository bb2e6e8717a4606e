"""Measure what OffsetDumpHook costs: bytes per image at COCO resolution, and evaluation slowdown.

    python tools/benchmark_dump.py [--work-dir DIR] [--num-images 16] [--repeats 3]
                                   [--checkpoint CKPT] [--skip-size] [--size-image 800 1333] [--skip-speed]
                                   [--skip-analysis] [--analysis-images 8] [--analysis-size 800 1333]
                                   [--workers 2]

1. Size: mmdet's R-50 DCN c3-c5 Faster R-CNN evaluates one generated 800x1333 image with three
   dump hooks at once (default components / all / d_f + divergence), float16.
2. Speed: the small CPU config evaluates a generated val set, alternating runs without and with
   the hook on identical weights: test epochs end to end, and the time inside the hook's methods.
3. Analysis: the same R-50 DCN model dumps ``--analysis-images`` images, which
   ``deform_viz.analysis`` then measures with 1 and with ``--workers`` processes.

How each is measured: :mod:`deform_viz.benchmarks.dump`.
"""
import argparse
import tempfile

from deform_viz.benchmarks.dump import (analysis_report, measure_analysis, measure_size, measure_speed, size_report,
                                        speed_report)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--work-dir', help='where data, dumps and logs go (default: a temp dir)')
    parser.add_argument('--num-images', type=int, default=16, help='val images for the speed run')
    parser.add_argument('--repeats', type=int, default=3, help='timed runs with and without hook')
    parser.add_argument('--checkpoint', help='weights for the speed run (default: untrained)')
    parser.add_argument('--skip-size', action='store_true')
    parser.add_argument('--size-image', type=int, nargs=2, default=(800, 1333), metavar=('H', 'W'),
                        help='size of the image of the size run (default 800 1333)')
    parser.add_argument('--skip-speed', action='store_true')
    parser.add_argument('--skip-analysis', action='store_true')
    parser.add_argument('--analysis-images', type=int, default=8, help='images dumped for the analysis run')
    parser.add_argument('--analysis-size', type=int, nargs=2, default=(800, 1333), metavar=('H', 'W'),
                        help='size of those images (default 800 1333)')
    parser.add_argument('--workers', type=int, default=2, help='analysis processes compared with one')
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work_dir = args.work_dir or tmp
        if not args.skip_size:
            print(size_report(measure_size(work_dir, args.size_image)))
        if not args.skip_speed:
            print(speed_report(measure_speed(work_dir, args.num_images, args.repeats, args.checkpoint)))
        if not args.skip_analysis:
            print(analysis_report(measure_analysis(work_dir, args.analysis_images, args.analysis_size,
                                                   args.workers)))


if __name__ == '__main__':
    main()
