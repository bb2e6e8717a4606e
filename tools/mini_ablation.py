"""Table 1 of the "revisiting" paper at CPU scale, on the embedded synthetic dataset.

    python tools/mini_ablation.py [--seeds 0 1 2] [--iters 600] [--num-train 160] [--num-val 50]
                                  [--work-dir work_dirs/mini_ablation] [--format markdown|json]

Trains the small CPU detector once per (row, seed) - baseline, d_f-only, d_k-only, full DCN
and local Deformable Kernels in c3-c5 - evaluates each with mmdet's CocoMetric, then evaluates
every trained full-DCN model again with its offsets projected to d_f or d_k at test time only.
Prints mean +- std bbox AP per row over the seeds, and the wall time. Finished runs are reused
(their metrics are read back from the run directory), so an interrupted ablation resumes.
A benchmark, not a test: its numbers say whatever they say.
"""
import argparse
import json
import os
import os.path as osp
import statistics
import time

from mmengine.config import Config

from deform_viz.datasets import make_synthetic_coco
from deform_viz.engine import evaluate, load_config, set_schedule, train, use_synthetic_data

CONFIG_DIR = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'configs', 'synthetic')
# (row name, baseline/d_f/d_k marks as in the paper, config file)
ROWS = (
    ('baseline', '✓', '', '', 'faster-rcnn_r50-w16_fpn_synthetic.py'),
    ('d_f only', '', '✓', '', 'faster-rcnn_r50-w16-dconv-df-c3-c5_fpn_synthetic.py'),
    ('d_k only', '', '', '✓', 'faster-rcnn_r50-w16-dconv-dk-c3-c5_fpn_synthetic.py'),
    ('full DCN', '', '✓', '✓', 'faster-rcnn_r50-w16-dconv-c3-c5_fpn_synthetic.py'),
    ('local DK s4', '', '', '', 'faster-rcnn_r50-w16-dkernel-local-s4-c3-c5_fpn_synthetic.py'),
)
FULL_DCN = 'full DCN'
TEST_TIME_PROJECTIONS = (('full DCN, d_f at test', 'df'), ('full DCN, d_k at test', 'dk'))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='CPU-scale d_f / d_k / DCN / DK ablation')
    parser.add_argument('--work-dir', default='work_dirs/mini_ablation')
    parser.add_argument('--data-root', default='data/synthetic')
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--iters', type=int, default=None,
                        help="training iterations per run (default: the configs' schedule, 600)")
    parser.add_argument('--num-train', type=int, default=160)
    parser.add_argument('--num-val', type=int, default=50)
    parser.add_argument('--image-size', type=int, default=256)
    parser.add_argument('--rows', nargs='+', choices=[r[0] for r in ROWS], default=[r[0] for r in ROWS],
                        metavar='ROW', help='rows to run (default all)')
    parser.add_argument('--format', choices=('markdown', 'json'), default='markdown')
    return parser.parse_args(argv)


def run_config(config: str, work_dir: str, settings: dict):
    """``config`` on the generated data, with the run's seed and (if set) its number of iterations."""
    cfg = load_config(config, {'randomness.seed': settings['seed']}, work_dir)
    use_synthetic_data(cfg, settings['data_root'], settings['image_size'])
    if settings['iters'] is not None:
        set_schedule(cfg, settings['iters'])
    return cfg


def bbox_ap(metrics: dict) -> float:
    # mmdet's CocoMetric returns no metrics when a model detects nothing; COCO's AP is then 0
    return float(metrics.get('coco/bbox_mAP', 0.0))


def check_settings(run_dir: str, options: dict) -> None:
    """Record the run's settings in ``run_dir``; refuse to resume or reuse a run made with others."""
    settings_file = osp.join(run_dir, 'settings.json')
    settings = json.loads(json.dumps(options))  # as stored: tuples become lists
    if osp.isfile(settings_file):
        with open(settings_file) as f:
            stored = json.load(f)
        if stored != settings:
            changed = sorted(k for k in set(stored) | set(settings) if stored.get(k) != settings.get(k))
            raise ValueError(f'{run_dir} holds a run made with other settings ({", ".join(changed)}); '
                             'pass another --work-dir or delete that directory')
        return
    os.makedirs(run_dir, exist_ok=True)
    with open(settings_file, 'w') as f:
        json.dump(settings, f, indent=2)


