"""Whether this machine runs deform-viz on a GPU, and how fast: what ``tools/check_gpu.py`` reports.

1. :func:`machine_report`: torch and its CUDA, the GPUs (the driver's and torch's), mmcv's compiled
   CUDA version; :func:`missing` lists what stands between the machine and a GPU run, and
   :func:`run_tiny_mmcv_ops` runs one DCN, RoIAlign and NMS there.
2. :func:`check_layers`: every layer family on CUDA against the CPU path in float64 (output and
   the gradients of input and parameters), then under float16 and bfloat16 autocast against
   float32 on CUDA.
3. :func:`detector_steps`: one single-rank NCCL DDP ``AmpOptimWrapper`` train step of each Faster
   R-CNN COCO config (800x1333, batch 2 by default): ms per step and peak memory against the
   baseline, finite losses, and which backend each deformable layer ran.
4. :func:`goals`: the targets of docs/benchmarks.md, from per-layer timings
   (:func:`deform_viz.benchmarks.layers.benchmark_layers`) and the detector steps.
"""
import logging
import math
import os
import os.path as osp
import statistics
import time
from collections import Counter

import torch

from .._cuda_build import driver_gpus

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
#: Faster R-CNN R-50-FPN 1x COCO configs, c3-c5 variants, the baseline first.
DETECTOR_CONFIGS = {
    'baseline': 'configs/revisiting_dcn/faster-rcnn_r50_fpn_2xb4-1x_coco.py',
    'dcn': 'configs/revisiting_dcn/faster-rcnn_r50-dconv-c3-c5_fpn_2xb4-1x_coco.py',
    'dcn-df': 'configs/revisiting_dcn/faster-rcnn_r50-dconv-df-c3-c5_fpn_2xb4-1x_coco.py',
    'dcn-dk': 'configs/revisiting_dcn/faster-rcnn_r50-dconv-dk-c3-c5_fpn_2xb4-1x_coco.py',
    'dkernel-local-s4': 'configs/deformable_kernels/faster-rcnn_r50-dkernel-local-s4-c3-c5_fpn_2xb4-1x_coco.py',
    'dkernel-global-s4': 'configs/deformable_kernels/faster-rcnn_r50-dkernel-global-s4-c3-c5_fpn_2xb4-1x_coco.py',
    'dcn-dkernel-local-s4':
        'configs/deformable_kernels/faster-rcnn_r50-dconv-dkernel-local-s4-c3-c5_fpn_2xb4-1x_coco.py',
}
#: Layer families checked on CUDA: name -> conv layer config (8 -> 8 channels, 3x3, padding 1).
LAYER_FAMILIES = {
    'DCN (mmcv)': dict(type='DCN', deform_groups=1),
    'DCNv2 (mmcv)': dict(type='DCNv2', deform_groups=1),
    'dcn': dict(type='DecomposedDCN', deform_groups=2),
    'dcn-df': dict(type='DFOnlyDCN'),
    'dcn-dk': dict(type='DKOnlyDCN'),
    'dcnv2': dict(type='DecomposedDCN', modulated=True),
    'dcnv2-df': dict(type='DFOnlyDCN', modulated=True),
    'dcnv2-dk': dict(type='DKOnlyDCN', modulated=True, deform_groups=2),
    'dkernel-local-s4': dict(type='DeformableKernel', mode='local', scope=4),
    'dkernel-global-s4': dict(type='DeformableKernel', mode='global', scope=4),
    'dcn-dkernel-local-s4': dict(type='DeformableKernel', mode='local', scope=4, deform_data=True),
    'dcn-dkernel-global-s4': dict(type='DeformableKernel', mode='global', scope=4, deform_data=True),
}
FLOAT64_RTOL = 1e-9   # CUDA against CPU, both float64: different kernels, the same numbers
AUTOCAST_RTOL = 0.03  # as tests/ops/helpers.py
#: Targets on one modern GPU (docs/benchmarks.md): per layer, ratio to mmcv's DCN; per step, to the baseline.
LAYER_GOALS = {('dcn-df', 'mmcv'): 1.1, ('dcn-dk', 'mmcv'): 1.1, ('dkernel-local-s4', 'deform_viz'): 2.0}
STEP_GOALS = {'dkernel-local-s4': 1.3}


