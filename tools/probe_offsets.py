"""The mechanism probe: do d_f or d_k matter for a dense head on frozen pretrained c3 features?

    python tools/probe_offsets.py [--seeds 0 1 2 3 4] [--variants baseline dcn-df dcn-dk dcn ...]
                                  [--iters N] [--num-train N] [--num-val N] [--image-size S]
                                  [--backbone-weights config|random|CKPT] [--work-dir DIR]
                                  [--format markdown|json]

Per seed, every variant (paired: same initial weights, same batches) trains a few 3x3 layers of
its kind and mmdet's FCOSHead on cached stem-to-c3 features of the embedded synthetic dataset, and
is evaluated on its val split (AP, AP75, mean best IoU); the deformable layers' offsets are measured
against the boxes (inward d_f, d_k extent vs size). Prints the per-variant table with paired
differences against the baseline (90 % t-intervals), the verdicts of docs/results/PLAN.md and the
wall time; writes ``probe.json`` and ``probe.png`` to the work dir. Finished runs are reused, so an
interrupted probe resumes; a work dir made with other settings is refused.
"""
import argparse
import dataclasses
import json
import shlex
import sys
import time

import deform_viz  # noqa: F401  checks the OpenMMLab stack
from deform_viz.experiments.probe import VARIANT_CONVS, ProbeSettings, probe_table, run_probe

DEFAULTS = ProbeSettings()
SCALARS = {'num_train': int, 'num_val': int, 'image_size': int, 'data_seed': int, 'num_layers': int,
           'channels': int, 'iters': int, 'batch_size': int, 'lr': float, 'offset_lr_mult': float,
           'backbone_weights': str}  # the ProbeSettings fields with an option of their own


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Mechanism probe: deformable layers and an FCOS head on frozen c3 features')
    parser.add_argument('--work-dir', default='work_dirs/probe')
    parser.add_argument('--data-root', default='data/probe', help='where the synthetic dataset is generated')
    parser.add_argument('--cache-dir', help='feature cache (default: $DEFORM_VIZ_CACHE/probe-features)')
    parser.add_argument('--seeds', type=int, nargs='+', help=f'default: {list(DEFAULTS.seeds)}')
    parser.add_argument('--variants', nargs='+', choices=list(VARIANT_CONVS), metavar='VARIANT',
                        help=f'default: {list(DEFAULTS.variants)}')
    for name, kind in SCALARS.items():
        parser.add_argument(f'--{name.replace("_", "-")}', type=kind, dest=name,
                            help=f'default: {getattr(DEFAULTS, name)}')
    parser.add_argument('--dataset', nargs='+', default=[], metavar='KEY=VALUE',
                        help='more make_synthetic_coco arguments, e.g. max_objects=4 (values read as JSON)')
    parser.add_argument('--format', choices=('markdown', 'json'), default='markdown')
    return parser.parse_args(argv)


def dataset_options(pairs) -> dict:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition('=')
        if not sep or not key:
            raise ValueError(f'--dataset takes KEY=VALUE, got {pair!r}')
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return options


def verdict_lines(claims: dict) -> list:
    lines = [f"claim 1, d_k carries the gain (bbox AP): {claims['dk_carries_the_gain']['verdict']}"]
    for number, claim in ((2, 'df_converges'), (3, 'dk_tracks_size')):
        for variant, verdict in claims[claim].items():
            decides = ' (decides)' if variant == claims['offsets_decide'] else ''
            lines.append(f"claim {number}, {claim.replace('_', ' ')}, on {variant}{decides}: {verdict['verdict']}")
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    overrides = {name: getattr(args, name) for name in ('seeds', 'variants', *SCALARS)
                 if getattr(args, name) is not None}
    try:
        settings = dataclasses.replace(DEFAULTS, dataset=dataset_options(args.dataset), **overrides)
    except (ValueError, FileNotFoundError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    start = time.perf_counter()
    command = shlex.join(['python', 'tools/probe_offsets.py', *(sys.argv[1:] if argv is None else argv)])
    report = run_probe(settings, args.work_dir, args.data_root, cache_dir=args.cache_dir, command=command)
    minutes = (time.perf_counter() - start) / 60
    if args.format == 'json':
        print(json.dumps(report, indent=2))
        return 0
    print(f'\nMechanism probe: {settings.num_train} train / {settings.num_val} val images at '
          f'{settings.image_size} px, {settings.num_layers} layers x {settings.channels} channels, '
          f'{settings.iters} iterations of {settings.batch_size}, seeds {list(settings.seeds)}; '
          'first losses paired in every seed\n')
    print(probe_table(report))
    print('\n' + '\n'.join(verdict_lines(report['claims'])))
    print(f'\nwall time {minutes:.1f} min; {report["work_dir"]}/probe.json, probe.png')
    return 0


if __name__ == '__main__':
    sys.exit(main())
