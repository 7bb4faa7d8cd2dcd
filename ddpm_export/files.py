"""Nothing half-written: files and folders appear under their final name only when complete.

Every artifact is written to a temporary sibling (same folder, so the rename stays on one file
system) and renamed into place with :func:`os.replace`; an existing target is refused unless
``force``. Torch-free.

Temporary names are ``.<name>.tmp-<pid>-<random>`` (``.old-`` for a previous output moved aside
by ``--force``: a folder, or a file replaced together with others), unique per call across threads
and processes; a name too long to take them has its digest there instead. They are removed when
the write fails, when the process gets SIGINT or SIGTERM (the CLI turns SIGTERM into an exit that
runs the clean-ups), and -- for a process killed outright (SIGKILL, power loss) -- by the next
write to the same destination, which removes the leftovers of every process that no longer runs
(:func:`remove_leftovers`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import os
import re
import shutil
import stat
import uuid
from pathlib import Path
from typing import Callable, Iterable, Iterator

from ddpm_export.errors import BadInputError, DdpmExportError, NotAFolderError, OutputExistsError
from ddpm_export.jsonio import parse_json

__all__ = ["BUNDLE_FORMAT", "BUNDLE_MANIFEST", "OutputFolder", "atomic_dir", "atomic_file", "atomic_files",
           "bundle_files", "check_output_folder", "enclosing_bundle", "made_parents", "names_no_file", "new_file_mode",
           "refuse_existing", "refuse_existing_file", "refuse_folder_name", "refuse_foreign_folder", "refuse_inside",
           "refuse_nameless_folder", "refuse_same_file", "refuse_stdout_folder", "remove_leftovers",
           "rename_into_place", "require_suffix", "scratch_folder", "temp_sibling"]


#: a bundle folder's manifest and its format tag (:mod:`ddpm_export.runtime.bundle` takes them from
#: here, the lowest layer, so that every output check can recognise a bundle it would write into)
BUNDLE_MANIFEST, BUNDLE_FORMAT = "manifest.json", "ddpm-export-bundle"


def bundle_files(folder: str | Path) -> list[str] | None:
    """The names our bundle manifest in ``folder`` lists, itself included; None when ``folder``
    holds no ``manifest.json`` of ours (none, or someone else's)."""
    manifest = Path(folder) / BUNDLE_MANIFEST
    if not manifest.is_file():
        return None
    try:
        data = parse_json(manifest.read_text(encoding="utf-8"))
        if data.get("format") != BUNDLE_FORMAT:
            return None
        return [BUNDLE_MANIFEST, *(str(entry["path"]) for entry in data.get("files", []))]
    except (OSError, ValueError, AttributeError, KeyError, TypeError):  # unreadable: not one we can vouch for
        return None


def enclosing_bundle(path: str | Path) -> Path | None:
    """The bundle folder (one holding our ``manifest.json``) that ``path`` lies inside, or None."""
    where = Path(os.path.realpath(Path(path).absolute().parent))  # `..` and links as the kernel resolves them
    for folder in (where, *where.parents):
        if bundle_files(folder) is not None:
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
    if isinstance(path, str) and path == "-":  # the option as typed (Path("./-") prints as "-" too)
        raise BadInputError("output path '-': writing to stdout is not supported; give a file name "
                            "(or ./- for a file of that name)")
    if os.path.lexists(path) and not force:  # lexists: a dangling symlink or a loop is there too
        raise OutputExistsError(f"{path} exists; pass {flag} to overwrite it")
    _refuse_special(path)
    bundle = enclosing_bundle(path)
    if bundle is not None:
        raise BadInputError(f"{path} is inside the bundle folder {bundle}: a file added to a bundle breaks its "
                            f"manifest; write it elsewhere")
    parent = Path(path).absolute().parent
    while not os.path.lexists(parent) and parent != parent.parent:  # lexists: a dangling link is no missing folder
        parent = parent.parent
    if not parent.is_dir():
        what = (f"a symbolic link to {os.readlink(parent)}, which does not lead to a folder"
                if parent.is_symlink() and not parent.exists() else "a file, not a folder")
        raise NotAFolderError(f"{path}: cannot be written, {parent} is {what}")
    name_max = os.pathconf(parent, "PC_NAME_MAX")  # the probe below uses a shorter name of its own
    if len(os.fsencode(Path(path).name)) > name_max:
        raise BadInputError(f"{path}: cannot be written, its name is {len(os.fsencode(Path(path).name))} bytes and "
                            f"the file system allows {name_max}")
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


def refuse_folder_name(path: str | Path) -> None:
    """Refuse a file output typed as a folder, ending in ``/`` (``-o y.onnx/`` wrote the file
    ``y.onnx``): a ``Path`` drops the separator, so call this on the path as given."""
    if isinstance(path, str) and path.endswith(tuple(sep for sep in (os.sep, os.altsep) if sep)):
        raise BadInputError(f"{path} ends in {path[-1]!r}, which names a folder; give the path of a file to write")


def refuse_existing_file(path: str | Path, force: bool) -> None:
    """:func:`refuse_existing` for a file output: also a folder in its place, which no --force
    replaces (the rename of a file over a folder fails after all the work), and a path typed as a
    folder (:func:`refuse_folder_name`)."""
    refuse_folder_name(path)
    if os.path.isdir(path):
        raise BadInputError(f"{path} is a folder; give the path of a file to write")
    refuse_existing(path, force)


def _refuse_special(path: str | Path) -> None:
    """Refuse an output that is (or links to) a device, FIFO or socket: the rename would put a
    regular file in its place (as root, /dev/null or /dev/stdout itself)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:  # nothing there, or a dangling link: nothing special to keep
        return
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        kind = "FIFO" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode) else "device"
        raise BadInputError(f"{path} is a {kind}, not a file: outputs are written as new files and renamed into "
                            f"place, which would replace it; give a file path")


def require_suffix(flag: str, path: str | Path | None, suffix: str) -> None:
    """Refuse an output ``path`` (None: not asked for) whose name does not end in ``suffix``
    (``.png``, ``.npy``): it is written in that format whatever it is called."""
    if path is not None and names_no_file(path):
        raise BadInputError(f"{flag} {str(path)!r} names no file of its own; give a file name ending in {suffix}")
    if path is not None and not str(path).lower().endswith(suffix):
        raise BadInputError(f"{flag} {path} must end in {suffix} (it is written as {suffix[1:].upper()})")


def refuse_nameless_folder(path: str | Path) -> None:
    """Refuse an output folder ``path`` that names no folder of its own (``""``, ``.``, ``a/..``) or is
    ``"-"`` as typed (stdout, as :func:`refuse_existing` refuses it for a file)."""
    if names_no_file(path):
        raise BadInputError(f"output folder {str(path)!r} names no folder of its own; give the new folder's name")
    refuse_stdout_folder("output folder", path)


def refuse_stdout_folder(what: str, path: str | Path) -> None:
    """Refuse the output folder ``what`` (``"--save-io"``) given as ``"-"`` as typed: stdout, as
    :func:`refuse_existing` refuses it for a file; ``./-`` is a folder of that name."""
    if isinstance(path, str) and path == "-":  # the option as typed (Path("./-") prints as "-" too)
        raise BadInputError(f"{what} '-': writing to stdout is not supported; give a folder name "
                            f"(or ./- for a folder of that name)")


@dataclasses.dataclass(frozen=True)
class OutputFolder:
    """What one command's output folder holds, so that ``--force`` replaces only such a folder:
    ``marker``, a file every one of them has, and the names it may hold at its top: ``names``, or
    ``listed(folder)`` (the names its marker lists, as a bundle's manifest does; None: not ours)."""

    marker: str
    names: frozenset[str] = frozenset()
    listed: Callable[[Path], Iterable[str] | None] | None = None

    def allowed(self, folder: Path) -> frozenset[str] | None:
        """The names ``folder`` may hold as this command's output; None when it is not one."""
        if not (folder / self.marker).is_file():
            return None
        if self.listed is None:
            return self.names | {self.marker}
        listed = self.listed(folder)
        return None if listed is None else frozenset(listed) | self.names | {self.marker}


#: what file managers leave in any folder they show (Finder, Explorer), besides macOS' ``._*``
#: companions: not the user's files, and no ONNX file names them
OS_METADATA = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})


