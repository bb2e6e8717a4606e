"""The embedded default, end to end on CPU: data -> train -> evaluate + dump offsets -> figures -> numbers.

    python tools/demo.py [--work-dir work_dirs/demo] [--data-root data/synthetic] [--retrain] [--quick]

1. generates the synthetic shapes dataset (deform_viz.datasets), reused when already complete;
2. trains the small Faster R-CNN with deformable convs in c3-c5 (deform_viz.engine.train),
   resuming or reusing a finished run unless --retrain;
3. evaluates it with COCO metrics while OffsetDumpHook dumps the offsets of every val image
   (deform_viz.engine.evaluate with dump_offsets);
4. draws Figures 1-3 and sampling locations for a few val images (deform_viz.visualization);
5. measures the offsets against the ground truth (deform_viz.analysis.analyze_offsets);
and prints where everything is and the headline numbers. ``--quick`` shrinks every step so the
whole pipeline runs in about a minute (used by the tests).
"""
import argparse
import json
import os.path as osp
import shutil
import time

from mmengine.config import DictAction

from deform_viz.analysis import analyze_offsets, format_markdown, headline
from deform_viz.datasets import make_synthetic_coco
from deform_viz.engine import evaluate, load_config, set_schedule, train, use_synthetic_data
from deform_viz.visualization import write_dump_figures

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(REPO, 'configs', 'synthetic', 'faster-rcnn_r50-w16-dconv-c3-c5_fpn_synthetic.py')
# the last deformable block of c3, c4 and c5: one figure set per stage
FIGURE_LAYERS = ('backbone.layer2.3.conv2', 'backbone.layer3.5.conv2', 'backbone.layer4.2.conv2')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train, dump, draw and measure deformable offsets on CPU')
    parser.add_argument('--work-dir', default='work_dirs/demo', help='where every artifact goes')
    parser.add_argument('--data-root', default='data/synthetic', help='where the dataset is generated')
    parser.add_argument('--retrain', action='store_true', help='train again even if a finished run exists')
    parser.add_argument('--quick', action='store_true',
                        help='tiny dataset and 8 iterations: checks the pipeline, learns nothing')
    parser.add_argument('--figure-images', type=int, default=3, help='val images to draw (default 3)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                        help='extra key=value overrides for the training config')
    return parser.parse_args(argv)


def step(title: str) -> None:
    print(f'\n=== {title} ===', flush=True)


def main(argv=None) -> dict:
    args = parse_args(argv)
    start = time.time()
    work_dir = osp.abspath(args.work_dir)
    train_dir, test_dir = osp.join(work_dir, 'train'), osp.join(work_dir, 'test')
    dump_dir, figure_dir = osp.join(work_dir, 'offsets'), osp.join(work_dir, 'figures')
    report_file = osp.join(work_dir, 'offset_report.json')

    step('1/5 dataset')
    size = dict(num_train=16, num_val=6, image_size=(160, 160)) if args.quick else \
        dict(num_train=160, num_val=50, image_size=(256, 256))
    data = make_synthetic_coco(args.data_root, seed=0, **size)
    print(f"{data['out_dir']}: {data['splits']['train']['images']} train / {data['splits']['val']['images']} val images"
          f"{' (reused)' if data['reused'] else ''}")

    def config(work_dir):
        cfg = load_config(CONFIG, args.cfg_options, work_dir)
        use_synthetic_data(cfg, data['out_dir'], size['image_size'])
        if args.quick:
            set_schedule(cfg, 8, warmup_iters=4)
            cfg.default_hooks.logger.interval = 1
        return cfg

    step('2/5 train (mmengine log below)')
    if args.retrain and osp.isdir(train_dir):
        shutil.rmtree(train_dir)
    train(config(train_dir), resume='auto')
    with open(osp.join(train_dir, 'last_checkpoint')) as f:
        checkpoint = f.read().strip()

    step('3/5 evaluate with COCO metrics and dump offsets')
    shutil.rmtree(dump_dir, ignore_errors=True)  # dumps belong to one checkpoint
    metrics = evaluate(config(test_dir), checkpoint, dump_offsets=dump_dir)

    step('4/5 figures')
    shutil.rmtree(figure_dir, ignore_errors=True)
    figures = write_dump_figures(dump_dir, figure_dir, FIGURE_LAYERS, max_images=args.figure_images)
    print(f'wrote {len(figures)} figures to {figure_dir}')

    step('5/5 offset analysis')
    report = analyze_offsets(dump_dir, data['splits']['val']['ann_file'])
    print(format_markdown(report))
    with open(report_file, 'w') as f:
        json.dump(report, f, indent=1, allow_nan=False)

    numbers = {'bbox_mAP': metrics.get('coco/bbox_mAP'), **headline(report)}
    summary = {'checkpoint': checkpoint, 'dump_dir': dump_dir, 'figure_dir': figure_dir,
               'num_figures': len(figures), 'report': report_file, 'numbers': numbers,
               'minutes': round((time.time() - start) / 60, 1)}
    with open(osp.join(work_dir, 'summary.json'), 'w') as f:
        json.dump(summary, f, indent=2)

    step('done')
    print(f"checkpoint   {checkpoint}\noffset dumps {dump_dir}\nfigures      {figure_dir} "
          f"({len(figures)} files)\nanalysis     {report_file}\nsummary      {osp.join(work_dir, 'summary.json')}")
    fmt = (lambda v: 'n/a' if v is None else f'{v:.3f}')
    print(f"\nCOCO bbox mAP on the synthetic val set:                     {fmt(numbers['bbox_mAP'])}")
    print(f"in {numbers['layer']} ({numbers['num_images']} images):")
    print(f"  Spearman(sqrt box area, d_k radius at the box centre):    {fmt(numbers['dk_size_rho'])} "
          f"(p {fmt(numbers['dk_size_p'])}, {numbers['dk_size_count']} objects)")
    print(f"  inward d_f per object / background control (input px):   {fmt(numbers['inward_df'])} / "
          f"{fmt(numbers['inward_df_background'])}")
    print(f"  effective dilation on objects / background (input px):   "
          f"{fmt(numbers['effective_dilation_objects'])} / {fmt(numbers['effective_dilation_background'])}")
    print(f"layers (of {numbers['num_layers']}) where d_k grows with size / d_f points inward, after Holm: "
          f"{numbers['layers_dk_grows_with_size']} / {numbers['layers_inward_df']}  ({summary['minutes']} min)")
    return summary


if __name__ == '__main__':
    main()
