"""CPU cost of the deformable conv variants at the 3x3 conv of ResNet-50 stages c3-c5.

Every layer is built from a config dict by ``mmcv.cnn.build_conv_layer`` (the path mmdet's
ResNet takes), its offset predictors get small random weights (so samples land between
pixels, as after training), and one forward + backward (input, weight and offset gradients)
is timed. Variants are timed round-robin within one process and reported as the median over
``--repeat`` rounds divided by the median of ``nn.Conv2d`` from the same rounds, so a busy
machine slows every row alike.

Peak memory: each (variant, stage) runs once more in a fresh subprocess with glibc told to
mmap every allocation above 64 KiB (``MALLOC_MMAP_THRESHOLD_``), so freed tensors leave the
resident set at once. After a warm-up pass the peak-RSS counter is reset
(``/proc/self/clear_refs``), and the reported number is peak RSS during forward + backward
minus RSS before it: everything the pass allocates (outputs, saved tensors, gradients,
library workspaces), input and parameters excluded.

``--detector`` instead times a whole Faster R-CNN R-50-FPN train step (forward, losses,
backward, SGD step) on a synthetic 800x1333 batch, with each variant in c3-c5, against the
plain model; all models are built first and stepped round-robin, like the layers.

    python tools/benchmark_layers.py --repeat 5
    python tools/benchmark_layers.py --variants conv mmcv_dcn dcn dcn_df --stages c4 --no-memory
    python tools/benchmark_layers.py --detector --variants conv mmcv_dcn dcn dcn_df --repeat 2
"""
import argparse
import copy
import json
import logging
import os
import re
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

