"""Files and folders that hold patient data are their owner's alone: folders 0700, files 0600.

The embedded default keeps the database, its WAL, the outbox, the file broker and beat's
schedule under one data folder. What Aftercare creates there itself is made private here, with
modes given at creation; what libraries create (SQLite's WAL and shared-memory files take the
database file's mode; kombu's message files and beat's schedule take the process's umask) is
covered by the database file's mode and by :func:`private_umask`, which every ``aftercare``
process sets at start.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

PRIVATE_UMASK: Final = 0o077
DIR_MODE: Final = 0o700
FILE_MODE: Final = 0o600


def private_umask() -> None:
    """New files of this process are readable by its user only (0600 files, 0700 folders)."""
    os.umask(PRIVATE_UMASK)


def private_dir(path: Path) -> Path:
    """``path`` as a folder only its owner can enter: created 0700 with any missing parents (which
    are made 0700 too); an existing one of ours is narrowed to 0700, so an upgrade also fixes an
    older install. Existing parents are left alone."""
    missing = []
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing.append(folder)
    for folder in reversed(missing):  # each folder this call creates is private, parents too
        folder.mkdir(mode=DIR_MODE, exist_ok=True)
    _narrow(path, DIR_MODE)
    return path


def private_file(path: Path) -> Path:
    """``path`` as a file only its owner can read: created empty at 0600 if missing, an existing
    one narrowed to 0600."""
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, FILE_MODE)
    os.close(fd)
    _narrow(path, FILE_MODE)
    return path


def _narrow(path: Path, mode: int) -> None:
    """chmod ``path`` to ``mode`` if it is ours and wider; one owned by another user (a folder
    an operator made and lent us) is left as its owner set it."""
    info = path.stat()
    if info.st_mode & 0o777 != mode and info.st_uid == os.getuid():
        path.chmod(mode)


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file at 0600 whatever the umask (fails if it exists)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def append_private(path: Path, text: str) -> None:
    """Append ``text`` in one write to a file created at 0600 if missing."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
    with os.fdopen(fd, "a", encoding="utf-8") as out:
        out.write(text)
