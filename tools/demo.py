"""The embedded default, end to end on CPU: pretrained backbone -> data -> paired full-DCN training
-> COCO evaluation with offset dumps -> figures -> the offset statistics of the paper's claims.

    python tools/demo.py [--seed 0] [--work-dir work_dirs/demo] [--retrain] [--quick]

The run is the full-DCN row of ``tools/mini_ablation.py`` for that seed (same settings, same run
directory under ``--ablation-dir``), so the ablation reuses it and the demo's numbers have their
spread over seeds there. ``--quick`` shrinks everything to check the pipeline in a minute or two.
"""
import argparse
import json
import os.path as osp
import shutil
import time

from deform_viz.analysis import format_markdown, headline
from deform_viz.experiments.ablation import PROJECTED_FROM, ROWS, Ablation, AblationSettings
from deform_viz.fileio import write_atomically
from deform_viz.pretraining import PRESETS, pretrain_backbone, selected_preset
from deform_viz.visualization import write_dump_figures

# the last deformable block of c3, c4 and c5: one figure set per stage
FIGURE_LAYERS = ('backbone.layer2.3.conv2', 'backbone.layer3.5.conv2', 'backbone.layer4.2.conv2')
QUICK = dict(iters=8, num_train=16, num_val=6, image_size=128)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train, dump, draw and measure deformable offsets on CPU')
    parser.add_argument('--seed', type=int, default=0, help='the ablation seed whose full DCN to run (default 0)')
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

    step(f'3/5 train the full DCN (seed {args.seed}, paired with the baseline), evaluate, dump offsets')
    run_dir = ablation.run_dir(PROJECTED_FROM, args.seed)
    if args.retrain:
        shutil.rmtree(run_dir, ignore_errors=True)
    result = ablation.train_row(ROWS[PROJECTED_FROM], args.seed, data['out_dir'])

    step('4/5 figures')
    figure_dir = osp.join(work_dir, 'figures')
    shutil.rmtree(figure_dir, ignore_errors=True)
    dump_dir = osp.join(run_dir, 'offsets')
    figures = write_dump_figures(dump_dir, figure_dir, FIGURE_LAYERS, max_images=args.figure_images)
    print(f'wrote {len(figures)} figures to {figure_dir}')

    step('5/5 offset analysis')
    with open(result['offset_report']) as f:
        report = json.load(f)
    print(format_markdown(report))

    numbers = {**result['metrics'], **headline(report)}
    summary = {'seed': args.seed, 'checkpoint': result['checkpoint'], 'dump_dir': dump_dir,
               'figure_dir': figure_dir, 'num_figures': len(figures), 'report': result['offset_report'],
               'numbers': numbers, 'minutes': round((time.time() - start) / 60, 1)}
    write_atomically(osp.join(work_dir, 'summary.json'), lambda f: json.dump(summary, f, indent=2), text=True)

    step('done')
    print(f"checkpoint   {result['checkpoint']}\noffset dumps {dump_dir}\nfigures      {figure_dir} "
          f"({len(figures)} files)\nanalysis     {result['offset_report']}\nsummary      "
          f"{osp.join(work_dir, 'summary.json')}")
    print(f"\nseed {args.seed}; on the synthetic val set: bbox AP {fmt(numbers['bbox_mAP'])}, "
          f"AP75 {fmt(numbers['bbox_mAP_75'])}, mean best IoU {fmt(numbers['bbox_mean_best_iou'])}")
    print(f"in {numbers['layer']} ({numbers['num_images']} images):")
    print(f"  Spearman(sqrt box area, d_k radius at the box centre):    {fmt(numbers['dk_size_rho'])} "
          f"(p {fmt(numbers['dk_size_p'])}, {numbers['dk_size_count']} objects)")
    print(f"  inward d_f per object / background control (input px):   {fmt(numbers['inward_df'])} "
          f"(sign test p {fmt(numbers['inward_df_p'])}) / {fmt(numbers['inward_df_background'])}")
    print(f"  effective dilation on objects / background (input px):   "
          f"{fmt(numbers['effective_dilation_objects'])} / {fmt(numbers['effective_dilation_background'])}")
    print(f"layers (of {numbers['num_layers']}) where d_k grows with size / d_f points inward, after Holm: "
          f"{numbers['layers_dk_grows_with_size']} / {numbers['layers_inward_df']}")
    print(f"(spread over seeds: python tools/mini_ablation.py; this run {summary['minutes']} min)")
    return summary


if __name__ == '__main__':
    main()
