"""Cost of the deformable conv variants at the 3x3 conv of ResNet-50 stages c3-c5, CPU or CUDA.

Every layer is built from a config dict by ``mmcv.cnn.build_conv_layer`` (the path mmdet's
ResNet takes), its offset predictors get small random weights (so samples land between
pixels, as after training), and one forward + backward (input, weight and offset gradients)
is timed. Rows are variant keys of :mod:`deform_viz.variants` with the implementation beside
them: ``nn.Conv2d``, ``mmcv`` (mmcv's compiled DCN op), ``deform_viz`` (this package's PyTorch
ops) or ``naive`` (local DK building one kernel per output location). All cases are timed
round-robin within one process and reported as the median over ``repeat`` rounds divided by
the medians of ``nn.Conv2d`` and of mmcv's DCN from the same rounds, so a busy machine slows
every row alike. On CUDA each pass is timed with CUDA events after a synchronize.

Peak memory. CUDA: ``torch.cuda.max_memory_allocated`` during forward + backward minus the
memory allocated before it. CPU: each case runs once more in a fresh subprocess
(``python -m deform_viz.benchmarks.layers``) with glibc told to mmap every allocation above
64 KiB (``MALLOC_MMAP_THRESHOLD_``), so freed tensors leave the resident set at once; after a
warm-up pass the peak-RSS counter is reset (``/proc/self/clear_refs``), and the number is peak
RSS during forward + backward minus RSS before it. Either way: everything the pass allocates
(outputs, saved tensors, gradients, library workspaces), input and parameters excluded.

:func:`benchmark_detector` instead times a whole Faster R-CNN R-50-FPN train step (forward,
losses, backward, SGD step) on a synthetic batch, with each variant in c3-c5, against the plain
model; all models are built first and stepped round-robin, like the layers.
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
from mmcv.cnn import build_conv_layer
from torch import nn

from ..ops import resample_kernel

# (variant key, implementation) -> conv layer config for build_conv_layer
CASES = {
    ('baseline', 'nn.Conv2d'): dict(type='Conv2d'),
    ('dcn', 'mmcv'): dict(type='DCN', deform_groups=1),
    ('dcnv2', 'mmcv'): dict(type='DCNv2', deform_groups=1),
    ('dcn', 'deform_viz'): dict(type='DecomposedDCN', backend='torch'),
    ('dcn-df', 'deform_viz'): dict(type='DFOnlyDCN', backend='torch'),
    ('dcn-dk', 'deform_viz'): dict(type='DKOnlyDCN', backend='torch'),
    ('dcnv2', 'deform_viz'): dict(type='DecomposedDCN', modulated=True, backend='torch'),
    ('dcnv2-df', 'deform_viz'): dict(type='DFOnlyDCN', modulated=True, backend='torch'),
    ('dcnv2-dk', 'deform_viz'): dict(type='DKOnlyDCN', modulated=True, backend='torch'),
    # what backend='auto' runs on CUDA: the projection, then mmcv's op
    ('dcn-df', 'mmcv'): dict(type='DFOnlyDCN', backend='mmcv'),
    ('dcn-dk', 'mmcv'): dict(type='DKOnlyDCN', backend='mmcv'),
    ('dkernel-local-s3', 'deform_viz'): dict(type='DeformableKernel', mode='local', scope=3),
    ('dkernel-local-s4', 'deform_viz'): dict(type='DeformableKernel', mode='local', scope=4),
    ('dkernel-global-s4', 'deform_viz'): dict(type='DeformableKernel', mode='global', scope=4),
    ('dcn-dkernel-local-s4', 'deform_viz'): dict(type='DeformableKernel', mode='local', scope=4,
                                                 deform_data=True),
    # materialises one kernel per output location; only where that fits in naive_limit_gb
    ('dkernel-local-s4', 'naive'): dict(type='DeformableKernel', mode='local', scope=4),
}
CONV, MMCV_DCN = ('baseline', 'nn.Conv2d'), ('dcn', 'mmcv')  # the references every ratio divides by
VARIANTS = list(dict.fromkeys(variant for variant, _ in CASES))
IMPLEMENTATIONS = list(dict.fromkeys(impl for _, impl in CASES))
# ResNet-50 stage -> (channels of the bottleneck 3x3, stride of its feature map)
STAGES = {'c3': (128, 8), 'c4': (256, 16), 'c5': (512, 32)}


def select_cases(variants, implementations) -> list:
    """The two references, then the cases of ``variants`` in ``implementations``, in :data:`CASES` order."""
    chosen = [case for case in CASES if case[0] in variants and case[1] in implementations]
    return list(dict.fromkeys([CONV, MMCV_DCN] + chosen))


def stage_shape(stage, image, batch=1):
    """(N, C, H, W) of the 3x3 conv input at ``stage`` for the (32-padded) ``image`` (H, W)."""
    channels, stride = STAGES[stage]
    h, w = (-(-size // 32) * 32 for size in image)
    return batch, channels, h // stride, w // stride


class NaiveLocalDK(nn.Module):
    """Local DK that builds every output location's kernel: ``(L, O, C, K, K)`` floats."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        dk = self.layer
        kernel_offset = dk.conv_offset(x)  # (N, 2*K*K, Ho, Wo)
        n, _, ho, wo = kernel_offset.shape
        kernels = resample_kernel(dk.weight, kernel_offset.permute(0, 2, 3, 1).reshape(n * ho * wo, -1),
                                  dk.kernel_size, dk.grid)  # (N*L, O, C, K, K)
        cols = nn.functional.unfold(x, dk.kernel_size, dk.dilation, dk.padding, dk.stride)  # (N, C*K*K, L)
        out = torch.einsum('nlok,nkl->nol', kernels.reshape(n, ho * wo, kernels.shape[1], -1), cols)
        return out.view(n, -1, ho, wo)