# name -> conv layer config for build_conv_layer ('Conv2d' is the baseline every ratio divides by)
VARIANTS = {
    'conv': dict(type='Conv2d'),
    'mmcv_dcn': dict(type='DCN', deform_groups=1),
    'mmcv_dcnv2': dict(type='DCNv2', deform_groups=1),
    'dcn': dict(type='DecomposedDCN', backend='torch'),
    'dcn_df': dict(type='DFOnlyDCN', backend='torch'),
    'dcn_dk': dict(type='DKOnlyDCN', backend='torch'),
    'dcnv2': dict(type='DecomposedDCN', modulated=True, backend='torch'),
    'dcnv2_df': dict(type='DFOnlyDCN', modulated=True, backend='torch'),
    'dcnv2_dk': dict(type='DKOnlyDCN', modulated=True, backend='torch'),
    'dkernel_local_s3': dict(type='DeformableKernel', mode='local', scope=3),
    'dkernel_local_s4': dict(type='DeformableKernel', mode='local', scope=4),
    'dkernel_global_s4': dict(type='DeformableKernel', mode='global', scope=4),
    'dcn_dkernel_local_s4': dict(type='DeformableKernel', mode='local', scope=4, deform_data=True),
    # materialises one kernel per output location; only where that fits in --naive-limit-gb
    'naive_dkernel_local_s4': dict(type='DeformableKernel', mode='local', scope=4),
}
NAIVE = 'naive_dkernel_local_s4'
# ResNet-50 stage -> (channels of the bottleneck 3x3, stride of its feature map)
STAGES = {'c3': (128, 8), 'c4': (256, 16), 'c5': (512, 32)}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--variants', nargs='+', default=list(VARIANTS), choices=list(VARIANTS),
                        metavar='NAME', help=f'subset of: {", ".join(VARIANTS)} (conv is always added)')
    parser.add_argument('--stages', nargs='+', default=list(STAGES), choices=list(STAGES))
    parser.add_argument('--repeat', type=int, default=5, help='timed rounds (median is reported)')
    parser.add_argument('--warmup', type=int, default=1, help='untimed rounds first')
    parser.add_argument('--threads', type=int, default=torch.get_num_threads())
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--image', type=int, nargs=2, default=(800, 1333), metavar=('H', 'W'),
                        help='input image size; padded to a multiple of 32 as mmdet does')
    parser.add_argument('--no-memory', dest='memory', action='store_false',
                        help='skip the per-case peak-memory subprocesses')
    parser.add_argument('--naive-limit-gb', type=float, default=4.0,
                        help='largest per-location kernel tensor the naive reference may build')
    parser.add_argument('--detector', action='store_true',
                        help='time a whole Faster R-CNN R-50-FPN train step per variant instead')
    parser.add_argument('--memory-case', nargs=2, metavar=('VARIANT', 'STAGE'), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if 'conv' not in args.variants:
        args.variants.insert(0, 'conv')
    return args


def stage_shape(stage, args):
    """(N, C, H, W) of the 3x3 conv input at ``stage`` for the (32-padded) image."""
    channels, stride = STAGES[stage]
    h, w = (-(-size // 32) * 32 for size in args.image)
    return args.batch, channels, h // stride, w // stride


class NaiveLocalDK(nn.Module):
    """Local DK that builds every output location's kernel: ``(L, O, C, K, K)`` floats."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        from deform_viz.ops.deformable_kernel import resample_kernel
        dk = self.layer
        kernel_offset = dk.conv_offset(x)  # (N, 2*K*K, Ho, Wo)
        n, _, ho, wo = kernel_offset.shape
        kernels = resample_kernel(dk.weight, kernel_offset.permute(0, 2, 3, 1).reshape(n * ho * wo, -1),
                                  dk.kernel_size)  # (N*L, O, C, K, K)
        cols = F.unfold(x, dk.kernel_size, dk.dilation, dk.padding, dk.stride)  # (N, C*K*K, L)
        out = torch.einsum('nlok,nkl->nol', kernels.reshape(n, ho * wo, kernels.shape[1], -1), cols)
        return out.view(n, -1, ho, wo)


def naive_bytes(shape, args):
    n, c, h, w = shape
    return n * h * w * c * c * 9 * 4 * 3  # kernels, their gradient and the einsum's copy


def build_layer(name, channels):
    from mmcv.cnn import build_conv_layer
    cfg = dict(VARIANTS[name])
    layer = build_conv_layer(cfg, channels, channels, kernel_size=3, stride=1, padding=1, dilation=1,
                             bias=False)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # offsets of a trained model: a fraction of a pixel to a few pixels
        for pname, p in layer.named_parameters():
            if 'offset' in pname:
                fan_in = p[0].numel() if p.dim() > 1 else 1
                p.copy_(torch.randn(p.shape, generator=gen) * (0.5 / fan_in ** 0.5 if p.dim() > 1 else 0.5))
    return NaiveLocalDK(layer) if name == NAIVE else layer


def fwd_bwd(layer, x):
    for p in layer.parameters():
        p.grad = None
    x.grad = None
    out = layer(x)
    out.backward(torch.ones_like(out))


def proc_status(*keys):
    text = open('/proc/self/status').read()
    return [int(re.search(rf'{key}:\s+(\d+) kB', text).group(1)) * 1024 for key in keys]


def memory_case(args):
    """Child process: print the peak extra resident bytes of one forward + backward."""
    import deform_viz  # noqa: F401  registers the layers
    name, stage = args.memory_case
    shape = stage_shape(stage, args)
    layer = build_layer(name, shape[1])
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1)).requires_grad_()
    fwd_bwd(layer, x)  # warm-up: library workspaces, thread pools
    for p in layer.parameters():
        p.grad = None
    x.grad = None
    before, = proc_status('VmRSS')
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # reset the peak-RSS counter
    fwd_bwd(layer, x)
    peak, = proc_status('VmHWM')
    print(json.dumps({'peak_bytes': peak - before}))


def measure_memory(name, stage, args):
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_='65536', OMP_NUM_THREADS=str(args.threads))
    cmd = [sys.executable, os.path.abspath(__file__), '--memory-case', name, stage,
           '--batch', str(args.batch), '--image', *map(str, args.image), '--threads', str(args.threads)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if result.returncode:
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])['peak_bytes']


def benchmark_layers(args):
    import deform_viz  # noqa: F401
    from mmengine.registry import MODELS
    rows = {name: {} for name in args.variants}
    for stage in args.stages:
        shape = stage_shape(stage, args)
        x = torch.randn(shape, generator=torch.Generator().manual_seed(1)).requires_grad_()
        layers = {}
        for name in args.variants:
            cfg_type = VARIANTS[name]['type']
            if cfg_type != 'Conv2d' and MODELS.get(cfg_type) is None:
                rows[name][stage] = f'not registered ({cfg_type})'
            elif name == NAIVE and naive_bytes(shape, args) > args.naive_limit_gb * 2 ** 30:
                rows[name][stage] = f'needs {naive_bytes(shape, args) / 2 ** 30:.0f} GB'
            else:
                layers[name] = build_layer(name, shape[1])
        times = {name: [] for name in layers}
        for round_ in range(args.warmup + args.repeat):
            for name, layer in layers.items():
                start = time.perf_counter()
                fwd_bwd(layer, x)
                if round_ >= args.warmup:
                    times[name].append(time.perf_counter() - start)
        base = statistics.median(times['conv'])
        for name, t in times.items():
            rows[name][stage] = {'ms': 1e3 * statistics.median(t), 'ratio': statistics.median(t) / base}
        if args.memory:
            for name in layers:
                rows[name][stage]['peak'] = measure_memory(name, stage, args)
        print(f'[{stage} {shape} done]', file=sys.stderr, flush=True)
    return rows


def layer_table(rows, args):
    head = ['variant']
    for stage in args.stages:
        n, c, h, w = stage_shape(stage, args)
        head += [f'{stage} ({c}ch {h}x{w}) x conv', f'{stage} ms']
        if args.memory:
            head.append(f'{stage} peak MiB (x mmcv DCN)')
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for name, cells in rows.items():
        line = [f'`{name}`']
        for stage in args.stages:
            cell = cells.get(stage)
            if not isinstance(cell, dict):
                line += [cell or '-', '-'] + (['-'] if args.memory else [])
                continue
            line += [f'{cell["ratio"]:.2f}', f'{cell["ms"]:.0f}']
            if args.memory:
                ref = rows.get('mmcv_dcn', {}).get(stage)
                peak = cell.get('peak')
                if peak is None:
                    line.append('failed')
                else:
                    rel = (f' ({peak / ref["peak"]:.2f})' if isinstance(ref, dict) and ref.get('peak')
                           else '')
                    line.append(f'{peak / 2 ** 20:.0f}{rel}')
        lines.append('| ' + ' | '.join(line) + ' |')
    return '\n'.join(lines)


def benchmark_detector(args):
    """Median train-step time of Faster R-CNN R-50-FPN with each variant in c3-c5."""
    import deform_viz  # noqa: F401
    from mmdet.registry import MODELS
    from mmdet.structures import DetDataSample
    from mmdet.utils import register_all_modules
    from mmengine.hub import get_config
    from mmengine.logging import MMLogger
    from mmengine.optim import OptimWrapper
    from mmengine.registry import MODELS as ROOT
    from mmengine.structures import InstanceData
    register_all_modules()
    MMLogger.get_current_instance().setLevel(logging.WARNING)  # no per-parameter init report
    base = get_config('mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py').model
    base.backbone.init_cfg = None
    h, w = args.image
    gen = torch.Generator().manual_seed(0)
    samples = []
    for _ in range(args.batch):
        sample = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w),
                                             scale_factor=(1.0, 1.0), batch_input_shape=(h, w)))
        xy = torch.rand(8, 2, generator=gen) * torch.tensor([w * 0.7, h * 0.7])
        wh = torch.rand(8, 2, generator=gen) * 200 + 32
        sample.gt_instances = InstanceData(bboxes=torch.cat([xy, xy + wh], 1),
                                           labels=torch.randint(0, 80, (8,), generator=gen))
        samples.append(sample)
    data = dict(inputs=[torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen)
                        for _ in range(args.batch)], data_samples=samples)
    rows, models = {}, {}
    for name in args.variants:
        cfg = copy.deepcopy(base)
        if name != 'conv':
            cfg_type = VARIANTS[name]['type']
            if name == NAIVE or ROOT.get(cfg_type) is None:
                rows[name] = 'skipped'
                continue
            cfg.backbone.dcn = dict(VARIANTS[name], fallback_on_stride=False)
            cfg.backbone.stage_with_dcn = (False, True, True, True)
        model = MODELS.build(cfg)
        model.init_weights()
        model.train()
        models[name] = (model, OptimWrapper(torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)))
    times = {name: [] for name in models}
    for round_ in range(args.warmup + args.repeat):  # round-robin, so load changes hit every row
        for name, (model, optim) in models.items():
            start = time.perf_counter()
            model.train_step(data, optim)
            if round_ >= args.warmup:
                times[name].append(time.perf_counter() - start)
            print(f'[round {round_} {name}: {time.perf_counter() - start:.1f} s]', file=sys.stderr, flush=True)
    rows.update({name: statistics.median(t) for name, t in times.items()})
    lines = ['| variant in c3-c5 | train step s | x plain |', '|---|---|---|']
    for name, t in rows.items():
        cells = [t, '-'] if isinstance(t, str) else [f'{t:.1f}', f'{t / rows["conv"]:.2f}']
        lines.append(f'| `{name}` | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_case:
        return memory_case(args)
    print(f'torch {torch.__version__}, {args.threads} threads, batch {args.batch}, image '
          f'{args.image[0]}x{args.image[1]}, median of {args.repeat} rounds; '
          f'command: python tools/benchmark_layers.py {" ".join(sys.argv[1:] if argv is None else argv)}\n')
    if args.detector:
        print(benchmark_detector(args))
    else:
        print(layer_table(benchmark_layers(args), args))


if __name__ == '__main__':
    main()
