"""torchrun entry point of the distributed dump test: runs tools/test.py's main in each process.

mmengine 0.10's ``init_dist`` calls ``torch.cuda.set_device`` even for the gloo backend, which a
CPU-only torch cannot do; the gloo process group is created here first (mmengine then reuses it).
"""
import sys

import torch
import torch.distributed as dist

from deform_viz.engine import load_tool

if __name__ == '__main__':
    if not torch.cuda.is_available() and not dist.is_initialized():
        dist.init_process_group('gloo')
    load_tool('test').main(sys.argv[1:])
