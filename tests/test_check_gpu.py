"""tools/check_gpu.py: the report of a CPU-only machine (exit status 2, what is missing), and the
parts of the GPU check that run on CPU too (layer checks, detector steps, goals, tables)."""
import json
import os.path as osp
import subprocess
import sys

import pytest
import torch

from conftest import REPO
from deform_viz.benchmarks import gpu_check as gc

NO_GPU = dict(torch='2.13.0+cpu', torch_cuda=None, driver_gpus=[], cuda_available=False, gpus=[], mmcv='2.1.0',
              mmcv_cuda='not available')


@pytest.mark.skipif(torch.cuda.is_available(), reason='the CPU-only report needs a machine without a GPU')
def test_cpu_only_machine_says_what_is_missing_and_exits_2(tmp_path):
    result = subprocess.run([sys.executable, osp.join(REPO, 'tools', 'check_gpu.py'), '--out', str(tmp_path)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f'- torch {torch.__version__}, CUDA none (CPU-only build), torch.cuda.is_available(): False' in result.stdout
    assert '## Missing' in result.stdout
    assert f'- torch {torch.__version__} is a CPU-only build: install a CUDA build' in result.stdout
    assert '- mmcv 2.1.0 has CPU-only ops: rebuild them with DEFORM_VIZ_CUDA=1' in result.stdout
    assert result.stderr.strip().splitlines()[-1] == ('check_gpu.py: this machine cannot run deform-viz on a GPU '
                                                      '(3 problem(s) above); nothing was run on a GPU')
    assert 'Layer families' not in result.stdout
    saved = json.loads((tmp_path / 'report.json').read_text())
    assert saved['machine']['torch_cuda'] is None and len(saved['missing']) == 3
    assert '## Missing' in (tmp_path / 'report.md').read_text()


def test_missing_names_each_gap_with_its_fix():
    assert [p.split(':')[0] for p in gc.missing(NO_GPU)] == [
        'no NVIDIA GPU', 'torch 2.13.0+cpu is a CPU-only build', 'mmcv 2.1.0 has CPU-only ops']
    blind = dict(NO_GPU, torch='2.13.0+cu121', torch_cuda='12.1', driver_gpus=['NVIDIA H200'])
    assert gc.missing(blind)[0].startswith('torch (CUDA 12.1) cannot use a GPU: torch.cuda.is_available() is False '
                                           '(a driver older than CUDA 12.1')
    ready = dict(blind, cuda_available=True, mmcv_cuda='12.1')
    assert gc.missing(ready) == []
    assert gc.missing(dict(ready, mmcv_cuda='not available')) == [
        'mmcv 2.1.0 has CPU-only ops: rebuild them with DEFORM_VIZ_CUDA=1 bash tools/bootstrap.sh on a machine with '
        'the GPU (or with TORCH_CUDA_ARCH_LIST)']


def test_layer_checks_run_their_code_on_cpu():
    """device='cpu': float64 against itself is exact, bfloat16 within the autocast limit; mmcv's own
    DCN has no bfloat16 CPU kernel, which is reported and not counted as a failure."""
    results = gc.check_layers(['dcn-df', 'dkernel-local-s4', 'DCN (mmcv)'], device='cpu', dtypes=(torch.bfloat16,))
    assert results['dcn-df']['float64'] == 0 and results['dkernel-local-s4']['float64'] == 0
    assert results['dcn-df']['bfloat16'] < gc.AUTOCAST_RTOL and results['dkernel-local-s4']['bfloat16'] < 0.03
    assert results['DCN (mmcv)']['bfloat16'].startswith('error: NotImplementedError')
    assert gc.layer_failures(results) == []
    results['dcn-df']['float64'] = 1e-5
    assert gc.layer_failures(results) == ['dcn-df float64: 1e-05']
    table = gc.format_layers(results)
    assert '| `dkernel-local-s4` | 0.00e+00 | - |' in table


def test_goals_and_tables_from_measured_rows():
    layer_rows = {('dcn-df', 'mmcv'): {'c3': {'x_mmcv': 1.05, 'x_conv': 2.0, 'ms': 1.0}},
                  ('dkernel-local-s4', 'deform_viz'): {'c3': {'x_mmcv': 2.4, 'x_conv': 5.0, 'ms': 2.0}}}
    steps = {'baseline': dict(ms=100.0, peak_gib=4.0, finite=True, backends={}, x_baseline=1.0,
                              x_baseline_memory=1.0),
             'dkernel-local-s4': dict(ms=125.0, peak_gib=5.0, finite=True, x_baseline=1.25, x_baseline_memory=1.25,
                                      backends={'DeformableKernel: torch (local), float16': 13}),
             'dcn': dict(error='RuntimeError: boom')}
    assert gc.goals(layer_rows, steps) == [('`dcn-df` (mmcv) c3 <= 1.1x mmcv DCN', '1.05x', True),
                                           ('`dkernel-local-s4` (deform_viz) c3 <= 2.0x mmcv DCN', '2.40x', False),
                                           ('`dkernel-local-s4` detector step <= 1.3x baseline', '1.25x', True)]
    table = gc.format_steps(steps, (800, 1333), 2)
    assert ('| `dkernel-local-s4` | 125.0 | 1.25 | 5.00 | 1.25 | True | 13 x DeformableKernel: torch (local), '
            'float16 |') in table
    assert '| `dcn` | RuntimeError: boom |' in table
    assert '| NO |' in gc.format_goals(gc.goals(layer_rows, steps))


@pytest.mark.slow
def test_detector_steps_run_their_code_on_cpu():
    """The train-step code on CPU (gloo, CPUAmpOptimWrapper) at a tiny size: finite losses, and every
    c3-c5 conv of the DK config recorded with the op it ran, under bfloat16."""
    import torch.distributed as dist
    steps = gc.detector_steps(['dkernel-local-s4'], image=(96, 128), batch=1, steps=1, warmup=0, device='cpu')
    assert list(steps) == ['baseline', 'dkernel-local-s4']
    assert all(row['finite'] and row['peak_gib'] is None for row in steps.values()), steps
    assert steps['baseline']['backends'] == {} and steps['baseline']['x_baseline'] == 1
    assert steps['dkernel-local-s4']['backends'] == {'DeformableKernel: torch (local), bfloat16': 13}
    assert not dist.is_initialized()  # the group it started is gone
