"""Nothing half-written: files and folders appear under their final name only when complete.

Every artifact is written to a temporary sibling (same folder, so the rename stays on one file
system) and renamed into place with :func:`os.replace`; an existing target is refused unless
``force``. Torch-free.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

from ddpm_export.errors import NotAFolderError, OutputExistsError

__all__ = ["atomic_dir", "atomic_file", "refuse_existing"]


def refuse_existing(path: str | Path, force: bool, flag: str = "--force") -> None:
    """Raise FileExistsError when ``path`` exists and not ``force``."""
    if Path(path).exists() and not force:
        raise OutputExistsError(f"{path} exists; pass {flag} to overwrite it")


@contextlib.contextmanager
def atomic_file(path: str | Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``.

    The caller writes the whole file to the yielded path. On an exception the temporary file is
    removed and ``path`` is left as it was.
    """
    path = Path(path)
    refuse_existing(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        yield tmp
        if not tmp.is_file():
            raise RuntimeError(f"nothing was written for {path}")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``path``; on success it becomes ``path``.

    With ``force`` an existing ``path`` is moved aside first and deleted after the rename, so
    ``path`` is only ever missing for the instant between two renames, never half-filled.
    """
    path = Path(path)
    refuse_existing(path, force)
    if path.exists() and not path.is_dir():
        raise NotAFolderError(f"{path} exists and is not a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")  # unique: threads never collide
    old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex}")
    tmp.mkdir()
    try:
        yield tmp
        moved = path.exists()
        if moved:
            path.rename(old)
        try:
            tmp.rename(path)
        except BaseException:
            if moved:  # put the previous folder back rather than lose it
                old.rename(path)
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
