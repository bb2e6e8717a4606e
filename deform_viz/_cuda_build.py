"""Whether mmcv's ops are built with CUDA, the checks around that choice, and the GPUs a machine has.

``tools/bootstrap.sh`` runs this file before mmcv is installed, so it imports only the standard
library (and torch, inside the functions that need it), and runs isolated from the checkout
(``python -I deform_viz/_cuda_build.py plan|verify``). The package imports :func:`driver_gpus`
and :func:`cpu_requested` from it.

The choice (:func:`plan`): CUDA ops when ``DEFORM_VIZ_CUDA=1``, when ``TORCH_CUDA_ARCH_LIST``
names architectures (a node without a GPU can build for them), or when the machine has a GPU;
CPU-only ops when ``DEFORM_VIZ_CUDA=0`` or when there is no GPU and nothing asks for CUDA. A CUDA
build needs a CUDA build of torch and an nvcc of the same major version; the wheel cache and the
stamp carry the CUDA version and the architectures, so a venv built without CUDA is rebuilt on a
machine that has a GPU.
"""
import glob
import os
import re
import shutil
import subprocess
import sys
from typing import List, NamedTuple, Optional, Sequence

FIX_TORCH = ('install a CUDA build of torch (e.g. DEFORM_VIZ_TORCH_INDEX=https://download.pytorch.org/whl/cu121 '
             'bash tools/bootstrap.sh)')
FIX_CPU = 'or build CPU-only ops on purpose with DEFORM_VIZ_CUDA=0'
#: Peak resident memory of one compiler job, GiB: mmcv's pybind.cpp took 2.5 with g++ 12, nvcc's
#: jobs more (host compiler and cicc of one .cu file at once).
JOB_MEMORY_GIB = {False: 2.5, True: 4.0}


class BuildError(RuntimeError):
    """The requested build cannot work on this machine; the message says what to change."""


class Plan(NamedTuple):
    cuda: bool
    tag: str           # wheel-cache key beside the torch version: 'cpu' or e.g. 'cu121-sm80_90'
    arch_list: str     # TORCH_CUDA_ARCH_LIST for the build ('' for CPU)
    max_jobs: int
    reason: str        # one line for the log


def driver_gpus(proc: str = '/proc/driver/nvidia/gpus', dev: str = '/dev') -> List[str]:
    """Names of the NVIDIA GPUs the kernel driver reports, whether or not torch can use them.

    Read from ``/proc/driver/nvidia/gpus/*/information``; without it, one 'NVIDIA GPU' per
    ``/dev/nvidiaN`` device node. Neither needs CUDA, torch or a working driver library.
    """
    names = []
    for info in sorted(glob.glob(os.path.join(proc, '*', 'information'))):
        try:
            text = open(info).read()
        except OSError:
            continue
        model = re.search(r'^Model:\s*(.+)$', text, re.MULTILINE)
        names.append(model.group(1).strip() if model else 'NVIDIA GPU')
    if names:
        return names
    nodes = [p for p in glob.glob(os.path.join(dev, 'nvidia*')) if re.fullmatch(r'nvidia\d+', os.path.basename(p))]
    return ['NVIDIA GPU'] * len(nodes)


def cpu_requested(environ=os.environ) -> bool:
    """Whether the user hid every GPU on purpose: ``CUDA_VISIBLE_DEVICES`` empty or -1."""
    value = environ.get('CUDA_VISIBLE_DEVICES')
    return value is not None and value.strip() in ('', '-1')


def find_nvcc(environ=os.environ) -> Optional[str]:
    """The nvcc torch's extension builder would use: $CUDA_HOME, $CUDA_PATH, nvcc on PATH, /usr/local/cuda."""
    for var in ('CUDA_HOME', 'CUDA_PATH'):
        if environ.get(var):
            path = os.path.join(environ[var], 'bin', 'nvcc')
            return path if os.access(path, os.X_OK) else None
    found = shutil.which('nvcc', path=environ.get('PATH'))
    if found:
        return found
    default = '/usr/local/cuda/bin/nvcc'
    return default if os.access(default, os.X_OK) else None


