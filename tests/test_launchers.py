"""tools/dist_*.sh and tools/slurm_*.sh from a shell where the venv is not active: they run the
checkout's .venv python (torch.distributed.run for the dist scripts), never the python, python3 or
torchrun first on PATH, which here are decoys that fail."""
import os
import os.path as osp
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, synthetic_config

VENV_PYTHON = osp.join(REPO, '.venv', 'bin', 'python')
pytestmark = pytest.mark.skipif(not os.access(VENV_PYTHON, os.X_OK), reason='needs the checkout .venv '
                                '(bash tools/bootstrap.sh)')
DECOY = 'decoy interpreter on PATH was run'


@pytest.fixture
def shell(tmp_path):
    """Environment of a plain login shell: PATH without the venv, with decoy python, python3 and
    torchrun, and a fake srun that logs its arguments and runs the task command once."""
    decoys = tmp_path / 'decoys'
    decoys.mkdir()
    for name in ('python', 'python3', 'torchrun'):
        (decoys / name).write_text(f'#!/bin/sh\necho "{DECOY}: {name} $*" >&2\nexit 3\n')
    (decoys / 'srun').write_text(
        '#!/bin/bash\nprintf "%s\\n" "$@" >"$SRUN_LOG"\n'
        'while [[ $1 == -* ]]; do [[ $1 == -p ]] && shift; shift; done\nexec "$@"\n')
    for path in decoys.iterdir():
        path.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ('VIRTUAL_ENV', 'PYTHONPATH', 'DEFORM_VIZ_PYTHON')}
    env.update(PATH=f'{decoys}:/usr/bin:/bin', SRUN_LOG=str(tmp_path / 'srun.log'), OMP_NUM_THREADS='1',
               PORT=str(29400 + os.getpid() % 500))
    return env


def run(script, *args, env, cwd, timeout=300):
    return subprocess.run(['bash', osp.join(REPO, 'tools', script), *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize('script,args', [('dist_train.sh', ['c.py', '1', '--help']),
                                         ('dist_test.sh', ['c.py', 'w.pth', '1', '--help'])])
def test_dist_scripts_run_the_venv_python(script, args, shell, tmp_path):
    result = run(script, *args, env=shell, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert DECOY not in result.stderr
    assert 'usage:' in result.stdout and '--launcher' in result.stdout  # the tool's own help, through torchrun


@pytest.mark.parametrize('script,args,tool', [
    ('slurm_train.sh', ['gpu', 'job', 'c.py', 'work', '--help'], 'train.py'),
    ('slurm_test.sh', ['gpu', 'job', 'c.py', 'w.pth', '--help'], 'test.py')])
def test_slurm_scripts_give_srun_the_venv_python(script, args, tool, shell, tmp_path):
    result = run(script, *args, env=dict(shell, GPUS='2', GPUS_PER_NODE='2', SRUN_ARGS='--exclusive --mem=0'),
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    srun = (tmp_path / 'srun.log').read_text().splitlines()
    assert srun[:2] == ['-p', 'gpu'] and '--exclusive' in srun and '--mem=0' in srun and '--ntasks=2' in srun
    task = srun[srun.index(VENV_PYTHON):]
    assert task[:3] == [VENV_PYTHON, '-u', osp.join(REPO, 'tools', tool)] and '--launcher=slurm' in task
    assert DECOY not in result.stderr and 'usage:' in result.stdout


def test_another_interpreter_by_name_and_a_missing_venv(shell, tmp_path):
    """DEFORM_VIZ_PYTHON picks the interpreter; a copy of the scripts without a .venv says what to do."""
    result = run('dist_train.sh', 'c.py', '1', '--help', env=dict(shell, DEFORM_VIZ_PYTHON=sys.executable),
                 cwd=tmp_path)
    assert result.returncode == 0 and DECOY not in result.stderr
    tools = tmp_path / 'elsewhere' / 'tools'
    tools.mkdir(parents=True)
    for name in ('dist_train.sh', '_python.sh'):
        shutil.copy(osp.join(REPO, 'tools', name), tools / name)
    result = subprocess.run(['bash', str(tools / 'dist_train.sh'), 'c.py', '1'], env=shell, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1
    assert (f'dist_train.sh: no interpreter at {tmp_path}/elsewhere/.venv/bin/python: run bash tools/bootstrap.sh, '
            'or set DEFORM_VIZ_PYTHON') in result.stderr


@pytest.mark.slow
def test_dist_test_evaluates_a_checkpoint(tiny_checkpoint, shell, tmp_path):
    """One rank through torch.distributed.run, end to end: the metrics, and on a CPU-only machine
    the fallback to gloo said aloud."""
    cfg = synthetic_config(tiny_checkpoint.config, tiny_checkpoint.data_root, str(tmp_path / 'work'),
                           {'test_dataloader.dataset.indices': 2})
    config = str(tmp_path / 'config.py')
    cfg.dump(config)
    result = run('dist_test.sh', config, tiny_checkpoint.checkpoint, '1', '--work-dir', str(tmp_path / 'work'),
                 env=shell, cwd=tmp_path, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert 'coco/bbox_mAP' in log and DECOY not in log
    import torch
    if not torch.cuda.is_available():
        assert '--launcher pytorch without a GPU that torch can use' in log