# ------------------------------------------------------------------------------------ the machine
def machine_report() -> dict:
    """What the machine has, without creating a CUDA context unless torch can use a GPU."""
    report = dict(torch=torch.__version__, torch_cuda=torch.version.cuda, driver_gpus=driver_gpus(),
                  cuda_available=torch.cuda.is_available(), gpus=[])
    if report['cuda_available']:
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            report['gpus'].append(dict(name=props.name, capability='%d.%d' % (props.major, props.minor),
                                       memory_gib=round(props.total_memory / 2 ** 30, 1)))
        report['cudnn'] = torch.backends.cudnn.version()
    try:
        import mmcv
        from mmcv.ops import get_compiling_cuda_version
        report['mmcv'] = mmcv.__version__
        report['mmcv_cuda'] = get_compiling_cuda_version()
    except ImportError as e:
        report['mmcv'], report['mmcv_cuda'] = None, f'cannot import mmcv.ops ({e})'
    return report


def missing(report: dict) -> list:
    """What keeps this machine from running deform-viz on a GPU, each with its fix; [] if nothing."""
    problems = []
    if not report['driver_gpus'] and not report['cuda_available']:
        problems.append('no NVIDIA GPU: the driver reports none (/proc/driver/nvidia/gpus, /dev/nvidia*) and torch '
                        'sees none')
    if report['torch_cuda'] is None:
        problems.append(f'torch {report["torch"]} is a CPU-only build: install a CUDA build '
                        f'(DEFORM_VIZ_TORCH_INDEX=https://download.pytorch.org/whl/cu121 bash tools/bootstrap.sh)')
    elif not report['cuda_available']:
        problems.append(f'torch (CUDA {report["torch_cuda"]}) cannot use a GPU: torch.cuda.is_available() is False '
                        f'(a driver older than CUDA {report["torch_cuda"]}, or CUDA_VISIBLE_DEVICES hides them)')
    if report['mmcv'] is None:
        problems.append(f'mmcv: {report["mmcv_cuda"]}: run bash tools/bootstrap.sh')
    elif report['mmcv_cuda'] == 'not available':
        problems.append(f'mmcv {report["mmcv"]} has CPU-only ops: rebuild them with DEFORM_VIZ_CUDA=1 bash '
                        f'tools/bootstrap.sh on a machine with the GPU (or with TORCH_CUDA_ARCH_LIST)')
    return problems


def run_tiny_mmcv_ops() -> str:
    """'' if mmcv's DCN, RoIAlign and NMS run on the GPU and match the CPU, else the error."""
    from .._cuda_build import run_tiny_ops
    try:
        run_tiny_ops('cuda')
    except Exception as e:  # an architecture the ops were not built for: "no kernel image is available"
        return f'{type(e).__name__}: {e}'
    return ''


# ------------------------------------------------------------------------------------ layer families
# Data offsets per tap whose full, d_f and d_k parts all keep >= 0.15 px from integers (where
# bilinear weights kink and a rounded offset flips a gradient): d_f = 1.45, d_k = 0.3 or -0.6, plus
# integers summing to zero over the taps. Kernel offsets move the centred taps by +-0.25 cells.
_D_K = torch.tensor([0.3] * 6 + [-0.6] * 3)
_WHOLE = torch.tensor([1., -1, 2, -2, 0, 0, 1, -1, 0])
DATA_OFFSETS = torch.stack([1.45 + _D_K + _WHOLE, 1.45 + _D_K.flip(0) - _WHOLE], dim=1).reshape(-1)
KERNEL_OFFSETS = torch.tensor([0.25, -0.25]).repeat(9)


