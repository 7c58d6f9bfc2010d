"""Durable file writes: the bytes are on disk (fsync'd) before the call returns."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """fsync a folder so a rename or a new entry in it survives a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durable(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: temp file, fsync, rename, fsync the folder.

    A reader (or a process restarted after a crash) sees either no file or the whole file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return path


def remove_tree(path: Path) -> None:
    """Delete a folder and its content (missing is fine)."""
    shutil.rmtree(path, ignore_errors=True)