def train_and_test(config: str, run_dir: str, settings: dict) -> float:
    """Train (or reuse a finished run) and return its test bbox AP, cached in ``run_dir``."""
    check_settings(run_dir, settings)
    result_file = osp.join(run_dir, 'result.json')
    if osp.isfile(result_file):
        with open(result_file) as f:
            return json.load(f)['bbox_mAP']
    train(run_config(config, run_dir, settings), resume='auto')
    with open(osp.join(run_dir, 'last_checkpoint')) as f:
        checkpoint = f.read().strip()
    ap = bbox_ap(evaluate(run_config(config, osp.join(run_dir, 'test'), settings), checkpoint))
    with open(result_file, 'w') as f:
        json.dump({'bbox_mAP': ap, 'checkpoint': checkpoint}, f)
    return ap


def project_at_test(config: str, run_dir: str, settings: dict, component: str) -> float:
    """Evaluate a trained full-DCN run with its offsets projected to ``component`` at test time."""
    result_file = osp.join(run_dir, f'result_test-{component}.json')
    if osp.isfile(result_file):
        with open(result_file) as f:
            return json.load(f)['bbox_mAP']
    with open(osp.join(run_dir, 'result.json')) as f:
        checkpoint = json.load(f)['checkpoint']
    cfg = run_config(config, osp.join(run_dir, f'test-{component}'), settings)
    cfg.model.backbone.dcn.component = component
    ap = bbox_ap(evaluate(cfg, checkpoint))
    with open(result_file, 'w') as f:
        json.dump({'bbox_mAP': ap, 'checkpoint': checkpoint}, f)
    return ap


def mean_std(values):
    if not values:
        return '-'
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f'{statistics.mean(values):.3f} ± {std:.3f}'


def format_table(results: dict, seeds, marks: dict) -> str:
    lines = [f'| row | baseline | d_f | d_k | AP bbox (mean ± std, {len(seeds)} seeds) | per seed |',
             '|---|:-:|:-:|:-:|---|---|']
    for name, values in results.items():
        base, df, dk = marks.get(name, ('', '', ''))
        lines.append(f"| {name} | {base} | {df} | {dk} | {mean_std(values)} | "
                     f"{', '.join(f'{v:.3f}' for v in values)} |")
    return '\n'.join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    start = time.time()
    size = (args.image_size, args.image_size)
    data = make_synthetic_coco(args.data_root, num_train=args.num_train, num_val=args.num_val,
                               image_size=size, seed=0)
    settings = {'data_root': data['out_dir'], 'image_size': size, 'iters': args.iters}
    if args.iters is None:  # the configs' own schedule (they share one base)
        args.iters = Config.fromfile(osp.join(CONFIG_DIR, ROWS[0][-1])).train_cfg.max_iters
    rows = [r for r in ROWS if r[0] in args.rows]
    results, marks = {}, {}
    for name, base, df, dk, config_name in rows:
        marks[name] = (base, df, dk)
        config = osp.join(CONFIG_DIR, config_name)
        for seed in args.seeds:
            run_dir = osp.join(osp.abspath(args.work_dir), osp.splitext(config_name)[0], f'seed{seed}')
            print(f'\n=== {name}, seed {seed} ===', flush=True)
            ap = train_and_test(config, run_dir, {**settings, 'seed': seed})
            results.setdefault(name, []).append(ap)
            if name == FULL_DCN:
                for projected, component in TEST_TIME_PROJECTIONS:
                    results.setdefault(projected, []).append(
                        project_at_test(config, run_dir, {**settings, 'seed': seed}, component))
    minutes = (time.time() - start) / 60
    # order: the paper's rows, then DK, then the test-time projections
    ordered = {name: results[name] for name in [r[0] for r in rows] + [p[0] for p in TEST_TIME_PROJECTIONS]
               if name in results}
    report = {'seeds': args.seeds, 'iters': args.iters, 'num_train': args.num_train,
              'num_val': args.num_val, 'image_size': args.image_size, 'bbox_mAP': ordered,
              'minutes': round(minutes, 1)}
    with open(osp.join(args.work_dir, 'mini_ablation.json'), 'w') as f:
        json.dump(report, f, indent=2)
    if args.format == 'json':
        print(json.dumps(report, indent=2))
    else:
        print(f'\nMini ablation: {args.num_train} train / {args.num_val} val synthetic images at '
              f'{args.image_size}px, {args.iters} iterations, seeds {args.seeds}; wall time {minutes:.1f} min\n')
        print(format_table(ordered, args.seeds, marks))
    return report


if __name__ == '__main__':
    main()
