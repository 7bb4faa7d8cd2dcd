"""Nothing half-written: files and folders appear under their final name only when complete.

Every artifact is written to a temporary sibling (same folder, so the rename stays on one file
system) and renamed into place with :func:`os.replace`; an existing target is refused unless
``force``. Torch-free.

Temporary names are ``.<name>.tmp-<pid>-<random>`` (``.old-`` for a folder moved aside), unique
per call across threads and processes. They are removed when the write fails, when the process
gets SIGINT or SIGTERM (the CLI turns SIGTERM into an exit that runs the clean-ups), and -- for a
process killed outright (SIGKILL, power loss) -- by the next write to the same destination,
which removes the leftovers of every process that no longer runs (:func:`remove_leftovers`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

from ddpm_export.errors import BadInputError, DdpmExportError, NotAFolderError, OutputExistsError

__all__ = ["BUNDLE_FORMAT", "BUNDLE_MANIFEST", "atomic_dir", "atomic_file", "atomic_files", "enclosing_bundle",
           "made_parents", "names_no_file", "refuse_existing", "refuse_foreign_folder", "refuse_inside", "refuse_nameless_folder",
           "refuse_same_file", "remove_leftovers", "require_suffix", "temp_sibling"]


#: a bundle folder's manifest and its format tag (:mod:`ddpm_export.runtime.bundle` takes them from
#: here, the lowest layer, so that every output check can recognise a bundle it would write into)
BUNDLE_MANIFEST, BUNDLE_FORMAT = "manifest.json", "ddpm-export-bundle"


def enclosing_bundle(path: str | Path) -> Path | None:
    """The bundle folder (one holding our ``manifest.json``) that ``path`` lies inside, or None."""
    for folder in Path(path).absolute().parents:
        manifest = folder / BUNDLE_MANIFEST
        if manifest.is_file():
            with contextlib.suppress(OSError, ValueError, AttributeError):  # someone else's manifest.json
                if json.loads(manifest.read_text(encoding="utf-8")).get("format") == BUNDLE_FORMAT:
                    return folder
    return None


def refuse_existing(path: str | Path, force: bool, flag: str = "--force") -> None:
    """Refuse, before any work, an output ``path`` that exists (unless ``force``: FileExistsError)
    or that cannot be created: a file where a folder above it should be, or a folder this
    process may not write into (tried with a temporary file: ``os.access`` says yes to root
    everywhere, /proc and read-only mounts included), or that names no file of its own (``""``,
    ``.``, ``a/..``: BadInputError)."""
    if names_no_file(path):
        raise BadInputError(f"output path {str(path)!r} names no file of its own; give a file name")
    if Path(path).exists() and not force:
        raise OutputExistsError(f"{path} exists; pass {flag} to overwrite it")
    bundle = enclosing_bundle(path)
    if bundle is not None:
        raise BadInputError(f"{path} is inside the bundle folder {bundle}: a file added to a bundle breaks its "
                            f"manifest; write it elsewhere")
    parent = Path(path).absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise NotAFolderError(f"{path}: cannot be written, {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BadInputError(f"{path}: cannot be written, the folder {parent} is not writable")
    probe = temp_sibling(parent / Path(path).name)  # a name of its own: nameless paths are refused above
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except OSError as e:
        raise BadInputError(f"{path}: cannot be written, creating a file in {parent} failed "
                            f"({e.strerror or e}; the name tried was {probe.name})") from None
    with contextlib.suppress(OSError):  # a probe that cannot be removed is swept by the next write
        probe.unlink()


def require_suffix(flag: str, path: str | Path | None, suffix: str) -> None:
    """Refuse an output ``path`` (None: not asked for) whose name does not end in ``suffix``
    (``.png``, ``.npy``): it is written in that format whatever it is called."""
    if path is not None and names_no_file(path):
        raise BadInputError(f"{flag} {str(path)!r} names no file of its own; give a file name ending in {suffix}")
    if path is not None and not str(path).lower().endswith(suffix):
        raise BadInputError(f"{flag} {path} must end in {suffix} (it is written as {suffix[1:].upper()})")


def refuse_nameless_folder(path: str | Path) -> None:
    """Refuse an output folder ``path`` that names no folder of its own (``""``, ``.``, ``a/..``)."""
    if names_no_file(path):
        raise BadInputError(f"output folder {str(path)!r} names no folder of its own; give the new folder's name")


def refuse_foreign_folder(path: str | Path, marker: str) -> None:
    """Refuse to replace ``path``, a non-empty folder without ``marker`` (a file every folder of its
    kind holds, e.g. a bundle's ``manifest.json``): it holds the user's own files, not ours."""
    path = Path(path)
    if path.is_dir() and any(path.iterdir()) and not (path / marker).is_file():
        raise BadInputError(f"{path} holds no {marker}, so this command did not write it: --force replaces only "
                            f"such a folder (its files would be deleted); choose a new folder, or empty this one "
                            f"yourself")


def names_no_file(path: str | Path) -> bool:
    """``""``, ``.``, ``a/..``: a path that names no file of its own."""
    return Path(path).name in ("", ".", "..")


def refuse_same_file(paths: dict[str, str | Path | None]) -> None:
    """Refuse two options that name one file (``{"--output": path, "--onnx": path, ...}``; None
    entries are skipped): an output over an input would destroy it, even with --force, and two
    outputs would overwrite each other."""
    seen: dict[str, tuple[str, str | Path]] = {}
    for flag, path in paths.items():
        if path is None:
            continue
        real = os.path.realpath(path)
        if real in seen:
            first, first_path = seen[real]
            raise BadInputError(f"{first} {first_path} and {flag} {path} name the same file; give two paths")
        seen[real] = (flag, path)


def refuse_inside(folders: dict[str, str | Path | None], paths: dict[str, str | Path | None], why: str) -> None:
    """Refuse a path of ``paths`` that is one of ``folders`` or lies anywhere under it (``{"--out":
    folder}``, ``{"--model": path}``; None entries are skipped; symlinks resolved). ``why`` ends the
    message: an output folder replaced with --force would delete an input inside it, a file
    written into a bundle breaks its manifest."""
    for folder_flag, folder in folders.items():
        if folder is None:
            continue
        root = os.path.realpath(folder)
        for flag, path in paths.items():
            real = None if path is None else os.path.realpath(path)
            if real is not None and (real == root or real.startswith(root.rstrip(os.sep) + os.sep)):
                where = "is" if real == root else "is inside"
                raise BadInputError(f"{flag} {path} {where} {folder_flag} {folder}: {why}")


def temp_sibling(path: str | Path, kind: str = "tmp") -> Path:
    """A fresh hidden name beside ``path``: ``.<name>.<kind>-<pid>-<random hex>``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_leftovers(path: str | Path) -> list[Path]:
    """Remove the temporary siblings of ``path`` left by processes that no longer run (killed
    mid-write); those of running processes, this one included, are kept. Returns what was removed."""
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    for kind in ("tmp", "old"):
        for leftover in path.parent.glob(f".{glob_escape(path.name)}.{kind}-*"):
            pid = leftover.name.rsplit(f".{kind}-", 1)[1].split("-", 1)[0]
            if pid.isdigit() and _alive(int(pid)):
                continue
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
            removed.append(leftover)
    return removed


def glob_escape(name: str) -> str:
    """``name`` with glob's special characters taken literally."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


@contextlib.contextmanager
def made_parents(path: str | Path) -> Iterator[None]:
    """Create the missing folders above ``path``; if the block raises, remove those of them that
    are still empty (deepest first), so a failed write leaves no new empty folders behind."""
    created = [folder for folder in Path(path).parents if not folder.exists()]  # deepest first
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        for folder in created:
            try:
                folder.rmdir()
            except OSError:  # something else wrote there meanwhile: keep it and what is above it
                break
        raise


@contextlib.contextmanager
def atomic_file(path: str | Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``.

    The caller writes the whole file to the yielded path. On an exception the temporary file is
    removed, ``path`` is left as it was, and so are the folders above it (:func:`made_parents`).
    """
    path = Path(path)
    refuse_existing(path, force)
    with made_parents(path):
        remove_leftovers(path)
        tmp = temp_sibling(path)
        try:
            yield tmp
            if not tmp.is_file():
                raise RuntimeError(f"nothing was written for {path}")
            os.replace(tmp, path)
        except OSError as e:
            # name the file asked for, not the temp nor nothing (numpy's short write names no file);
            # our own errors (OutputExistsError, ...) carry their message already
            if not isinstance(e, DdpmExportError) and (e.filename is None or Path(e.filename) in (tmp, tmp.absolute())):
                raise type(e)(e.errno, e.strerror or str(e), str(path)) from e
            raise
        finally:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_files(*paths: str | Path | None, force: bool = False) -> Iterator[tuple[Path | None, ...]]:
    """:func:`atomic_file` for several outputs of one command: yields a temporary path for each of
    ``paths`` (None for a None entry); they are renamed into place only once the block has written
    them all, so a failure on any leaves none of them (both files or neither)."""
    with contextlib.ExitStack() as stack:
        yield tuple(None if path is None else stack.enter_context(atomic_file(path, force=force)) for path in paths)


@contextlib.contextmanager
def atomic_dir(path: str | Path, *, force: bool = False, marker: str | None = None) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``path``; on success it becomes ``path``.

    With ``force`` an existing ``path`` is moved aside first and deleted after the rename, so
    ``path`` is only ever missing for the instant between two renames, never half-filled.
    ``marker``: a file every folder of this kind holds (a bundle's ``manifest.json``); with it,
    ``force`` replaces only an empty folder or one holding ``marker``, never a folder of the
    user's own files.
    """
    refuse_nameless_folder(path)
    refuse_inside({"the output folder": path}, {"the current folder": os.getcwd()},
                  "it would be replaced while in use; choose a new folder")
    path = Path(os.path.abspath(path))  # `..`, `a/..` name their folder
    refuse_existing(path, force)
    if path.exists() and not path.is_dir():
        raise NotAFolderError(f"{path} exists and is not a folder")
    if marker is not None:
        refuse_foreign_folder(path, marker)
    with made_parents(path):
        remove_leftovers(path)
        tmp = temp_sibling(path)  # unique: threads and processes never collide
        old = temp_sibling(path, "old")
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