def build_family(name: str):
    """A layer of ``LAYER_FAMILIES[name]`` whose offsets sit between pixels (and scope cells), away
    from bilinear kinks, varying by a few hundredths over the map."""
    from mmcv.cnn import build_conv_layer
    torch.manual_seed(0)
    layer = build_conv_layer(dict(LAYER_FAMILIES[name]), 8, 8, kernel_size=3, stride=1, padding=1, dilation=1,
                             bias=False)
    gen = torch.Generator().manual_seed(1)
    kernel = LAYER_FAMILIES[name]['type'] == 'DeformableKernel'
    with torch.no_grad():
        for pname in ('conv_offset', 'conv_data_offset'):
            predictor = getattr(layer, pname, None)
            if predictor is None:
                continue
            predictor.weight.copy_(torch.randn(predictor.weight.shape, generator=gen) * 0.003)
            per_tap = KERNEL_OFFSETS if kernel and pname == 'conv_offset' else DATA_OFFSETS
            offsets = per_tap.repeat(predictor.bias.numel() // 18)  # DCNv2: mask logits stay 0
            predictor.bias.copy_(torch.cat([offsets, torch.zeros(predictor.bias.numel() - offsets.numel())]))
    return layer


def _forward_backward(layer, x, cot):
    """[output, d/d input, d/d the conv's own parameters, d/d the offset predictors' parameters],
    each gradient group flattened into one vector: a predictor's bias alone gets a sum over the map
    of cancelling terms, which no rounding tolerance fits."""
    x = x.detach().requires_grad_()
    out = layer(x)
    names, params = zip(*layer.named_parameters())
    grads = torch.autograd.grad(out, [x, *params], cot.to(out.dtype))
    own = [g.flatten() for n, g in zip(names, grads[1:]) if 'offset' not in n]
    predictors = [g.flatten() for n, g in zip(names, grads[1:]) if 'offset' in n]
    return [out, grads[0], torch.cat(own), torch.cat(predictors)]


def _relative_error(a, b) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def check_layers(names=None, device='cuda', dtypes=(torch.float16, torch.bfloat16)) -> dict:
    """{family: {'float64': worst relative error on ``device`` against CPU, 'float16'/'bfloat16':
    worst relative error under autocast against float32 on ``device``, or 'error: ...'}}."""
    results = {}
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 8, 9, 10, generator=gen, dtype=torch.float64)
    cot = torch.randn(2, 8, 9, 10, generator=gen, dtype=torch.float64)
    for name in names or LAYER_FAMILIES:
        row = results[name] = {}
        layer = build_family(name).double()
        try:
            expected = _forward_backward(layer, x, cot)
            got = _forward_backward(layer.to(device), x.to(device), cot.to(device))
            row['float64'] = max(_relative_error(a, b) for a, b in zip(got, expected))
        except Exception as e:
            row['float64'] = f'error: {type(e).__name__}: {str(e)[:200]}'
        layer = layer.float().to(device)
        x32, cot32 = x.float().to(device), cot.float().to(device)
        reference = _forward_backward(layer, x32, cot32)
        for dtype in dtypes:
            key = str(dtype).split('.')[-1]
            try:
                with torch.autocast(device, dtype=dtype):
                    low = _forward_backward(layer, x32, cot32)
                if low[0].dtype != dtype:
                    row[key] = f'error: output is {low[0].dtype}, not {dtype}'
                else:
                    row[key] = max(_relative_error(a, b) for a, b in zip(low, reference))
            except Exception as e:
                row[key] = f'error: {type(e).__name__}: {str(e)[:200]}'
    return results


def layer_failures(results: dict) -> list:
    """Families whose checks fail; mmcv's own layers have no bfloat16 kernels, which is not ours to fail."""
    failures = []
    for name, row in results.items():
        for key, value in row.items():
            limit = FLOAT64_RTOL if key == 'float64' else AUTOCAST_RTOL
            if isinstance(value, str) or not value < limit:
                if '(mmcv)' in name and key == 'bfloat16':
                    continue
                failures.append(f'{name} {key}: {value}')
    return failures