def naive_bytes(shape):
    n, c, h, w = shape
    return n * h * w * c * c * 9 * 4 * 3  # kernels, their gradient and the einsum's copy


def build_layer(case, channels, device):
    layer = build_conv_layer(dict(CASES[case]), channels, channels, kernel_size=3, stride=1,
                             padding=1, dilation=1, bias=False)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # offsets of a trained model: a fraction of a pixel to a few pixels
        for pname, p in layer.named_parameters():
            if 'offset' in pname:
                fan_in = p[0].numel() if p.dim() > 1 else 1
                p.copy_(torch.randn(p.shape, generator=gen) * (0.5 / fan_in ** 0.5 if p.dim() > 1 else 0.5))
    layer = NaiveLocalDK(layer) if case[1] == 'naive' else layer
    return layer.to(device)


def fwd_bwd(layer, x):
    for p in layer.parameters():
        p.grad = None
    x.grad = None
    out = layer(x)
    out.backward(torch.ones_like(out))


def timed_fwd_bwd(layer, x):
    """Seconds of one forward + backward (CUDA: between events, after a synchronize)."""
    if x.is_cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        fwd_bwd(layer, x)
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3
    start = time.perf_counter()
    fwd_bwd(layer, x)
    return time.perf_counter() - start


def stage_input(shape, device):
    return torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(device).requires_grad_()


def proc_status(*keys):
    text = open('/proc/self/status').read()
    return [int(re.search(rf'{key}:\s+(\d+) kB', text).group(1)) * 1024 for key in keys]


def memory_case(case, stage, image, batch=1) -> int:
    """Peak extra resident bytes of one forward + backward on CPU, in this (fresh) process."""
    shape = stage_shape(stage, image, batch)
    layer = build_layer(case, shape[1], 'cpu')
    x = stage_input(shape, 'cpu')
    fwd_bwd(layer, x)  # warm-up: library workspaces, thread pools
    for p in layer.parameters():
        p.grad = None
    x.grad = None
    before, = proc_status('VmRSS')
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # reset the peak-RSS counter
    fwd_bwd(layer, x)
    peak, = proc_status('VmHWM')
    return peak - before


def measure_memory(case, stage, layer, x, image, batch=1):
    """Peak bytes of one forward + backward: CUDA here, CPU in a subprocess; None if that failed."""
    if x.is_cuda:
        for p in list(layer.parameters()) + [x]:
            p.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fwd_bwd(layer, x)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    threads = torch.get_num_threads()
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_='65536', OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, '-m', 'deform_viz.benchmarks.layers', *case, stage,
           '--batch', str(batch), '--image', *map(str, image), '--threads', str(threads)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if result.returncode:
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])['peak_bytes']


def benchmark_layers(cases, stages, device='cpu', image=(800, 1333), batch=1, repeat=5, warmup=1,
                     memory=True, naive_limit_gb=4.0) -> dict:
    """{case: {stage: {'ms', 'x_conv', 'x_mmcv', 'peak'} or a reason it did not run}}; ``cases``
    must hold :data:`CONV` and :data:`MMCV_DCN`."""
    rows = {case: {} for case in cases}
    for stage in stages:
        shape = stage_shape(stage, image, batch)
        x = stage_input(shape, device)
        layers = {}
        for case in cases:
            if case[1] == 'naive' and naive_bytes(shape) > naive_limit_gb * 2 ** 30:
                rows[case][stage] = f'needs {naive_bytes(shape) / 2 ** 30:.0f} GB'
            else:
                layers[case] = build_layer(case, shape[1], device)
        times = {case: [] for case in layers}
        for round_ in range(warmup + repeat):
            for case, layer in layers.items():
                seconds = timed_fwd_bwd(layer, x)
                if round_ >= warmup:
                    times[case].append(seconds)
        medians = {case: statistics.median(t) for case, t in times.items()}
        for case, t in medians.items():
            rows[case][stage] = {'ms': 1e3 * t, 'x_conv': t / medians[CONV], 'x_mmcv': t / medians[MMCV_DCN]}
            if memory:
                rows[case][stage]['peak'] = measure_memory(case, stage, layers[case], x, image, batch)
        print(f'[{stage} {shape} done]', file=sys.stderr, flush=True)
    return rows


