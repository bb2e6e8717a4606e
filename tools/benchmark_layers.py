"""Cost of the deformable conv variants at the 3x3 conv of ResNet-50 stages c3-c5, CPU or CUDA.

One forward + backward of each layer (built by ``mmcv.cnn.build_conv_layer``, offset predictors
with small random weights), cases round-robin in one process: the median over ``--repeat`` rounds
as ratios to ``nn.Conv2d`` and to mmcv's DCN from the same rounds, and the peak memory of the pass
(CPU: in a fresh subprocess). ``--detector`` instead times a whole Faster R-CNN R-50-FPN train step
with each variant in c3-c5. How each is measured: :mod:`deform_viz.benchmarks.layers`.

    python tools/benchmark_layers.py --repeat 5
    python tools/benchmark_layers.py --device cuda --repeat 20
    python tools/benchmark_layers.py --variants dcn dcn-df --stages c4 --no-memory
    python tools/benchmark_layers.py --image 96 96 --repeat 1 --warmup 0 --no-memory   # a quick check
    python tools/benchmark_layers.py --detector --variants dcn dcn-df --repeat 2
"""
import argparse
import sys

import torch

from deform_viz.benchmarks.layers import (IMPLEMENTATIONS, STAGES, VARIANTS, benchmark_detector, benchmark_layers,
                                          detector_table, layer_table, select_cases)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--variants', nargs='+', default=VARIANTS, choices=VARIANTS, metavar='KEY',
                        help=f'variant keys: {", ".join(VARIANTS)} (the two references are always added)')
    parser.add_argument('--implementations', nargs='+', default=IMPLEMENTATIONS,
                        choices=IMPLEMENTATIONS, help='keep only these implementations of the variants')
    parser.add_argument('--device', default='cpu', choices=('cpu', 'cuda'))
    parser.add_argument('--stages', nargs='+', default=list(STAGES), choices=list(STAGES))
    parser.add_argument('--repeat', type=int, default=5, help='timed rounds (median is reported)')
    parser.add_argument('--warmup', type=int, default=1, help='untimed rounds first')
    parser.add_argument('--threads', type=int, default=torch.get_num_threads())
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--image', type=int, nargs=2, default=(800, 1333), metavar=('H', 'W'),
                        help='input image size; padded to a multiple of 32 as mmdet does')
    parser.add_argument('--no-memory', dest='memory', action='store_false',
                        help='skip the per-case peak-memory measurement')
    parser.add_argument('--naive-limit-gb', type=float, default=4.0,
                        help='largest per-location kernel tensor the naive reference may build')
    parser.add_argument('--detector', action='store_true',
                        help='time a whole Faster R-CNN R-50-FPN train step per variant instead')
    args = parser.parse_args(argv)
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: torch sees no CUDA GPU')
    args.cases = select_cases(args.variants, args.implementations)
    return args


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.cuda.get_device_name() if args.device == 'cuda' else f'CPU, {args.threads} threads'
    print(f'torch {torch.__version__}, {device}, batch {args.batch}, image '
          f'{args.image[0]}x{args.image[1]}, median of {args.repeat} rounds; '
          f'command: python tools/benchmark_layers.py {" ".join(sys.argv[1:] if argv is None else argv)}\n')
    if args.detector:
        rows = benchmark_detector(args.cases, device=args.device, image=args.image, batch=args.batch,
                                  repeat=args.repeat, warmup=args.warmup)
        print(detector_table(rows))
    else:
        rows = benchmark_layers(args.cases, args.stages, device=args.device, image=args.image, batch=args.batch,
                                repeat=args.repeat, warmup=args.warmup, memory=args.memory,
                                naive_limit_gb=args.naive_limit_gb)
        print(layer_table(rows, args.stages, args.image, args.batch, args.memory))


if __name__ == '__main__':
    main()
