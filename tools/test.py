"""Evaluate a checkpoint with an mmdet config; deform_viz is imported so its layers and hooks resolve.

Same arguments as mmdet's tools/test.py:
    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out RESULTS.pkl] [--show-dir DIR]
                                            [--cfg-options k=v ...] [--launcher ...]
plus ``--dump-offsets DIR [--dump-options k=v ...]`` to record offset fields (OffsetDumpHook).
"""
import argparse
import os
import os.path as osp
import sys

from mmengine.config import DictAction

import deform_viz  # noqa: F401  registers layers, hooks and checks the OpenMMLab stack
from deform_viz.checkpoint_check import CheckpointMismatchError
from deform_viz.engine import evaluate, load_config


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test (and evaluate) a detector')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the dir to save the evaluation metrics')
    parser.add_argument('--out', help='dump predictions to a pickle file for offline evaluation')
    parser.add_argument('--show-dir', help='save painted predictions to work_dir/timestamp/SHOW_DIR')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value pairs, e.g. '
                        'model.backbone.dcn.type=DKOnlyDCN')
    parser.add_argument('--dump-offsets', metavar='DIR',
                        help='record the offset fields of the deformable layers (and the sampling points of '
                        'MultiScaleDeformableAttention) into DIR, one .npz '
                        'per image (OffsetDumpHook; format in deform_viz/dump.py)')
    parser.add_argument('--dump-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
                        help='OffsetDumpHook options, e.g. max_images=100 layers=backbone.layer4.* '
                        'components=d_f,divergence dtype=float32 max_bytes=20GB resume=True encoder_stride=1 '
                        'decoder_queries=detections')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if args.dump_options and not args.dump_offsets:
        parser.error('--dump-options needs --dump-offsets DIR')
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args.config, args.cfg_options, args.work_dir, args.launcher)
    return evaluate(cfg, args.checkpoint, dump_offsets=args.dump_offsets, dump_options=args.dump_options,
                    out=args.out, show_dir=args.show_dir)


if __name__ == '__main__':
    try:
        main()
    except CheckpointMismatchError as e:  # the message says what to change; the traceback would not
        sys.exit(f'{osp.basename(sys.argv[0])}: error: {e}')
