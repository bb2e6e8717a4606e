"""tools/device_check.sh's own mechanics on CPU: arguments, the install stage from a bundle, a failing
stage ending the run with its summary. What it runs on a GPU is tested by the tests it runs."""
import os
import os.path as osp
import subprocess
import sys
import zipfile

from conftest import REPO

SCRIPT = osp.join(REPO, 'tools', 'device_check.sh')


def fake_wheel(directory):
    """A minimal installable wheel, so the install stage has something to install offline."""
    path = osp.join(directory, 'dvfake-0.1-py3-none-any.whl')
    files = {'dvfake/__init__.py': '',
             'dvfake-0.1.dist-info/METADATA': 'Metadata-Version: 2.1\nName: dvfake\nVersion: 0.1\n',
             'dvfake-0.1.dist-info/WHEEL': ('Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n'
                                            'Tag: py3-none-any\n')}
    files['dvfake-0.1.dist-info/RECORD'] = ''.join(f'{name},,\n' for name in files) + 'dvfake-0.1.dist-info/RECORD,,\n'
    with zipfile.ZipFile(path, 'w') as z:
        for name, text in files.items():
            z.writestr(name, text)
    return path


def test_arguments():
    assert 'device_check.sh --prepare DIR' in subprocess.run(['bash', SCRIPT, '--help'], capture_output=True,
                                                               text=True).stdout
    result = subprocess.run(['bash', SCRIPT], capture_output=True, text=True)
    assert result.returncode == 2 and '--bundle DIR (made by --prepare) is needed' in result.stderr


def test_a_machine_without_cuda_stops_at_the_build_with_a_summary(tmp_path):
    """The install stage runs from the bundle; the build's CUDA plan fails (this torch is a CPU
    build); the run ends there with exit 1 and its summary."""
    bundle = tmp_path / 'bundle'
    bundle.mkdir()
    fake_wheel(str(bundle))
    out = tmp_path / 'out'
    env = dict(os.environ, OUT=str(out), DEVICE_PYTHON=sys.executable)  # the machine's python: this one
    env.pop('MAX_JOBS', None)
    result = subprocess.run(['bash', SCRIPT, '--bundle', str(bundle)], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    summary = (out / 'summary.md').read_text()
    assert '| install | ok |' in summary
    assert '| mmcv-cuda-build | failed (exit 1) |' in summary
    assert 'cuda-tests' not in summary  # nothing runs without the ops
    assert result.stdout.strip().splitlines()[0] == '| stage | status | seconds |'  # printed last, for the reply
    assert sorted(os.listdir(out)) == ['log.txt', 'machine.md', 'summary.md']
    assert '[device_check' in (out / 'log.txt').read_text()