def is_os_metadata(path: Path) -> bool:
    """A plain file a file manager wrote (:data:`OS_METADATA` or ``._*``), not a link."""
    return (path.name in OS_METADATA or path.name.startswith("._")) and path.is_file() and not path.is_symlink()


def refuse_foreign_folder(path: str | Path, kind: OutputFolder) -> None:
    """Refuse to replace ``path``, a non-empty folder that is not ``kind``'s output (no marker, or
    anything beside what the command writes and a file manager's own files): it holds the user's
    own files, not ours."""
    path = Path(path)
    if not path.is_dir() or path.is_symlink() or not any(path.iterdir()):
        return
    allowed = kind.allowed(path)
    if allowed is None:
        why = (f"{path}: its {kind.marker} is unreadable or another tool's, so this command cannot tell it wrote the "
               f"folder" if (path / kind.marker).is_file() else
               f"{path} holds no {kind.marker} of ours, so this command did not write it")
        raise BadInputError(f"{why}: --force replaces only such a folder (its files would be deleted); choose a new "
                            f"folder, or empty this one yourself")
    extra = sorted(entry.name for entry in path.iterdir() if entry.name not in allowed and not is_os_metadata(entry))
    if extra:
        shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        raise BadInputError(f"{path} holds {shown} besides what this command writes: --force would delete "
                            f"{'it' if len(extra) == 1 else 'them'}; move {'it' if len(extra) == 1 else 'them'} "
                            f"out, or choose a new folder")


