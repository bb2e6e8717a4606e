"""Table 1 of the "revisiting" paper at CPU scale: paired rows over seeds on the synthetic dataset.

    python tools/mini_ablation.py [--rows baseline dcn-df dcn-dk dcn dkernel-local-s4] [--seeds 3 4 5 6 7]
                                  [--iters N]
                                  [--num-train N] [--num-val N] [--image-size PX]
                                  [--detector faster|mask] [--offset-lr-mult X]
                                  [--work-dir work_dirs/mini_ablation] [--out DIR]

Trains each row (a config in configs/synthetic/) once per seed, all rows of a seed from the same
initial weights on the same data order, leaves out (and names) seeds whose rows' first losses
differ, evaluates AP, AP75 and mean best IoU, re-evaluates each full DCN with d_f / d_k only, and
prints per-row values and paired differences to the baseline with 90 % t-intervals, the verdicts on
the paper's claims by the rules of docs/results/PLAN.md (2, 3 and the segmentation finding from the
full DCN's offsets), and the wall time. The defaults run the confirmatory Faster R-CNN table (five
rows, seeds 3-7); `--detector mask` the Mask R-CNN one (four rows, seeds 3-5, mask AP too). Writes
mini_ablation.{json,md,png} to --out (default: the work dir). Finished runs are reused, so an
interrupted ablation resumes; run it in stages with --rows and --seeds.
"""
import argparse
import shlex
import sys

from deform_viz.experiments.ablation import (DEFAULT_ROWS, DEFAULT_SEEDS, DETECTORS, ROWS, Ablation,
                                             AblationSettings, write_outputs)

DEFAULTS = AblationSettings()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='CPU-scale, paired d_f / d_k / DCN / DK ablation')
    parser.add_argument('--rows', nargs='+', default=None, choices=list(ROWS), metavar='ROW',
                        help=f'rows to train (default: {" ".join(DEFAULT_ROWS["faster"])}; Mask R-CNN: '
                        f'{" ".join(DEFAULT_ROWS["mask"])}; choices: {", ".join(ROWS)})')
    parser.add_argument('--seeds', type=int, nargs='+', default=None,
                        help=f'default: {" ".join(map(str, DEFAULT_SEEDS["faster"]))}; Mask R-CNN: '
                        f'{" ".join(map(str, DEFAULT_SEEDS["mask"]))} (the confirmatory seeds of docs/results/PLAN.md)')
    parser.add_argument('--iters', type=int, default=None, help="training iterations (default: the configs')")
    parser.add_argument('--num-train', type=int, default=DEFAULTS.num_train)
    parser.add_argument('--num-val', type=int, default=DEFAULTS.num_val)
    parser.add_argument('--image-size', type=int, default=DEFAULTS.image_size)
    parser.add_argument('--data-root', default=DEFAULTS.data_root)
    parser.add_argument('--detector', default=DEFAULTS.detector, choices=list(DETECTORS),
                        help='Faster R-CNN (default) or Mask R-CNN, configs/synthetic/<detector>-rcnn_*')
    parser.add_argument('--offset-lr-mult', type=float, default=None,
                        help="learning-rate multiplier of DCN's offset predictors (default: the configs', 1; "
                        "the pre-registered run of docs/results/offset_lr30 used 30)")
    parser.add_argument('--work-dir', default='',
                        help='default: work_dirs/mini_ablation (Mask R-CNN: work_dirs/mini_ablation-mask)')
    parser.add_argument('--out', default=None, help='where the JSON, table and plot go (default: --work-dir)')
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    settings = AblationSettings(seeds=args.seeds, rows=args.rows, iters=args.iters,
                                num_train=args.num_train, num_val=args.num_val,
                                image_size=args.image_size, data_root=args.data_root,
                                work_dir=args.work_dir, detector=args.detector,
                                offset_lr_mult=args.offset_lr_mult)
    result = Ablation(settings).run()
    command = 'python tools/mini_ablation.py ' + ' '.join(map(shlex.quote, sys.argv[1:] if argv is None else argv))
    paths = write_outputs(result, args.out or settings.work_dir, command.strip())
    with open(paths['markdown']) as f:
        print(f'\n{f.read()}')
    for claim, verdict in result['claims'].items():
        print(f"claim '{claim}': {verdict['verdict']}")
    print(f"wall time {result['minutes']} min (the runs' training, reused ones included: "
          f"{result['train_minutes']} min); results in {paths['json']}, plot {paths['plot']}")
    return result


if __name__ == '__main__':
    main()
