"""Collect finished runs into the papers' tables, next to the published numbers.

    python tools/collect_results.py WORK_DIR [WORK_DIR ...] [--format markdown|csv|json] [--out FILE]
                                    [--any-data]

Each WORK_DIR is an mmengine work dir (``work_dirs/<config name>`` as written by tools/train.py or
tools/test.py) or a folder holding several of them. Runs are classified by what their configs
build; only runs evaluated on COCO fill the paper tables, runs on other data (the synthetic demo)
are listed apart unless ``--any-data``; unfinished runs are listed with where and why they
stopped. How runs are read and matched: :mod:`deform_viz.results`.
"""
import argparse
import sys

from deform_viz.results import FORMATS, collect_results


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Collect COCO metrics of finished runs into the tables of the papers.')
    parser.add_argument('work_dirs', nargs='+', metavar='WORK_DIR',
                        help='mmengine work dirs, or folders holding them (e.g. work_dirs/)')
    parser.add_argument('--format', choices=list(FORMATS), default='markdown')
    parser.add_argument('--out', help='write the table to this file instead of stdout')
    parser.add_argument('--any-data', action='store_true',
                        help="let runs on other data than the papers' (e.g. the synthetic demo) fill the "
                        'paper tables, noted as such')
    return parser.parse_args(argv)


def main(argv=None) -> list:
    """Returns the records (see deform_viz.results.build_records)."""
    args = parse_args(argv)
    records = collect_results(args.work_dirs, any_data=args.any_data)
    text = FORMATS[args.format](records)
    if args.out:
        with open(args.out, 'w', encoding='utf-8') as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return records


if __name__ == '__main__':
    main()
