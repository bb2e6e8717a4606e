"""Atomic file writing: a reader sees the old file or the complete new one, never a partial one."""
import os
import secrets
from pathlib import Path
from typing import IO, Callable, Optional, Union

PathLike = Union[str, os.PathLike]


def write_atomically(path: PathLike, write: Callable[[IO], object], *, text: bool = False,
                     exclusive: bool = False) -> Optional[int]:
    """Create or replace ``path`` with what ``write(file)`` writes; returns the size in bytes.

    ``write`` gets a file opened for writing (binary, or UTF-8 text with ``text=True``) whose
    data go to ``.<name>.<random>.tmp`` in the same directory, then renamed onto ``path``. The
    temporary file is created like any ordinary file, so ``path`` gets the mode the user's umask
    gives (0644 under umask 022). With ``exclusive=True`` the file is published with a hard
    link, which never replaces: if ``path`` exists nothing changes and None is returned (two
    writers never both publish it). If ``write`` raises, ``path`` is left as it was. The
    directory must exist.
    """
    path = Path(path)
    tmp = path.with_name(f'.{path.name}.{secrets.token_hex(6)}.tmp')
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
    try:
        with open(fd, 'w' if text else 'wb', encoding='utf-8' if text else None) as f:
            write(f)
            f.flush()
            size = os.fstat(f.fileno()).st_size
        if not exclusive:
            os.replace(tmp, path)
            return size
        try:
            os.link(tmp, path)
        except FileExistsError:
            return None
        except OSError:  # a file system without hard links: best effort
            if path.exists():
                return None
            os.replace(tmp, path)
        return size
    finally:
        tmp.unlink(missing_ok=True)
