"""tools/bootstrap.sh's CUDA choice (deform_viz/_cuda_build.py): when mmcv gets CUDA ops, the checks
that refuse a build that cannot work, and the check of the installed ops.

The machine is faked where the decision reads it: a fake ``nvcc`` on PATH, a fake driver directory,
torch's CUDA queries monkeypatched. ``tools/bootstrap.sh`` itself runs in a copy of the checkout
whose venv interpreter skips pip and can pretend to be a CUDA build of torch.
"""
import os
import os.path as osp
import re
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import REPO
from deform_viz import _cuda_build
from deform_viz._cuda_build import BuildError, plan

GIB = 2 ** 30
NO_GPU = dict(torch_cuda='12.1', cuda_available=False, capabilities=[], gpus=[], nvcc=None, nvcc_release=None,
              cpus=2, available_bytes=24 * GIB)
ONE_H200 = dict(NO_GPU, cuda_available=True, capabilities=['9.0'], gpus=['NVIDIA H200'], nvcc='/usr/bin/nvcc',
                nvcc_release='12.4', cpus=16, available_bytes=128 * GIB)


def fake_nvcc(directory, release):
    """An ``nvcc`` script printing ``nvcc --version`` of CUDA ``release``."""
    os.makedirs(directory, exist_ok=True)
    path = osp.join(directory, 'nvcc')
    with open(path, 'w') as f:
        f.write(f'#!/bin/sh\necho "nvcc: NVIDIA (R) Cuda compiler driver"\n'
                f'echo "Cuda compilation tools, release {release}, V{release}.99"\n')
    os.chmod(path, 0o755)
    return path


# ------------------------------------------------------------------------------ the decision
def test_no_gpu_and_no_request_builds_cpu_ops_in_the_ci_cache_dir():
    """The CPU tag is the wheel directory CI caches (torch<version>-cpu): it must not change."""
    p = plan({}, **NO_GPU)
    assert (p.cuda, p.tag, p.arch_list) == (False, 'cpu', '')
    assert 'no GPU here and neither DEFORM_VIZ_CUDA=1 nor TORCH_CUDA_ARCH_LIST' in p.reason


def test_a_visible_gpu_builds_cuda_ops_for_its_architecture():
    p = plan({}, **ONE_H200)
    assert (p.cuda, p.tag, p.arch_list, p.max_jobs) == (True, 'cu121-sm90', '9.0', 16)
    assert 'NVIDIA H200' in p.reason and 'CUDA 12.4' in p.reason


def test_named_architectures_build_cuda_ops_without_a_gpu():
    machine = dict(NO_GPU, nvcc='/opt/cuda/bin/nvcc', nvcc_release='12.1')
    p = plan({'TORCH_CUDA_ARCH_LIST': '9.0 8.0;8.6+PTX'}, **machine)
    assert (p.cuda, p.tag, p.arch_list) == (True, 'cu121-sm80_86ptx_90', '8.0;8.6+PTX;9.0')
    with pytest.raises(BuildError, match=r"'sm_90' is not an architecture like 8.0"):
        plan({'TORCH_CUDA_ARCH_LIST': 'sm_90'}, **ONE_H200)


def test_a_login_node_keeps_the_cuda_ops_of_the_last_install():
    """A shared venv set up on a GPU node, bootstrapped again where there is no GPU: the CUDA ops
    stay (they run on CPU too), unless torch's CUDA changed or CPU ops are asked for."""
    previous = '1 cu121-sm80_90 8.0;9.0 16 CUDA mmcv ops (this machine has 8 GPU(s) ...)'
    p = plan({'DEFORM_VIZ_PREVIOUS_PLAN': previous}, **NO_GPU)
    assert (p.cuda, p.tag, p.arch_list) == (True, 'cu121-sm80_90', '8.0;9.0')
    assert p.reason.startswith('CUDA mmcv ops kept from the last install (sm 8.0 9.0): no GPU here')
    assert plan({'DEFORM_VIZ_PREVIOUS_PLAN': previous}, **dict(NO_GPU, torch_cuda='12.4')).tag == 'cpu'
    assert plan({'DEFORM_VIZ_PREVIOUS_PLAN': previous, 'DEFORM_VIZ_CUDA': '0'}, **NO_GPU).tag == 'cpu'
    assert plan({'DEFORM_VIZ_PREVIOUS_PLAN': '0 cpu - 2 CPU-only mmcv ops: ...'}, **NO_GPU).tag == 'cpu'