# ------------------------------------------------------------------------------------ detector steps
def _init_single_rank(device: str) -> bool:
    """A process group of one rank: NCCL on a GPU, gloo on CPU (the DDP wrapper needs one).
    Whether it was started here."""
    import torch.distributed as dist
    if device == 'cuda':
        torch.cuda.set_device(0)
    if dist.is_initialized():
        return False
    os.environ.setdefault('MASTER_ADDR', '127.0.0.1')
    os.environ.setdefault('MASTER_PORT', str(29500 + os.getpid() % 1000))
    dist.init_process_group('nccl' if device == 'cuda' else 'gloo', rank=0, world_size=1)
    return True


def _record_backends(model) -> tuple:
    """Forward hooks noting, per deformable layer, its class and the op it ran; returns (counter, handles)."""
    from mmcv.ops import DeformConv2d, ModulatedDeformConv2d

    from ..layers import DecomposedDCN, DeformableKernel
    seen = {}

    def hook(module, args, output, name=None):
        if isinstance(module, DecomposedDCN):
            backend = 'mmcv' if module.uses_mmcv(args[0]) else 'torch'
        elif isinstance(module, DeformableKernel):
            backend = f'torch ({module.mode})'
        else:
            backend = 'mmcv'
        seen[name] = f'{type(module).__name__}: {backend}, {output.dtype}'.replace('torch.', '')

    handles = []
    for name, module in model.named_modules():
        if isinstance(module, (DecomposedDCN, DeformableKernel, DeformConv2d, ModulatedDeformConv2d)):
            handles.append(module.register_forward_hook(lambda m, a, o, name=name: hook(m, a, o, name)))
    return seen, handles


def detector_steps(names=None, image=(800, 1333), batch=2, steps=5, warmup=2, device='cuda') -> dict:
    """{variant: {'ms', 'x_baseline', 'peak_gib', 'x_baseline_memory', 'finite', 'backends'} or
    {'error': ...}} for :data:`DETECTOR_CONFIGS`, the baseline always first. On CUDA: NCCL DDP of
    one rank and mmengine's ``AmpOptimWrapper``; on CPU (to check this code): gloo and
    :class:`~deform_viz.engine.CPUAmpOptimWrapper`, no peak memory. The configs' learning rate is
    scaled to ``batch`` (their base batch is 16), so random weights stay finite for a few steps."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    from mmengine.logging import MMLogger
    from mmengine.model import MMDistributedDataParallel
    from mmengine.optim import build_optim_wrapper

    from .. import engine  # noqa: F401  registers CPUAmpOptimWrapper
    from .layers import detector_batch
    register_all_modules()
    MMLogger.get_current_instance().setLevel(logging.WARNING)
    started = _init_single_rank(device)
    cuda = device == 'cuda'
    data = detector_batch(image, batch)
    names = ['baseline'] + [n for n in (names or DETECTOR_CONFIGS) if n != 'baseline']
    results = {}
    for name in names:
        model = wrapped = optim = None
        try:
            cfg = Config.fromfile(osp.join(REPO, DETECTOR_CONFIGS[name]))
            cfg.model.backbone.init_cfg = None  # no download: random weights time the same
            model = MODELS.build(cfg.model).to(device)
            model.init_weights()
            wrapped = MMDistributedDataParallel(module=model, device_ids=[0] if cuda else None,
                                                broadcast_buffers=False,
                                                find_unused_parameters=cfg.get('find_unused_parameters', False))
            optim_cfg = cfg.optim_wrapper.copy()
            optim_cfg.type = 'AmpOptimWrapper' if cuda else 'CPUAmpOptimWrapper'
            if cuda:
                optim_cfg.loss_scale = 'dynamic'
            optim_cfg.optimizer.lr *= batch / 16
            optim = build_optim_wrapper(wrapped, optim_cfg)
            seen, handles = _record_backends(model)
            times, finite = [], True
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            for i in range(warmup + steps):
                if cuda:
                    torch.cuda.synchronize()
                start = time.perf_counter()
                log_vars = wrapped.train_step(data, optim)
                if cuda:
                    torch.cuda.synchronize()
                if i >= warmup:
                    times.append(time.perf_counter() - start)
                finite = finite and all(math.isfinite(float(v)) for v in log_vars.values())
            for handle in handles:
                handle.remove()
            results[name] = dict(ms=1e3 * statistics.median(times), finite=finite,
                                 peak_gib=torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else None,
                                 backends=dict(Counter(seen.values())))
        except Exception as e:
            results[name] = dict(error=f'{type(e).__name__}: {str(e)[:300]}')
        finally:
            model = wrapped = optim = None
            if cuda:
                torch.cuda.empty_cache()
    if started:
        torch.distributed.destroy_process_group()
    base = results.get('baseline', {})
    for row in results.values():
        if 'ms' in row and 'ms' in base:
            row['x_baseline'] = row['ms'] / base['ms']
            if row['peak_gib'] is not None:
                row['x_baseline_memory'] = row['peak_gib'] / base['peak_gib']
    return results


def goals(layer_rows: dict, steps: dict) -> list:
    """[(goal, measured, met)] for docs/benchmarks.md's targets."""
    out = []
    for case, limit in LAYER_GOALS.items():
        for stage, cell in (layer_rows.get(case) or {}).items():
            if isinstance(cell, dict):
                out.append((f'`{case[0]}` ({case[1]}) {stage} <= {limit}x mmcv DCN', f'{cell["x_mmcv"]:.2f}x',
                            cell['x_mmcv'] <= limit))
    for name, limit in STEP_GOALS.items():
        row = steps.get(name, {})
        if 'x_baseline' in row:
            out.append((f'`{name}` detector step <= {limit}x baseline', f'{row["x_baseline"]:.2f}x',
                        row['x_baseline'] <= limit))
    return out