def layer_table(rows, stages, image, batch=1, memory=True) -> str:
    """Markdown table of :func:`benchmark_layers` rows: per stage, ratios, ms and peak MiB."""
    head = ['variant', 'implementation']
    for stage in stages:
        n, c, h, w = stage_shape(stage, image, batch)
        head += [f'{stage} ({c}ch {h}x{w}) x conv', f'{stage} x mmcv dcn', f'{stage} ms']
        if memory:
            head.append(f'{stage} peak MiB (x mmcv dcn)')
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for (variant, implementation), cells in rows.items():
        line = [f'`{variant}`', implementation]
        for stage in stages:
            cell = cells.get(stage)
            if not isinstance(cell, dict):
                line += [cell or '-', '-', '-'] + (['-'] if memory else [])
                continue
            line += [f'{cell["x_conv"]:.2f}', f'{cell["x_mmcv"]:.2f}', f'{cell["ms"]:.1f}']
            if memory:
                ref = rows[MMCV_DCN][stage].get('peak')
                peak = cell.get('peak')
                if peak is None:
                    line.append('failed')
                else:
                    line.append(f'{peak / 2 ** 20:.0f}' + (f' ({peak / ref:.2f})' if ref else ''))
        lines.append('| ' + ' | '.join(line) + ' |')
    return '\n'.join(lines)


def detector_batch(image=(800, 1333), batch=1, seed=0) -> dict:
    """A train batch for mmdet's ``train_step``: ``batch`` random uint8 images of ``image`` (H, W),
    eight random COCO boxes each."""
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    h, w = image
    gen = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(batch):
        sample = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w),
                                             scale_factor=(1.0, 1.0), batch_input_shape=(h, w)))
        xy = torch.rand(8, 2, generator=gen) * torch.tensor([w * 0.7, h * 0.7])
        wh = torch.rand(8, 2, generator=gen) * 200 + 32
        sample.gt_instances = InstanceData(bboxes=torch.cat([xy, xy + wh], 1),
                                           labels=torch.randint(0, 80, (8,), generator=gen))
        samples.append(sample)
    return dict(inputs=[torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen) for _ in range(batch)],
                data_samples=samples)


def benchmark_detector(cases, device='cpu', image=(800, 1333), batch=1, repeat=5, warmup=1) -> dict:
    """{case: median train-step seconds of Faster R-CNN R-50-FPN with the case in c3-c5, or
    'skipped'}; ``cases`` must hold :data:`CONV` and :data:`MMCV_DCN`."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.hub import get_config
    from mmengine.logging import MMLogger
    from mmengine.optim import OptimWrapper
    register_all_modules()
    MMLogger.get_current_instance().setLevel(logging.WARNING)  # no per-parameter init report
    base = get_config('mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py').model
    base.backbone.init_cfg = None
    data = detector_batch(image, batch)
    rows, models = {}, {}
    for case in cases:
        cfg = copy.deepcopy(base)
        if case[1] == 'naive':
            rows[case] = 'skipped'
            continue
        if case != CONV:
            cfg.backbone.dcn = dict(CASES[case], fallback_on_stride=False)
            cfg.backbone.stage_with_dcn = (False, True, True, True)
        model = MODELS.build(cfg).to(device)
        model.init_weights()
        model.train()
        models[case] = (model, OptimWrapper(torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)))
    times = {case: [] for case in models}
    for round_ in range(warmup + repeat):  # round-robin, so load changes hit every row
        for case, (model, optim) in models.items():
            if device == 'cuda':
                torch.cuda.synchronize()
            start = time.perf_counter()
            model.train_step(data, optim)
            if device == 'cuda':
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            if round_ >= warmup:
                times[case].append(seconds)
            print(f'[round {round_} {case[0]} ({case[1]}): {seconds:.2f} s]', file=sys.stderr, flush=True)
    rows.update({case: statistics.median(t) for case, t in times.items()})
    return rows


def detector_table(rows) -> str:
    """Markdown table of :func:`benchmark_detector` rows: seconds and ratios to the two references."""
    lines = ['| variant in c3-c5 | implementation | train step s | x plain | x mmcv dcn |',
             '|---|---|---|---|---|']
    for (variant, implementation), t in rows.items():
        cells = ([t, '-', '-'] if isinstance(t, str) else
                 [f'{t:.2f}', f'{t / rows[CONV]:.2f}', f'{t / rows[MMCV_DCN]:.2f}'])
        lines.append(f'| `{variant}` | {implementation} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def main(argv=None):
    """One case's CPU peak memory as JSON on stdout, for :func:`measure_memory`'s subprocess."""
    parser = argparse.ArgumentParser(prog='python -m deform_viz.benchmarks.layers',
                                     description="one case's peak extra resident bytes (CPU), as JSON")
    parser.add_argument('variant', choices=VARIANTS)
    parser.add_argument('implementation', choices=IMPLEMENTATIONS)
    parser.add_argument('stage', choices=list(STAGES))
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--image', type=int, nargs=2, default=(800, 1333), metavar=('H', 'W'))
    parser.add_argument('--threads', type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(json.dumps({'peak_bytes': memory_case((args.variant, args.implementation), args.stage, args.image,
                                                args.batch)}))


if __name__ == '__main__':
    main()