def new_file_mode() -> int:
    """The permissions a plain ``open(path, "w")`` gives a new file here: 0o666 less the umask."""
    mask = os.umask(0)  # the only portable way to read it; set straight back
    os.umask(mask)
    return 0o666 & ~mask


def names_no_file(path: str | Path) -> bool:
    """``""``, ``.``, ``a/..``: a path that names no file of its own."""
    return Path(path).name in ("", ".", "..")


def refuse_same_file(inputs: dict[str, str | Path | None], outputs: dict[str, str | Path | None]) -> None:
    """Refuse an output that names the same file as an input or as another output (``{"--onnx":
    path, ...}``, ``{"--output": path, ...}``; None entries are skipped): an output over an input
    would destroy it, even with --force, and two outputs would overwrite each other. Two inputs may
    be one file (an ONNX file kept in its model's folder is read twice, harmlessly)."""
    seen = {os.path.realpath(path): (flag, path) for flag, path in inputs.items() if path is not None}
    for flag, path in outputs.items():
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


#: bytes a temporary name adds to its path's name: ".", ".old-", a pid of up to 7 digits, "-", 32 hex
_TEMP_EXTRA = 46
#: the longest file name most file systems take (ext4, xfs, btrfs, tmpfs: 255 bytes)
_NAME_MAX = 255


def _temp_stem(name: str) -> str:
    """``name`` itself in temporary names, or for a name too long to take the :data:`_TEMP_EXTRA`
    bytes, ``~`` and 32 hex digits of its sha256 (any name the file system takes can be written)."""
    if len(os.fsencode(name)) + _TEMP_EXTRA <= _NAME_MAX:
        return name
    return "~" + hashlib.sha256(os.fsencode(name)).hexdigest()[:32]


def temp_sibling(path: str | Path, kind: str = "tmp") -> Path:
    """A fresh hidden name beside ``path``: ``.<name>.<kind>-<pid>-<random hex>`` (a long name's
    digest for ``<name>``: :func:`_temp_stem`)."""
    path = Path(path)
    return path.with_name(f".{_temp_stem(path.name)}.{kind}-{os.getpid()}-{uuid.uuid4().hex}")


