"""Train a detector from an mmdet config; deform_viz is imported so its layers and hooks resolve.

Same arguments as mmdet's tools/train.py:
    python tools/train.py CONFIG [--work-dir DIR] [--cfg-options k=v ...] [--resume [CKPT]]
                                 [--amp] [--auto-scale-lr] [--launcher {none,pytorch,slurm,mpi}]
"""
import argparse
import os
import os.path as osp
import sys

from mmengine.config import DictAction

import deform_viz  # noqa: F401  registers layers, hooks and checks the OpenMMLab stack
from deform_viz.checkpoint_check import CheckpointMismatchError
from deform_viz.engine import load_config, train


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a detector')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument('--amp', action='store_true', help='enable automatic mixed precision training')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the LR by total batch size / auto_scale_lr.base_batch_size')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from CKPT, or from the latest checkpoint in the work dir if no '
                        'path is given')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value pairs, e.g. '
                        'model.backbone.dcn.type=DFOnlyDCN train_cfg.max_epochs=1')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args.config, args.cfg_options, args.work_dir, args.launcher)
    return train(cfg, amp=args.amp, auto_scale_lr=args.auto_scale_lr, resume=args.resume)


if __name__ == '__main__':
    try:
        main()
    except CheckpointMismatchError as e:  # the message says what to change; the traceback would not
        sys.exit(f'{osp.basename(sys.argv[0])}: error: {e}')
