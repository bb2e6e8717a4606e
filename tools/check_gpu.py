"""Check that this machine runs deform-viz on a GPU, and how fast; what each part measures is in
:mod:`deform_viz.benchmarks.gpu_check` and docs/benchmarks.md.

Reports torch, CUDA, the GPUs and mmcv's compiled CUDA version; runs mmcv's DCN, RoIAlign and NMS
on the GPU; every layer family on CUDA against the CPU in float64 (values and gradients) and under
float16 / bfloat16 autocast; one single-rank NCCL DDP AmpOptimWrapper train step of each Faster
R-CNN COCO config; the per-layer and per-step goals. Exit status: 0 all checks pass, 1 a check
failed, 2 this machine cannot run deform-viz on a GPU (what is missing is printed).

    python tools/check_gpu.py
    python tools/check_gpu.py --out work_dirs/gpu_check --steps 10
    python tools/check_gpu.py --skip-detectors --skip-layer-timing     # the correctness checks only
"""
import argparse
import json
import os
import sys


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', help='also write report.md and report.json into this directory')
    parser.add_argument('--configs', nargs='+', metavar='VARIANT',
                        help='detector configs to step, by variant key (default: all; the baseline is always added)')
    parser.add_argument('--steps', type=int, default=5, help='timed train steps per config (median reported)')
    parser.add_argument('--warmup', type=int, default=2, help='untimed train steps first')
    parser.add_argument('--image', type=int, nargs=2, default=(800, 1333), metavar=('H', 'W'))
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--layer-repeat', type=int, default=10, help='rounds of the per-layer timing for the goals')
    parser.add_argument('--skip-detectors', action='store_true', help='no detector train steps')
    parser.add_argument('--skip-layer-timing', action='store_true', help='no per-layer timing (goals from steps only)')
    return parser.parse_args(argv)


class Report:
    """Markdown printed as it is made and, with --out, rewritten after every part (a run cut short
    keeps what it measured)."""

    def __init__(self, out=None):
        self.parts, self.data, self.out = [], {}, out

    def add(self, title, text, key=None, value=None):
        part = f'## {title}\n\n{text}\n'
        print(part, flush=True)
        self.parts.append(part)
        if key is not None:
            self.data[key] = value
        self.write(self.out)

    def write(self, out):
        if out:
            os.makedirs(out, exist_ok=True)
            with open(os.path.join(out, 'report.md'), 'w') as f:
                f.write('\n'.join(self.parts))
            with open(os.path.join(out, 'report.json'), 'w') as f:
                json.dump(self.data, f, indent=1, default=str)


def cannot_run(report, args, problems):
    report.add('Missing', '\n'.join(f'- {p}' for p in problems), 'missing', problems)
    report.write(args.out)
    print(f'check_gpu.py: this machine cannot run deform-viz on a GPU ({len(problems)} problem(s) above); '
          f'nothing was run on a GPU', file=sys.stderr)
    return 2


def main(argv=None) -> int:
    args = parse_args(argv)
    report = Report(args.out)
    try:
        import deform_viz  # noqa: F401  checks the stack: refuses CPU-only mmcv ops while torch sees a GPU
    except ImportError as e:
        import torch
        report.add('Machine', f'- torch {torch.__version__}, CUDA {torch.version.cuda or "none (CPU-only build)"}')
        return cannot_run(report, args, [str(e)])
    import torch

    from deform_viz.benchmarks import gpu_check as gc
    unknown = sorted(set(args.configs or ()) - set(gc.DETECTOR_CONFIGS))
    if unknown:
        raise SystemExit(f'check_gpu.py: unknown --configs {unknown}; known: {list(gc.DETECTOR_CONFIGS)}')
    machine = gc.machine_report()
    report.add('Machine', gc.format_machine(machine), 'machine', machine)
    problems = gc.missing(machine)
    if not problems:
        error = gc.run_tiny_mmcv_ops()
        if error:
            problems.append(f'mmcv\'s CUDA ops fail on this GPU ({error}): rebuild them for its architecture '
                            f'(DEFORM_VIZ_CUDA=1 bash tools/bootstrap.sh on this machine)')
    if problems:
        return cannot_run(report, args, problems)
    report.add('mmcv ops on the GPU', 'DCN, RoIAlign and NMS run and match the CPU ops.')

    layers = gc.check_layers()
    failures = gc.layer_failures(layers)
    report.add('Layer families', f'Worst relative error over the output and every gradient (limits: float64 '
               f'{gc.FLOAT64_RTOL:g}, autocast {gc.AUTOCAST_RTOL:g}; mmcv\'s own layers have no bfloat16 '
               f'kernels).\n\n' + gc.format_layers(layers), 'layers', layers)
    steps, layer_rows = {}, {}
    if not args.skip_detectors:
        steps = gc.detector_steps(args.configs, tuple(args.image), args.batch, args.steps, args.warmup)
        failures += [f'{name}: {row["error"]}' for name, row in steps.items() if 'error' in row]
        failures += [f'{name}: losses not finite' for name, row in steps.items() if row.get('finite') is False]
        report.add('Detector train steps', f'Single-rank NCCL DDP, AmpOptimWrapper, median of {args.steps} steps '
                   f'after {args.warmup}.\n\n' + gc.format_steps(steps, args.image, args.batch), 'steps', steps)
    if not args.skip_layer_timing:
        from deform_viz.benchmarks.layers import benchmark_layers, layer_table, select_cases
        variants = sorted({variant for variant, _ in gc.LAYER_GOALS})
        cases = select_cases(variants, ['nn.Conv2d', 'mmcv', 'deform_viz'])
        layer_rows = benchmark_layers(cases, ['c3', 'c4', 'c5'], device='cuda', image=tuple(args.image),
                                      repeat=args.layer_repeat, memory=False)
        report.add('Layers at c3-c5', layer_table(layer_rows, ['c3', 'c4', 'c5'], tuple(args.image), memory=False),
                   'layer_timing', {f'{v} ({i})': cells for (v, i), cells in layer_rows.items()})
    met = gc.goals(layer_rows, steps)
    if met:
        report.add('Goals (docs/benchmarks.md)', gc.format_goals(met), 'goals', met)
    report.add('Result', '\n'.join(f'- FAILED {f}' for f in failures) or f'All checks passed on '
               f'{torch.cuda.get_device_name(0)}.', 'failures', failures)
    report.write(args.out)
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
