"""Measure what OffsetStatsHook costs a training step, as a ratio to the same step without it.

    python tools/benchmark_offset_stats.py [--config CFG] [--iters 24] [--image-size 256]
                                           [--interval 50] [--work-dir DIR]

One training run of the CPU synthetic detector (default: DCN in c3-c5) on a generated dataset with
``OffsetStatsHook(interval=2)``, recorded and plain iterations alternating in the same process.
Printed: the median step with and without recording and their ratio, the hook's own work as a
ratio to the plain step, and what that costs on average at ``--interval``. How it is measured:
:mod:`deform_viz.benchmarks.offset_stats`.
"""
import argparse
import tempfile

from deform_viz.benchmarks.offset_stats import DCN_CONFIG, MIN_ITERS, measure_offset_stats, offset_stats_report


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--config', default=DCN_CONFIG, help='a configs/synthetic/ config')
    parser.add_argument('--iters', type=int, default=24, help='training iterations (>= 8)')
    parser.add_argument('--image-size', type=int, default=256)
    parser.add_argument('--interval', type=int, default=50,
                        help='the logging interval to state the average cost for')
    parser.add_argument('--work-dir', help='default: a temporary directory')
    args = parser.parse_args(argv)
    if args.iters < MIN_ITERS:
        parser.error(f'--iters must be at least {MIN_ITERS}')
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        result = measure_offset_stats(args.config, args.iters, args.image_size, args.work_dir or tmp)
    print(offset_stats_report(result, args.config, args.image_size, args.interval))
    return result


if __name__ == '__main__':
    main()
