"""write_atomically: the one atomic file writer (dumps, figures, reports, datasets)."""
import os
import stat

import pytest

from deform_viz.fileio import write_atomically


@pytest.fixture
def umask():
    """Set the process umask for one test, restoring it afterwards."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_writes_replaces_and_returns_the_size(tmp_path):
    path = tmp_path / 'a.bin'
    assert write_atomically(path, lambda f: f.write(b'12345')) == 5
    assert path.read_bytes() == b'12345'
    assert write_atomically(path, lambda f: f.write(b'xy')) == 2
    assert path.read_bytes() == b'xy'
    assert os.listdir(tmp_path) == ['a.bin']  # no temporary file left


def test_text_is_utf8(tmp_path):
    path = tmp_path / 'r.json'
    assert write_atomically(path, lambda f: f.write('d_f \u2192 0'), text=True) == 9
    assert path.read_bytes() == 'd_f \u2192 0'.encode('utf-8')


@pytest.mark.parametrize('mask, expected', [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
@pytest.mark.parametrize('exclusive', [False, True])
def test_mode_is_what_the_umask_gives(tmp_path, umask, mask, expected, exclusive):
    umask(mask)
    path = tmp_path / 'a.npz'
    write_atomically(path, lambda f: f.write(b'x'), exclusive=exclusive)
    assert mode(path) == expected
    with open(tmp_path / 'ordinary', 'wb'):
        pass
    assert mode(tmp_path / 'ordinary') == expected


def test_exclusive_never_replaces(tmp_path):
    path = tmp_path / 'a.bin'
    assert write_atomically(path, lambda f: f.write(b'first'), exclusive=True) == 5
    assert write_atomically(path, lambda f: f.write(b'second'), exclusive=True) is None
    assert path.read_bytes() == b'first'
    assert os.listdir(tmp_path) == ['a.bin']


def test_failing_writer_leaves_the_old_file(tmp_path):
    path = tmp_path / 'a.bin'
    path.write_bytes(b'old')

    def half_then_fail(f):
        f.write(b'new, but')
        raise OSError(28, 'No space left on device')
    with pytest.raises(OSError, match='No space left'):
        write_atomically(path, half_then_fail)
    assert path.read_bytes() == b'old'
    assert os.listdir(tmp_path) == ['a.bin']


def test_missing_directory_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        write_atomically(tmp_path / 'nope' / 'a.bin', lambda f: f.write(b'x'))