@contextlib.contextmanager
def scratch_folder(path: str | Path) -> Iterator[Path]:
    """A fresh folder beside ``path`` under :func:`temp_sibling`'s name, removed on the way out;
    one left by a killed run is swept by the next write to ``path`` (:func:`remove_leftovers`)."""
    folder = temp_sibling(path)
    folder.mkdir()
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _rmtree(path: Path) -> None:
    """Remove the folder ``path`` even where its folders were made read-only (a deployed bundle
    moved aside by ``--force``: ``shutil.rmtree(ignore_errors=True)`` left all of it behind)."""
    for folder, _, _ in os.walk(path):
        os.chmod(folder, stat.S_IRWXU)
    shutil.rmtree(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_leftovers(path: str | Path) -> list[Path]:
    """Remove the temporary siblings of ``path`` (exactly :func:`temp_sibling`'s names) left by
    processes that no longer run (killed mid-write); those of running processes, this one
    included, are kept. A previous output moved aside (``.old-``) by a process killed before its
    new one took its place is put back when ``path`` is missing, not deleted. Returns what was removed."""
    path = Path(path)
    removed: list[Path] = []
    if not path.parent.is_dir():
        return removed
    stem = _temp_stem(path.name)
    pattern = re.compile(rf"\.{re.escape(stem)}\.(tmp|old)-(\d+)-[0-9a-f]{{32}}")
    for leftover in sorted(path.parent.glob(f".{glob_escape(stem)}.*-*")):
        match = pattern.fullmatch(leftover.name)
        if match is None or _alive(int(match.group(2))):  # not our name (a user's file), or a live write
            continue
        if match.group(1) == "old" and not os.path.lexists(path):
            leftover.rename(path)  # the previous output, moved aside by a run killed before the swap
            continue
        if leftover.is_dir() and not leftover.is_symlink():
            with contextlib.suppress(OSError):
                _rmtree(leftover)
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
def _temp_for(path: Path, force: bool) -> Iterator[Path]:
    """The checks and the temporary sibling of one output: refuses ``path`` if it exists and not
    ``force``, yields the temporary path, removes it on the way out; an OSError that names the
    temporary file (or none) is raised again naming ``path``."""
    remove_leftovers(path)  # first: a previous output it puts back is refused without force
    refuse_existing_file(path, force)
    with made_parents(path):
        tmp = temp_sibling(path)
        try:
            yield tmp
        except OSError as e:
            # name the file asked for, not the temp nor nothing (numpy's short write names no file);
            # our own errors (OutputExistsError, ...) carry their message already
            if not isinstance(e, DdpmExportError) and (e.filename is None or Path(e.filename) in (tmp, tmp.absolute())):
                raise type(e)(e.errno, e.strerror or str(e), str(path)) from e
            raise
        finally:
            tmp.unlink(missing_ok=True)


def _place_all(pairs: list[tuple[Path, Path]], force: bool) -> None:
    """Rename each ``(tmp, path)`` into place, all or none: when one fails (a file that appeared
    meanwhile without ``force``, an OSError), those placed before it are removed and the files
    they replaced (moved aside first, under ``force``) are put back."""
    for tmp, path in pairs:
        if not tmp.is_file():
            raise RuntimeError(f"nothing was written for {path}")
    moved: list[tuple[Path, Path]] = []  # (path, its previous file, moved aside)
    placed: list[Path] = []
    try:
        for tmp, path in pairs:
            if force and len(pairs) > 1 and os.path.lexists(path) and not os.path.isdir(path):
                old = temp_sibling(path, "old")
                os.rename(path, old)
                moved.append((path, old))
            rename_into_place(tmp, path, force)
            placed.append(path)
    except BaseException:
        for path in placed:
            path.unlink(missing_ok=True)
        for path, old in moved:
            os.replace(old, path)
        raise
    for _, old in moved:
        old.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_file(path: str | Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``.

    The caller writes the whole file to the yielded path. On an exception the temporary file is
    removed, ``path`` is left as it was, and so are the folders above it (:func:`made_parents`).
    """
    path = Path(path)
    with _temp_for(path, force) as tmp:
        yield tmp
        _place_all([(tmp, path)], force)


def _appeared(path: Path, verb: str) -> OutputExistsError:
    """The error for an output that was not there when the command started but is now."""
    return OutputExistsError(f"{path} appeared while this command ran; pass --force to {verb} it")


def rename_into_place(tmp: Path, path: Path, force: bool) -> None:
    """``os.replace(tmp, path)``; without ``force`` never over a file that appeared while the
    command ran (a hard link fails if ``path`` exists; where links are not supported, a check
    just before the rename)."""
    if force:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise _appeared(path, "overwrite") from None
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS):
            raise
        if os.path.lexists(path):
            raise _appeared(path, "overwrite") from None
        os.replace(tmp, path)
    else:
        tmp.unlink()


@contextlib.contextmanager
def atomic_files(*paths: str | Path | None, force: bool = False) -> Iterator[tuple[Path | None, ...]]:
    """:func:`atomic_file` for several outputs of one command: yields a temporary path for each of
    ``paths`` (None for a None entry); they are renamed into place only once the block has written
    them all, and all or none (:func:`_place_all`): a failure on any leaves every output as it was."""
    with contextlib.ExitStack() as stack:
        temps = tuple(None if path is None else stack.enter_context(_temp_for(Path(path), force)) for path in paths)
        yield temps
        _place_all([(tmp, Path(path)) for tmp, path in zip(temps, paths) if tmp is not None and path is not None],
                   force)


def check_output_folder(path: str | Path, kind: OutputFolder, force: bool) -> Path:
    """The checks :func:`atomic_dir` runs before the work, for a caller that must run them before
    its own (tools/train.py, before minutes of training): a folder name of its own, not the current
    folder, none there or ``force``, not a link, a file nor a mount point, ``kind``'s output or empty
    (:func:`refuse_foreign_folder`); the absolute path."""
    refuse_nameless_folder(path)
    refuse_inside({"the output folder": path}, {"the current folder": os.getcwd()},
                  "it would be replaced while in use; choose a new folder")
    path = Path(os.path.abspath(path))  # `..`, `a/..` name their folder
    remove_leftovers(path)  # first: a previous output it puts back is refused without force
    if path.is_symlink():  # before --force is asked for: --force would not help
        raise BadInputError(f"{path} is a symbolic link; give a folder (the link itself would be replaced)")
    if path.exists() and not path.is_dir():
        raise NotAFolderError(f"{path} is a file; give a folder")
    if os.path.ismount(path):  # a volume mounted there: renaming it fails (EBUSY), after all the work
        raise BadInputError(f"{path} is a mount point: an output folder is filled under a temporary name beside it "
                            f"and renamed into place, which a mount point cannot be; give a new folder inside it")
    refuse_existing(path, force)
    refuse_foreign_folder(path, kind)
    return path


@contextlib.contextmanager
def _naming_the_output(tmp: Path, out: Path) -> Iterator[None]:
    """An error raised while the caller fills the hidden folder ``tmp`` names ``out``, the folder the
    user asked for (same error class and exit status): a full disk during `bundle` named
    ``.<out>.tmp-<pid>-<hex>/<file>``, a folder gone by the time the message is read."""
    try:
        yield
    except DdpmExportError as e:
        message = str(e).replace(str(tmp), str(out))
        if message == str(e):
            raise
        raise type(e)(message).with_traceback(e.__traceback__) from e  # our errors take their message alone
    except OSError as e:  # a full disk, a permission: the CLI names e.filename
        names = [None if f is None else str(f).replace(str(tmp), str(out)) for f in (e.filename, e.filename2)]
        if names == [e.filename, e.filename2]:
            raise
        raise type(e)(e.errno, e.strerror, names[0], None, names[1]).with_traceback(e.__traceback__) from e


def _swap_in(tmp: Path, path: Path, old: Path, kind: OutputFolder, force: bool) -> None:
    """Rename the filled folder ``tmp`` to ``path``; with ``force`` a previous ``path`` (``kind``'s
    output) is moved to ``old`` first. On any exception, a signal landing between the two renames
    included, the previous folder is put back where nothing took its place (:func:`atomic_dir`
    deletes ``old`` afterwards); a rename that fails because another process wrote or moved ``path``
    meanwhile is an OutputExistsError naming ``path``, not the hidden folders."""
    moved = os.path.lexists(path)
    if moved and not force:
        raise _appeared(path, "replace")
    if moved:
        refuse_foreign_folder(path, kind)  # what is there now, not what was there at the start
    try:
        if moved:
            os.rename(path, old)
        os.rename(tmp, path)
    except BaseException as e:
        if os.path.lexists(old) and not os.path.lexists(path):  # put the previous folder back rather than lose it
            os.rename(old, path)
        if isinstance(e, OSError) and e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
            raise (OutputExistsError(f"{path} was replaced or moved by another command while this one ran (two "
                                     f"writing it at once); this command's output was not kept") if force else
                   _appeared(path, "replace")) from e
        raise


@contextlib.contextmanager
def atomic_dir(path: str | Path, kind: OutputFolder, *, force: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``path``; on success it becomes ``path``.

    With ``force`` an existing ``path`` is moved aside first and deleted after the rename, so
    ``path`` is only ever missing for the instant between two renames, never half-filled; it
    must be ``kind``'s output (:func:`refuse_foreign_folder`, checked before the work and again
    before the swap), never a folder of the user's own files. Without ``force`` a folder that
    appeared while the command ran is refused, not replaced.
    """
    given = Path(path)  # as the user spelt it, for messages
    path = check_output_folder(path, kind, force)
    with made_parents(path):
        tmp = temp_sibling(path)  # unique: threads and processes never collide
        old = temp_sibling(path, "old")
        tmp.mkdir()
        try:
            with _naming_the_output(tmp, given):
                yield tmp
            _swap_in(tmp, path, old, kind, force)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            with contextlib.suppress(OSError):
                _rmtree(old)