def test_cpu_ops_on_purpose_on_a_gpu_machine():
    p = plan({'DEFORM_VIZ_CUDA': '0'}, **ONE_H200)
    assert (p.cuda, p.tag) == (False, 'cpu')
    assert 'DEFORM_VIZ_CUDA=0 although this machine has 1 GPU(s); run on it with CUDA_VISIBLE_DEVICES=' in p.reason
    with pytest.raises(BuildError, match="DEFORM_VIZ_CUDA='yes': use 1"):
        plan({'DEFORM_VIZ_CUDA': 'yes'}, **ONE_H200)


def test_nvcc_of_another_major_version_is_refused_with_the_fix():
    with pytest.raises(BuildError) as info:
        plan({}, **dict(ONE_H200, nvcc='/usr/local/cuda-11.8/bin/nvcc', nvcc_release='11.8'))
    message = str(info.value)
    assert message.startswith('/usr/local/cuda-11.8/bin/nvcc is CUDA 11.8 but torch was built with CUDA 12.1')
    assert 'Put a CUDA 12.x nvcc first (CUDA_HOME=/usr/local/cuda-12.1 or PATH)' in message
    assert 'DEFORM_VIZ_TORCH_INDEX=https://download.pytorch.org/whl/cu118' in message


@pytest.mark.parametrize('machine,environ,message', [
    (dict(ONE_H200, nvcc=None), {}, r'no nvcc was found \(\$CUDA_HOME/bin, PATH, /usr/local/cuda\): install the '
                                    r'CUDA 12.1 toolkit'),
    (dict(ONE_H200, torch_cuda=None), {}, r'this torch is a CPU-only build .* DEFORM_VIZ_TORCH_INDEX='),
    (NO_GPU, {'DEFORM_VIZ_CUDA': '1'}, r'CUDA ops wanted \(DEFORM_VIZ_CUDA=1\) but torch \(CUDA 12.1\) cannot use '
                                       r'any GPU here .* TORCH_CUDA_ARCH_LIST="8.0;9.0"'),
    (dict(NO_GPU, gpus=['NVIDIA H200']), {}, r'the driver reports NVIDIA H200 but torch \(CUDA 12.1\) cannot use any '
                                             r'GPU here \(torch.cuda.is_available\(\) is False: a driver older'),
], ids=['no-nvcc', 'cpu-torch', 'asked-without-gpu', 'driver-gpu-torch-blind'])
def test_impossible_cuda_builds_are_refused(machine, environ, message):
    with pytest.raises(BuildError, match=message) as info:
        plan(environ, **machine)
    assert 'DEFORM_VIZ_CUDA=0' in str(info.value)  # the way out is always named


def test_max_jobs_is_bounded_by_memory():
    assert _cuda_build.default_max_jobs(False, 16, 8 * GIB) == 3
    assert _cuda_build.default_max_jobs(True, 16, 8 * GIB) == 2
    assert _cuda_build.default_max_jobs(True, 16, 1 * GIB) == 1
    assert _cuda_build.default_max_jobs(True, 2, 128 * GIB) == 2
    assert plan({}, **dict(ONE_H200, available_bytes=20 * GIB)).max_jobs == 5
    assert plan({'MAX_JOBS': '3'}, **ONE_H200).max_jobs == 3


# ------------------------------------------------------------------------------ the machine
def test_driver_gpus_from_proc_or_device_nodes(tmp_path):
    gpu = tmp_path / 'proc' / '0000:00:1e.0'
    gpu.mkdir(parents=True)
    (gpu / 'information').write_text('Model: \t\t NVIDIA H200\nIRQ:   \t\t 42\n')
    assert _cuda_build.driver_gpus(str(tmp_path / 'proc'), str(tmp_path / 'dev')) == ['NVIDIA H200']
    (tmp_path / 'dev').mkdir()
    for node in ('nvidia0', 'nvidia1', 'nvidiactl', 'nvidia-uvm'):
        (tmp_path / 'dev' / node).touch()
    assert _cuda_build.driver_gpus(str(tmp_path / 'none'), str(tmp_path / 'dev')) == ['NVIDIA GPU'] * 2
    assert _cuda_build.driver_gpus(str(tmp_path / 'none'), str(tmp_path / 'none')) == []