# ------------------------------------------------------------------------------------ report
def format_machine(report: dict) -> str:
    lines = [f'- torch {report["torch"]}, CUDA {report["torch_cuda"] or "none (CPU-only build)"}, '
             f'torch.cuda.is_available(): {report["cuda_available"]}']
    lines.append(f'- driver GPUs: {", ".join(report["driver_gpus"]) or "none"}')
    for gpu in report['gpus']:
        lines.append(f'- torch sees {gpu["name"]} (sm {gpu["capability"]}, {gpu["memory_gib"]} GiB), '
                     f'cuDNN {report.get("cudnn")}')
    cuda = report['mmcv_cuda']
    lines.append(f'- mmcv {report["mmcv"]}, ops compiled with CUDA: {cuda}' if report['mmcv'] else f'- mmcv: {cuda}')
    return '\n'.join(lines)


def _cell(value, digits=1):
    if isinstance(value, str):
        return value
    return f'{value:.2e}' if value < 1e-2 else f'{value:.{digits}f}'


def format_layers(results: dict) -> str:
    lines = ['| layer | float64 CUDA vs CPU | float16 autocast vs float32 | bfloat16 autocast vs float32 |',
             '|---|---|---|---|']
    for name, row in results.items():
        lines.append(f'| `{name}` | ' + ' | '.join(_cell(row.get(k, '-'), 3) for k in
                                                    ('float64', 'float16', 'bfloat16')) + ' |')
    return '\n'.join(lines)


def format_steps(results: dict, image, batch) -> str:
    lines = [f'| config (c3-c5) | ms per step ({image[0]}x{image[1]}, batch {batch}) | x baseline | peak GiB | '
             f'x baseline | losses finite | deformable layers ran |', '|---|---|---|---|---|---|---|']
    for name, row in results.items():
        if 'error' in row:
            lines.append(f'| `{name}` | {row["error"]} | | | | | |')
            continue
        backends = '; '.join(f'{n} x {what}' for what, n in row['backends'].items()) or '-'
        peak = '-' if row['peak_gib'] is None else f'{row["peak_gib"]:.2f}'
        cells = [f'{row["ms"]:.1f}', _ratio(row.get('x_baseline')), peak, _ratio(row.get('x_baseline_memory')),
                 str(row['finite']), backends]
        lines.append(f'| `{name}` | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def _ratio(value) -> str:
    return '-' if value is None else f'{value:.2f}'


def format_goals(rows: list) -> str:
    lines = ['| goal | measured | met |', '|---|---|---|']
    lines += [f'| {goal} | {measured} | {"yes" if met else "NO"} |' for goal, measured, met in rows]
    return '\n'.join(lines)
