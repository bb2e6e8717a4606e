"""What experiment runs leave on disk: JSON records, and the settings a directory was made with."""
import json
import os
import os.path as osp
from typing import Optional

from ..fileio import write_atomically


def read_json(path: str) -> Optional[dict]:
    """The JSON at ``path``, or None when there is no such file."""
    if not osp.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def write_json(path: str, value) -> None:
    """Write ``value`` as JSON at ``path`` atomically (its directory is made if needed)."""
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    write_atomically(path, lambda f: json.dump(value, f, indent=2), text=True)


def check_recorded(directory: str, key: dict, what: str = 'settings', runs: str = 'runs',
                   added: Optional[dict] = None) -> None:
    """Record ``key`` in ``<directory>/<what>.json`` the first time; afterwards refuse the directory
    if it was made with another key, naming the entries that differ. ``added`` holds entries that
    joined the key later, with the value directories recorded before them were made with."""
    path = osp.join(directory, f'{what}.json')
    stored = read_json(path)
    key = json.loads(json.dumps(key))  # as stored: tuples become lists
    if stored is None:
        write_json(path, key)
        return
    stored = {**(added or {}), **stored}
    if stored != key:
        changed = sorted(k for k in set(stored) | set(key) if stored.get(k) != key.get(k))
        raise ValueError(f'{directory} holds {runs} made with other {what} ({", ".join(changed)}); '
                         'pass another --work-dir or delete that directory')