def nvcc_version(nvcc: str) -> str:
    """'12.1' from ``nvcc --version`` ("Cuda compilation tools, release 12.1, V12.1.105")."""
    try:
        out = subprocess.run([nvcc, '--version'], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BuildError(f'{nvcc} --version failed ({e})') from e
    match = re.search(r'release (\d+)\.(\d+)', out)
    if not match:
        raise BuildError(f'cannot read the CUDA version from `{nvcc} --version`: {out.strip()[:200]!r}')
    return f'{match.group(1)}.{match.group(2)}'


def normalise_arch_list(arch_list: str) -> List[str]:
    """'9.0 8.0;8.6+PTX' -> ['8.0', '8.6+PTX', '9.0']; an error for anything but N.N[+PTX]."""
    arches = [a for a in re.split(r'[;\s,]+', arch_list.strip()) if a]
    for arch in arches:
        if not re.fullmatch(r'\d+\.\d+[a-z]?(\+PTX)?', arch):
            raise BuildError(f'TORCH_CUDA_ARCH_LIST={arch_list!r}: {arch!r} is not an architecture like 8.0 or 9.0+PTX')
    return sorted(set(arches), key=lambda a: (float(re.match(r'\d+\.\d+', a).group()), a))


def default_max_jobs(cuda: bool, cpus: int, available_bytes: Optional[int]) -> int:
    """Compiler jobs: one per CPU, no more than the available memory holds (JOB_MEMORY_GIB each)."""
    if available_bytes is None:
        return max(1, cpus)
    return max(1, min(cpus, int(available_bytes / (JOB_MEMORY_GIB[cuda] * 2 ** 30))))


def available_memory(meminfo: str = '/proc/meminfo') -> Optional[int]:
    try:
        match = re.search(r'^MemAvailable:\s+(\d+) kB', open(meminfo).read(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


def plan(environ, torch_cuda: Optional[str], cuda_available: bool, capabilities: Sequence[str],
         gpus: Sequence[str], nvcc: Optional[str], nvcc_release: Optional[str], cpus: int,
         available_bytes: Optional[int]) -> Plan:
    """The build to make, from what the machine reports (see the module docstring).

    ``torch_cuda``: ``torch.version.cuda`` (None for a CPU build); ``capabilities``: 'M.m' of
    each GPU torch can use; ``gpus``: :func:`driver_gpus`; ``nvcc_release``: its 'M.m'.
    """
    wanted = environ.get('DEFORM_VIZ_CUDA', '').strip().lower()
    if wanted not in ('', 'auto', '0', '1'):
        raise BuildError(f'DEFORM_VIZ_CUDA={environ["DEFORM_VIZ_CUDA"]!r}: use 1 (CUDA ops), 0 (CPU-only ops) '
                         f'or leave it unset (CUDA ops when a GPU or TORCH_CUDA_ARCH_LIST is there)')
    named = environ.get('TORCH_CUDA_ARCH_LIST', '').strip()

    def jobs(cuda):
        if environ.get('MAX_JOBS'):
            return int(environ['MAX_JOBS'])
        return default_max_jobs(cuda, cpus, available_bytes)

    if wanted == '0':
        why = 'DEFORM_VIZ_CUDA=0'
        if gpus or cuda_available:
            why += (f' although this machine has {len(gpus) or "a"} GPU(s); run on it with CUDA_VISIBLE_DEVICES= '
                    f'(import deform_viz refuses CPU-only ops while torch sees a GPU)')
        return Plan(False, 'cpu', '', jobs(False), f'CPU-only mmcv ops: {why}')
    if wanted == '1':
        why = 'DEFORM_VIZ_CUDA=1'
    elif named:
        why = f'TORCH_CUDA_ARCH_LIST={named}'
    elif cuda_available or gpus:
        why = f'this machine has {len(gpus) or len(capabilities)} GPU(s) ({", ".join(gpus or ["seen by torch"])})'
    else:
        kept = _kept_cuda_plan(environ.get('DEFORM_VIZ_PREVIOUS_PLAN', ''), torch_cuda, jobs(True))
        if kept is not None:  # a shared venv set up on a GPU node, now bootstrapped on a login node
            return kept
        return Plan(False, 'cpu', '', jobs(False),
                    'CPU-only mmcv ops: no GPU here and neither DEFORM_VIZ_CUDA=1 nor TORCH_CUDA_ARCH_LIST asks '
                    'for CUDA')

    if not torch_cuda:
        raise BuildError(f'CUDA ops wanted ({why}) but this torch is a CPU-only build (torch.version.cuda is '
                         f'None): {FIX_TORCH}, {FIX_CPU}')
    if named:
        arches = normalise_arch_list(named)
    elif capabilities:
        arches = sorted(set(capabilities), key=float)
    else:
        seen = f'the driver reports {", ".join(gpus)} but ' if gpus else ''
        raise BuildError(f'CUDA ops wanted ({why}) but {seen}torch (CUDA {torch_cuda}) '
                         f'cannot use any GPU here (torch.cuda.is_available() is False: a driver older than '
                         f'the CUDA {torch_cuda} runtime, or no GPU on this node), so the architectures are '
                         f'unknown: name them, e.g. TORCH_CUDA_ARCH_LIST="8.0;9.0", {FIX_CPU}')
    if nvcc is None:
        raise BuildError(f'CUDA ops wanted ({why}) but no nvcc was found ($CUDA_HOME/bin, PATH, /usr/local/cuda): '
                         f'install the CUDA {torch_cuda} toolkit and put its bin/ on PATH or set CUDA_HOME, '
                         f'{FIX_CPU}')
    if nvcc_release.split('.')[0] != torch_cuda.split('.')[0]:
        raise BuildError(f'{nvcc} is CUDA {nvcc_release} but torch was built with CUDA {torch_cuda}: mmcv built by '
                         f'this nvcc would not load into this torch. Put a CUDA {torch_cuda.split(".")[0]}.x nvcc '
                         f'first (CUDA_HOME=/usr/local/cuda-{torch_cuda} or PATH), or install a torch built for '
                         f'CUDA {nvcc_release} (DEFORM_VIZ_TORCH_INDEX=https://download.pytorch.org/whl/'
                         f'cu{nvcc_release.replace(".", "")}), {FIX_CPU}')
    arch_tag = '_'.join(a.replace('.', '').replace('+PTX', 'ptx') for a in arches)
    tag = f'cu{torch_cuda.replace(".", "")}-sm{arch_tag}'
    return Plan(True, tag, ';'.join(arches), jobs(True),
                f'CUDA mmcv ops ({why}) for sm {" ".join(arches)} with {nvcc} (CUDA {nvcc_release})')


def _kept_cuda_plan(previous: str, torch_cuda: Optional[str], max_jobs: int) -> Optional[Plan]:
    """The last install's CUDA plan (its stamp's line), if this torch has its CUDA version: CUDA ops
    also run on a node without a GPU, so a machine that cannot choose keeps them."""
    fields = previous.split(maxsplit=4)
    if len(fields) < 4 or fields[0] != '1' or not torch_cuda or not fields[1].startswith(
            f'cu{torch_cuda.replace(".", "")}-'):
        return None
    return Plan(True, fields[1], fields[2], max_jobs,
                f'CUDA mmcv ops kept from the last install (sm {fields[2].replace(";", " ")}): no GPU here to '
                f'choose others (DEFORM_VIZ_CUDA=0 for CPU-only ops)')


def machine_plan(environ=os.environ) -> Plan:
    """:func:`plan` for this machine and the torch of this interpreter."""
    import torch
    cuda_available = torch.cuda.is_available()
    capabilities = []
    if cuda_available:
        capabilities = ['%d.%d' % torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())]
    nvcc = find_nvcc(environ)
    release = None
    if nvcc is not None and (torch.version.cuda and (environ.get('DEFORM_VIZ_CUDA') != '0')):
        release = nvcc_version(nvcc)
    return plan(environ, torch.version.cuda, cuda_available, capabilities, driver_gpus(), nvcc, release,
                os.cpu_count() or 1, available_memory())


# ------------------------------------------------------------------------------------ after install
def compiled_cuda_version() -> str:
    """The CUDA version mmcv's ops were compiled with, 'not available' for CPU-only ops."""
    from mmcv.ops import get_compiling_cuda_version
    return get_compiling_cuda_version()


def run_tiny_ops(device: str) -> None:
    """One tiny DCN, RoIAlign and NMS on ``device``, each checked against the CPU op (raises)."""
    import torch
    from mmcv.ops import deform_conv2d, nms, roi_align
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=gen)
    offset = torch.rand(1, 18, 8, 8, generator=gen) - 0.5
    weight = torch.randn(4, 4, 3, 3, generator=gen)
    boxes = torch.tensor([[0., 0., 4., 4.], [1., 1., 5., 5.], [4., 4., 8., 8.]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    rois = torch.tensor([[0., 0.5, 0.5, 6.5, 6.5]])

    def ops(d):
        dcn = deform_conv2d(x.to(d), offset.to(d), weight.to(d), 1, 1, 1, 1, 1, False, 32)
        align = roi_align(x.to(d), rois.to(d), (2, 2), 1.0, 2, 'avg', True)
        kept, keep = nms(boxes.to(d), scores.to(d), 0.3)
        return [t.cpu() for t in (dcn, align, kept, keep)]

    for name, got, expected in zip(('DCN', 'RoIAlign', 'NMS boxes', 'NMS indices'), ops(device), ops('cpu')):
        if not torch.allclose(got.double(), expected.double(), rtol=1e-4, atol=1e-4):
            raise BuildError(f'mmcv {name} on {device} differs from the CPU op')


def verify(expect_cuda: bool, wheel_dir: str = '') -> List[str]:
    """Check the installed mmcv against the plan; lines to log, or BuildError."""
    import torch
    compiled = compiled_cuda_version()
    has_cuda = compiled != 'not available'
    where = f' (the cached wheel in {wheel_dir}: remove it to rebuild)' if wheel_dir else ''
    if expect_cuda and not has_cuda:
        raise BuildError(f'mmcv was meant to have CUDA ops but was compiled without CUDA{where}')
    lines = [f'mmcv ops compiled with CUDA {compiled}' if has_cuda else 'mmcv ops compiled for CPU only']
    if not torch.cuda.is_available():
        if has_cuda:
            lines.append('no GPU that torch can use here: the CUDA ops were not run')
        return lines
    if not has_cuda:
        if cpu_requested():
            return lines
        raise BuildError(f'torch sees {torch.cuda.get_device_name(0)} but mmcv has CPU-only ops{where}: every '
                         f'detector would stop at its first RoIAlign or NMS on cuda:0. Rebuild with '
                         f'DEFORM_VIZ_CUDA=1 on this machine')
    try:
        run_tiny_ops('cuda')
    except Exception as e:  # an architecture mismatch surfaces as "no kernel image is available"
        raise BuildError(f'mmcv\'s CUDA ops fail on {torch.cuda.get_device_name(0)} (sm '
                         f'{"%d.%d" % torch.cuda.get_device_capability(0)}): {e}{where}') from e
    lines.append(f'DCN, RoIAlign and NMS ran on {torch.cuda.get_device_name(0)} and match the CPU ops')
    return lines


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ['plan']:  # one line for bash's read: cuda tag arch_list max_jobs reason
            p = machine_plan()
            print(int(p.cuda), p.tag, p.arch_list or '-', p.max_jobs, p.reason)
        elif argv[:1] == ['verify']:
            for line in verify(argv[1] == '1', argv[2] if len(argv) > 2 else ''):
                print(f'[bootstrap] {line}', file=sys.stderr)
        else:
            print('usage: python -I deform_viz/_cuda_build.py plan | verify 0|1 [WHEEL_DIR]', file=sys.stderr)
            return 2
    except BuildError as e:
        print(f'[bootstrap] error: {e}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
