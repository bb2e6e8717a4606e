"""The embedded default, end to end on CPU: pretrained backbone -> data -> the baseline and the full
DCN of one seed, paired -> COCO evaluation with offset dumps -> figures -> the offset statistics of
the paper's claims.

    python tools/demo.py [--seed 3] [--work-dir work_dirs/demo] [--retrain] [--quick]

The two runs are the baseline and full-DCN rows of ``tools/mini_ablation.py`` for that seed (same
settings, same run directories under ``--ablation-dir``), so the ablation reuses them. The demo prints
both APs, their paired difference, and beside it the interval of the committed confirmatory table
(docs/results/mini_ablation.json), so that one run is read against the spread over seeds.
``--quick`` shrinks everything to check the pipeline in a minute or two.
"""
import argparse
import json
import os.path as osp
import shutil
import time

from deform_viz.analysis import format_markdown, headline
from deform_viz.experiments.ablation import PROJECTED_FROM, REFERENCE, REPO, ROWS, Ablation, AblationSettings
from deform_viz.experiments.paired import check_pairing
from deform_viz.experiments.records import read_json
from deform_viz.experiments.report import format_difference
from deform_viz.fileio import write_atomically
from deform_viz.pretraining import PRESETS, pretrain_backbone, selected_preset
from deform_viz.visualization import write_dump_figures

# the last deformable block of c3, c4 and c5: one figure set per stage
FIGURE_LAYERS = ('backbone.layer2.3.conv2', 'backbone.layer3.5.conv2', 'backbone.layer4.2.conv2')
QUICK = dict(iters=8, num_train=16, num_val=6, image_size=128)
COMMITTED_TABLE = osp.join(REPO, 'docs', 'results', 'mini_ablation.json')
DEMO_SEED = AblationSettings().seeds[0]  # the first confirmatory seed


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train, dump, draw and measure deformable offsets on CPU')
    parser.add_argument('--seed', type=int, default=DEMO_SEED,
                        help=f'the ablation seed whose baseline and full DCN to run (default {DEMO_SEED})')
    parser.add_argument('--work-dir', default='work_dirs/demo', help='where the figures and summary go')
    parser.add_argument('--ablation-dir', default=None,
                        help='the mini ablation work dir holding the run (default: work_dirs/mini_ablation; '
                        '--quick: inside --work-dir)')
    parser.add_argument('--data-root', default=None, help='where the dataset is generated (default: data/synthetic)')
    parser.add_argument('--retrain', action='store_true', help='train again even if the run is finished')
    parser.add_argument('--quick', action='store_true', help='tiny data and 8 iterations: checks the pipeline')
    parser.add_argument('--figure-images', type=int, default=3, help='val images to draw (default 3)')
    return parser.parse_args(argv)


def fmt(value) -> str:
    return 'n/a' if value is None else f'{value:.3f}'


def step(title: str) -> None:
    print(f'\n=== {title} ===', flush=True)


def committed_interval(path: str = COMMITTED_TABLE, metric: str = 'bbox_mAP') -> dict:
    """The committed table's full DCN - baseline in ``metric`` (a PairedDifference dict with the
    table's seeds), or {} when the table has none."""
    table = read_json(path) or {}
    return table.get('metrics', {}).get(metric, {}).get(PROJECTED_FROM, {}).get('vs_reference', {})