def test_fake_nvcc_on_path_is_found_and_read(tmp_path):
    nvcc = fake_nvcc(str(tmp_path / 'bin'), '11.8')
    assert _cuda_build.find_nvcc({'PATH': str(tmp_path / 'bin')}) == nvcc
    assert _cuda_build.nvcc_version(nvcc) == '11.8'
    assert _cuda_build.find_nvcc({'CUDA_HOME': str(tmp_path), 'PATH': ''}) == nvcc
    assert _cuda_build.find_nvcc({'CUDA_HOME': str(tmp_path / 'nothing'), 'PATH': str(tmp_path / 'bin')}) is None


@pytest.fixture
def machine_with_h200(monkeypatch, tmp_path):
    """torch as a CUDA 12.1 build that sees one H200 (sm 9.0), the driver reporting it."""
    monkeypatch.setattr(torch.version, 'cuda', '12.1')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda device=None: (9, 0))
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda device=None: 'NVIDIA H200')
    monkeypatch.setattr(_cuda_build, 'driver_gpus', lambda: ['NVIDIA H200'])


def test_machine_plan_with_a_fake_nvcc_of_the_wrong_version(machine_with_h200, tmp_path):
    fake_nvcc(str(tmp_path / 'bin'), '11.8')
    with pytest.raises(BuildError, match=rf'{tmp_path}/bin/nvcc is CUDA 11.8 but torch was built with CUDA 12.1'):
        _cuda_build.machine_plan({'PATH': str(tmp_path / 'bin')})
    fake_nvcc(str(tmp_path / 'bin'), '12.6')
    assert _cuda_build.machine_plan({'PATH': str(tmp_path / 'bin')}).tag == 'cu121-sm90'


# ------------------------------------------------------------------------------ the installed ops
def test_cpu_only_ops_on_a_machine_with_a_gpu_are_refused(machine_with_h200, monkeypatch):
    """mmcv with CPU-only ops (as in this CPU venv) and torch reporting a GPU: verify refuses it,
    unless the GPUs are hidden on purpose."""
    monkeypatch.setattr(_cuda_build, 'compiled_cuda_version', lambda: 'not available')
    monkeypatch.delenv('CUDA_VISIBLE_DEVICES', raising=False)
    with pytest.raises(BuildError, match=r'torch sees NVIDIA H200 but mmcv has CPU-only ops \(the cached wheel in '
                                         r'/c/w: remove it to rebuild\): every detector would stop at its first '
                                         r'RoIAlign or NMS on cuda:0'):
        _cuda_build.verify(False, '/c/w')
    with pytest.raises(BuildError, match='mmcv was meant to have CUDA ops but was compiled without CUDA'):
        _cuda_build.verify(True)
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '')
    assert _cuda_build.verify(False) == ['mmcv ops compiled for CPU only']


def test_tiny_ops_run_and_compare_on_cpu():
    _cuda_build.run_tiny_ops('cpu')


