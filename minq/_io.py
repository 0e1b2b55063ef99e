"""Atomic file writes: write to a temporary file in the same folder, then rename over the target.

A failure part-way (an exception, Ctrl-C) leaves whatever the user had at ``path`` untouched, and the
new file gets the permissions the old one had (or the usual ``0666 & ~umask`` for a new file), not
``mkstemp``'s private 0600. A process killed outright cannot clean up after itself, so temporaries
carry the writer's process id (``.<name>.<pid>.<random>.tmp``) and ``remove_stale_temporaries`` deletes
those whose process is gone.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_text", "remove_stale_temporaries", "temp_prefix"]


def temp_prefix(name: str) -> str:
    """The name prefix of this process's temporaries for ``name``: ``.<name>.<pid>.``."""
    return f".{name}.{os.getpid()}."


def _new_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)             # keep the user's permissions
        except FileNotFoundError:
            mode = _new_file_mode()
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


_TEMP = re.compile(r"^\..+\.(?P<pid>\d+)\.[a-z0-9_]{8}(\.tmp.*)?$")   # mkstemp and mkdtemp: 8 random characters


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:                  # someone else's live process
        return True
    return True


def remove_stale_temporaries(folder) -> list[Path]:
    """Delete the temporaries in ``folder`` (files and folders named ``.<name>.<pid>.<random>[.tmp...]``)
    left by processes that no longer run; return what was removed. Other files are never touched."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        m = _TEMP.match(p.name)
        if not m or int(m["pid"]) == os.getpid() or _alive(int(m["pid"])):
            continue
        with contextlib.suppress(OSError):
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            removed.append(p)
    return removed