def main(argv=None) -> dict:
    args = parse_args(argv)
    start = time.time()
    work_dir = osp.abspath(args.work_dir)
    defaults = AblationSettings()
    settings = AblationSettings(
        seeds=[args.seed], rows=['baseline', PROJECTED_FROM],
        data_root=args.data_root or (osp.join(work_dir, 'data') if args.quick else defaults.data_root),
        work_dir=args.ablation_dir or (osp.join(work_dir, 'ablation') if args.quick else defaults.work_dir),
        **(QUICK if args.quick else {}))
    ablation = Ablation(settings)

    step('1/5 pretrained backbone')
    backbone = pretrain_backbone(PRESETS[selected_preset()])
    print(f"{backbone['checkpoint']} ({'reused' if backbone['reused'] else 'trained'}; held-out accuracy "
          f"{backbone['val_accuracy']:.3f}, chance {backbone['chance']:.3f})")

    step('2/5 dataset')
    data = ablation.make_data()
    print(f"{data['out_dir']}: {data['splits']['train']['images']} train / {data['splits']['val']['images']} "
          f"val images{' (reused)' if data['reused'] else ''}")

    step(f'3/5 train the baseline and the full DCN (seed {args.seed}, paired), evaluate, dump offsets')
    results = {}
    for variant in (REFERENCE, PROJECTED_FROM):
        if args.retrain:
            shutil.rmtree(ablation.run_dir(variant, args.seed), ignore_errors=True)
        results[variant] = ablation.train_row(ROWS[variant], args.seed, data['out_dir'])
    check_pairing({v: r['first_loss'] for v, r in results.items()})  # the same start, or no comparison
    result, run_dir = results[PROJECTED_FROM], ablation.run_dir(PROJECTED_FROM, args.seed)

    step('4/5 figures')
    figure_dir = osp.join(work_dir, 'figures')
    shutil.rmtree(figure_dir, ignore_errors=True)
    dump_dir = osp.join(run_dir, 'offsets')
    figures = write_dump_figures(dump_dir, figure_dir, FIGURE_LAYERS, max_images=args.figure_images)
    print(f'wrote {len(figures)} figures to {figure_dir}')

    step('5/5 offset analysis')
    report = ablation.offset_report(result, data['out_dir'])
    print(format_markdown(report))

    numbers = {**result['metrics'], **headline(report)}
    baseline = results[REFERENCE]['metrics']
    difference = {m: numbers[m] - baseline[m] for m in baseline}
    interval = {} if args.quick else committed_interval()
    summary = {'seed': args.seed, 'checkpoint': result['checkpoint'], 'dump_dir': dump_dir,
               'figure_dir': figure_dir, 'num_figures': len(figures), 'report': result['offset_report'],
               'numbers': numbers, 'baseline': baseline, 'difference': difference,
               'committed_interval': interval, 'minutes': round((time.time() - start) / 60, 1)}
    write_atomically(osp.join(work_dir, 'summary.json'), lambda f: json.dump(summary, f, indent=2), text=True)

    step('done')
    print(f"checkpoint   {result['checkpoint']}\noffset dumps {dump_dir}\nfigures      {figure_dir} "
          f"({len(figures)} files)\nanalysis     {result['offset_report']}\nsummary      "
          f"{osp.join(work_dir, 'summary.json')}")
    print(f"\nseed {args.seed}, on the synthetic val set (paired: the same start and data order):")
    for m, name in (('bbox_mAP', 'bbox AP'), ('bbox_mAP_75', 'AP75'), ('bbox_mean_best_iou', 'mean best IoU')):
        print(f"  {name:14s} baseline {fmt(baseline[m])}  full DCN {fmt(numbers[m])}  "
              f"difference {difference[m]:+.3f}")
    if interval:
        line = (f"  the committed table, seeds {interval['seeds']}: full DCN - baseline bbox AP "
                f"{format_difference(interval)} (90 % t-interval, {interval['verdict']})")
        if args.seed in interval['seeds']:
            line += f"; seed {args.seed} there: {interval['differences'][interval['seeds'].index(args.seed)]:+.3f}"
        print(line)
    elif not args.quick:
        print(f'  (no committed table at {COMMITTED_TABLE} to compare with)')
    print(f"in {numbers['layer']} ({numbers['num_images']} images):")
    print(f"  Spearman(sqrt box area, d_k radius at the box centre):    {fmt(numbers['dk_size_rho'])} "
          f"(p {fmt(numbers['dk_size_p'])}, {numbers['dk_size_count']} objects)")
    print(f"  inward d_f per object / background control (input px):   {fmt(numbers['inward_df'])} "
          f"(sign test p {fmt(numbers['inward_df_p'])}) / {fmt(numbers['inward_df_background'])}")
    print(f"  effective dilation on objects / background (input px):   "
          f"{fmt(numbers['effective_dilation_objects'])} / {fmt(numbers['effective_dilation_background'])}")
    print(f"  negative-divergence mask IoU with the objects / its null:  {fmt(numbers['mask_iou'])} / "
          f"{fmt(numbers['mask_null_iou'])} (p {fmt(numbers['mask_p'])})")
    print(f"layers (of {numbers['num_layers']}) where d_k grows with size / d_f points inward / the mask beats "
          f"its null, after Holm: {numbers['layers_dk_grows_with_size']} / {numbers['layers_inward_df']} / "
          f"{numbers['layers_mask_beats_null']}")
    print(f"(every row over seeds: python tools/mini_ablation.py)\nwall time {summary['minutes']} min")
    return summary


if __name__ == '__main__':
    main()