# ------------------------------------------------------------------------------ the script
@pytest.fixture
def checkout(tmp_path):
    """A copy of what tools/bootstrap.sh reads, with a venv whose python skips pip (logging its
    arguments) and runs _cuda_build.py with torch as a CPU-only build seeing no GPU, or with
    FAKE_TORCH_CUDA set, as that CUDA build seeing one sm 9.0 GPU: the same on any machine."""
    root = tmp_path / 'checkout'
    for path in ('tools/bootstrap.sh', 'setup.cfg', 'pyproject.toml', 'deform_viz/_cuda_build.py'):
        os.makedirs(root / osp.dirname(path), exist_ok=True)
        shutil.copy(osp.join(REPO, path), root / path)
    bin_dir = root / '.venv' / 'bin'
    bin_dir.mkdir(parents=True)
    prelude = ("import runpy, sys, torch; path, cuda = sys.argv[1:3]; sys.argv[:3] = [path]; "
               "torch.version.cuda = None if cuda == 'none' else cuda; "
               "torch.cuda.is_available = lambda: cuda != 'none'; "
               "torch.cuda.device_count = lambda: int(cuda != 'none'); "
               "torch.cuda.get_device_capability = lambda d=None: (9, 0); "
               "runpy.run_path(path, run_name='__main__')")
    (bin_dir / 'python').write_text(textwrap.dedent(f'''\
        #!/bin/bash
        if [[ $1 == -m && $2 == pip ]]; then echo "pip ${{*:3}}" >>"{root}/pip.log"; exit 0; fi
        if [[ $1 == -I && $2 == */_cuda_build.py ]]; then
            exec {sys.executable} -I -c "{prelude}" "$2" "${{FAKE_TORCH_CUDA:-none}}" "${{@:3}}"
        fi
        exec {sys.executable} "$@"
        '''))
    os.chmod(bin_dir / 'python', 0o755)
    tools = root / 'path'  # the browser tests' programs, so that the script never reaches for apt-get
    tools.mkdir()
    for name in ('chromium', 'chromedriver'):
        (tools / name).write_text('#!/bin/sh\n')
        os.chmod(tools / name, 0o755)
    return root


def bootstrap(checkout, path_dirs=(), **env):
    """Run the copied tools/bootstrap.sh from a shell without any venv on PATH."""
    environ = {k: v for k, v in os.environ.items() if k not in ('VIRTUAL_ENV', 'DEFORM_VIZ_CUDA',
                                                                'TORCH_CUDA_ARCH_LIST', 'CUDA_HOME', 'MAX_JOBS')}
    environ.update(env, PATH=':'.join([*map(str, path_dirs), str(checkout / 'path'), '/usr/bin', '/bin']),
                   DEFORM_VIZ_CACHE=str(checkout / 'cache'))
    return subprocess.run(['bash', str(checkout / 'tools' / 'bootstrap.sh')], env=environ, capture_output=True,
                          text=True, timeout=300)


def test_bootstrap_refuses_cuda_with_a_cpu_torch_and_writes_no_stamp(checkout):
    result = bootstrap(checkout, DEFORM_VIZ_CUDA='1')
    assert result.returncode == 1
    assert ('[bootstrap] error: CUDA ops wanted (DEFORM_VIZ_CUDA=1) but this torch is a CPU-only build'
            in result.stderr)
    assert not list((checkout / '.venv').glob('.deform-viz-*'))
    assert 'mmcv' not in (checkout / 'pip.log').read_text()  # nothing was downloaded or built


def test_bootstrap_refuses_a_mismatched_nvcc(checkout, tmp_path):
    fake_nvcc(str(tmp_path / 'cuda-11.8' / 'bin'), '11.8')
    result = bootstrap(checkout, [tmp_path / 'cuda-11.8' / 'bin'], FAKE_TORCH_CUDA='12.1')
    assert result.returncode == 1, result.stderr
    assert (f'[bootstrap] error: {tmp_path}/cuda-11.8/bin/nvcc is CUDA 11.8 but torch was built with CUDA 12.1'
            in result.stderr)
    assert not list((checkout / '.venv').glob('.deform-viz-*'))


def test_bootstrap_builds_for_the_gpu_into_a_cuda_keyed_cache(checkout, tmp_path):
    """With a matching fake nvcc, the plan is stated and the build is keyed by CUDA version and
    architecture; the fake nvcc cannot build, so the run stops at the build, before any stamp."""
    fake_nvcc(str(tmp_path / 'cuda' / 'bin'), '12.4')
    result = bootstrap(checkout, [tmp_path / 'cuda' / 'bin'], FAKE_TORCH_CUDA='12.1', MAX_JOBS='3')
    assert re.search(r'\[bootstrap\] CUDA mmcv ops \(this machine has \d+ GPU\(s\) \(.*\)\) for sm 9.0 with',
                     result.stderr)
    assert 'building mmcv 2.1.0 with CUDA ops for torch' in result.stderr
    assert '(cu121-sm90), 3 jobs' in result.stderr
    assert not list((checkout / '.venv').glob('.deform-viz-*'))
