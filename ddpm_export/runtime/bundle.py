"""A deployable bundle: one folder with the ONNX file(s), TensorRT engine(s) when present, and a
``manifest.json`` that lists every file with its sha256 (torch-free).

``manifest.json``::

    {"format": "ddpm-export-bundle", "version": 1, "created_by": "ddpm-export 0.1.0",
     "files": [{"path": "tiny.onnx", "sha256": "...", "size": 836952, "role": "onnx"},
               {"path": "tiny.plan", ..., "role": "engine"},
               {"path": "tiny.plan.json", ..., "role": "engine_sidecar"}],
     "models": [{"onnx": "tiny.onnx", "precision": "fp32", "attention": "decomposed",
                 "engines": ["tiny.plan"], "metadata": {<the ONNX file's metadata_props>}}],
     "diffusion": {<DiffusionConfig>},
     "sampler_defaults": {"sampler": "ddim", "num_inference_steps": 50, "eta": 0.0, ...}}

``sampler_defaults`` repeats, for reading at a glance, the default sampler, its steps, DDIM's eta
and the fields that sampler reads (``ddpm_export.diffusion.sampler_defaults``); ``diffusion`` is
the authority.

Every ONNX file of a bundle comes from the same model (UNet config) and schedule; they may differ
in precision, attention form or batch range. ``models[i].metadata`` lets a TensorRT-only app
load a bundle without onnx or onnxruntime. :func:`verify_bundle` checks every listed file
before anything is loaded and names the first missing or altered one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ddpm_export._version import __version__
from ddpm_export.configbase import ConfigError
from ddpm_export.contract.info import ModelInfo
from ddpm_export.contract.metadata import sha256_file
from ddpm_export.contract.sidecar import check_sidecar, read_sidecar, sidecar_path
from ddpm_export.diffusion.config import DiffusionConfig
from ddpm_export.diffusion.samplers import sampler_defaults
from ddpm_export.errors import InputNotFoundError, IntegrityError, NotAFolderError, WrongTypeError
from ddpm_export.files import (BUNDLE_FORMAT, BUNDLE_MANIFEST, OutputFolder, atomic_dir, bundle_files, is_os_metadata,
                               refuse_inside, refuse_nameless_folder)
from ddpm_export.jsonio import parse_json
from ddpm_export.runtime.info import read_metadata
from ddpm_export.runtime.onnx_wire import scan_external_data

__all__ = ["FORMAT", "MANIFEST", "BundleError", "Manifest", "make_bundle", "read_manifest", "verify_bundle"]

MANIFEST, FORMAT = BUNDLE_MANIFEST, BUNDLE_FORMAT  # defined in files: no output is written into a bundle
#: a bundle folder: our manifest and the files it lists (what --force may replace)
BUNDLE_FOLDER = OutputFolder(MANIFEST, listed=bundle_files)
VERSION = 1
ROLES = ("onnx", "onnx_data", "engine", "engine_sidecar")
#: the keys of a version-1 manifest, of each of its ``files`` entries and of each ``models`` entry
KEYS = ("format", "version", "created_by", "files", "models", "diffusion", "sampler_defaults")
FILE_KEYS = ("path", "sha256", "size", "role")
MODEL_KEYS = ("onnx", "precision", "attention", "engines", "metadata")


class BundleError(IntegrityError):
    """A bundle's manifest is malformed, or a file is missing or does not match its sha256."""


@dataclasses.dataclass(frozen=True)
class Manifest:
    """A parsed ``manifest.json``: ``files`` maps each file name to ``{sha256, size, role}``."""

    folder: Path
    files: dict[str, dict[str, Any]]
    models: list[dict[str, Any]]
    diffusion: DiffusionConfig
    sampler_defaults: dict[str, Any]

    def model(self, onnx: str | os.PathLike[str] | None = None) -> dict[str, Any]:
        """The ``models`` entry of ONNX file ``onnx``, its name in the bundle (default: the first)."""
        if onnx is None:
            return self.models[0]
        if not isinstance(onnx, (str, os.PathLike)):
            raise WrongTypeError(f"onnx must be the name of one of the bundle's ONNX files, got {type(onnx).__name__}")
        onnx = os.fspath(onnx)
        for entry in self.models:
            if entry["onnx"] == onnx:
                return entry
        raise BundleError(f"{self.folder}: no ONNX file {onnx!r} in this bundle; it has "
                          f"{', '.join(m['onnx'] for m in self.models)}")

    def sha256(self, name: str) -> str:
        return self.files[name]["sha256"]


# --- reading and checking ---------------------------------------------------------------
def _absent(path: Path) -> str:
    """How a file that should be in a bundle is not there: missing, or something else in its place
    (a folder, a FIFO)."""
    return "not a regular file" if os.path.lexists(path) else "missing"


def read_manifest(folder: str | Path) -> Manifest:
    """Parse and validate ``folder/manifest.json`` (structure only; see :func:`verify_bundle`)."""
    if not isinstance(folder, (str, os.PathLike)):
        raise WrongTypeError(f"a bundle must be a str or os.PathLike naming its folder, got {type(folder).__name__}")
    folder = Path(folder)
    path = folder / MANIFEST
    if folder.is_file():
        raise NotAFolderError(f"{folder}: a file, not a bundle folder (an ONNX file is read with Pipeline.from_onnx, "
                          f"`sample --onnx`)")
    if not folder.is_dir():
        raise InputNotFoundError(f"{folder}: not a bundle folder (no such directory)", folder)
    if not path.is_file():
        raise BundleError(f"{path}: {_absent(path)}; a bundle folder holds a {MANIFEST} (build one with "
                          f"`ddpm-export bundle`)")
    try:
        data = parse_json(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise BundleError(f"{path}: not valid JSON ({e})") from e
    except OSError as e:
        raise BundleError(f"{path}: cannot be read ({e.strerror or e})") from e

    def need(cond: bool, what: str) -> None:
        if not cond:
            raise BundleError(f"{path}: {what}")

    need(isinstance(data, dict) and data.get("format") == FORMAT, f"'format' must be {FORMAT!r}")
    need(type(data.get("version")) is int and data.get("version") == VERSION,  # true == 1 in Python
         f"'version' {data.get('version')!r} is not supported (this code reads {VERSION})")
    odd = _odd_keys(data, KEYS)
    need(not odd, f"the manifest {odd} (version {VERSION} has {', '.join(KEYS)})")
    files: dict[str, dict[str, Any]] = {}
    need(isinstance(data.get("files"), list) and data["files"], "'files' must be a non-empty list")
    for entry in data["files"]:
        need(isinstance(entry, dict), f"every 'files' entry needs path, sha256, size and role; got {entry!r}")
        odd = _odd_keys(entry, FILE_KEYS)
        need(not odd, f"{'file ' + repr(entry['path']) if 'path' in entry else 'a files entry'} {odd} (each has "
                      f"path, sha256, size and role)")
        name = entry["path"]
        need(_plain_name(name), f"file {name!r} must be a plain file name inside the bundle folder")
        need(name not in files, f"file {name!r} is listed twice")
        need(isinstance(entry["role"], str) and entry["role"] in ROLES,
             f"file {name!r}: role {entry['role']!r} is not one of {', '.join(ROLES)}")
        need(isinstance(entry["sha256"], str) and len(entry["sha256"]) == 64
             and all(c in "0123456789abcdef" for c in entry["sha256"]),
             f"file {name!r}: sha256 must be 64 lowercase hex digits, got {entry['sha256']!r}")
        need(type(entry["size"]) is int and entry["size"] >= 0,
             f"file {name!r}: size must be a non-negative integer, got {entry['size']!r}")
        files[name] = {"sha256": entry["sha256"], "size": entry["size"], "role": entry["role"]}
    models = data.get("models")
    _check_models(models, files, need)
    need(isinstance(data["sampler_defaults"], dict), "'sampler_defaults' must be an object")
    try:
        diffusion = DiffusionConfig.from_dict(data.get("diffusion"), source=f"{path}: diffusion")
    except ConfigError as e:
        raise BundleError(str(e)) from e
    return Manifest(folder, files, models, diffusion, dict(data["sampler_defaults"]))


def _odd_keys(entry: dict[str, Any], keys: Sequence[str]) -> str:
    """What is wrong with the keys of the object ``entry``, which must be ``keys`` ('' if nothing):
    a missing one was read as None (its message then said 'is None'), an unknown one was ignored."""
    missing = [key for key in keys if key not in entry]
    unknown = sorted(key for key in entry if key not in keys)
    if missing:
        return f"lacks {', '.join(map(repr, missing))}"
    return f"has unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}" if unknown else ""


def _check_models(models: Any, files: dict[str, Any], need: Callable[[bool, str], None]) -> None:
    """The manifest's ``models``: a non-empty list of ``{onnx, engines, metadata}`` whose files are
    listed in ``files``, each ONNX file once."""
    need(isinstance(models, list) and models, "'models' must be a non-empty list")
    for m in models:
        need(isinstance(m, dict), f"every 'models' entry must be an object; got {type(m).__name__}")
        odd = _odd_keys(m, MODEL_KEYS)
        need(not odd, f"a 'models' entry {odd} (each has {', '.join(MODEL_KEYS)})")
        need(isinstance(m["onnx"], str), f"a 'models' entry's onnx must be a file name; got {type(m['onnx']).__name__}")
        need(isinstance(m["engines"], list) and all(isinstance(e, str) for e in m["engines"]),
             f"model {m['onnx']!r}: 'engines' must be a list of file names")
        need(isinstance(m["metadata"], dict) and all(isinstance(k, str) and isinstance(v, str)
                                                     for k, v in m["metadata"].items()),
             f"model {m['onnx']!r}: 'metadata' must map strings to strings")
        for name, role in [(m["onnx"], "onnx"), *((e, "engine") for e in m["engines"])]:
            need(name in files, f"model file {name!r} is not listed in 'files'")
            need(files[name]["role"] == role, f"model file {name!r} is listed in 'files' as {files[name]['role']!r}, "
                                              f"not {role!r}")
            if role == "engine":
                need(files.get(name + ".json", {}).get("role") == "engine_sidecar",
                     f"engine {name!r}: its sidecar {name + '.json'!r} is not listed as engine_sidecar")
    named = [m["onnx"] for m in models]
    need(len(named) == len(set(named)), f"'models' lists one ONNX file twice: {named}")


def verify_bundle(folder: str | Path) -> Manifest:
    """Check every file listed in the manifest (present, size, sha256); return the manifest.

    Raises BundleError naming the first missing or altered file.
    """
    manifest = read_manifest(folder)
    folder = Path(folder)
    _refuse_strangers(folder, manifest)
    for name, entry in manifest.files.items():
        path = folder / name
        if not path.is_file():
            raise BundleError(f"{path}: {_absent(path)}; {MANIFEST} lists it ({entry['role']}) -- the bundle is "
                              f"incomplete, rebuild it with `ddpm-export bundle`")
        size = path.stat().st_size
        digest = sha256_file(path) if size == entry["size"] else None
        if digest != entry["sha256"]:
            got = f"sha256 {digest}" if digest is not None else f"size {size} bytes"
            want = f"sha256 {entry['sha256']}" if digest is not None else f"size {entry['size']} bytes"
            raise BundleError(f"{path}: {got} does not match {MANIFEST} ({want}); the file was modified or "
                              f"corrupted -- rebuild the bundle with `ddpm-export bundle`")
    _check_recorded_metadata(folder, manifest)
    for entry in manifest.models:  # an engine serves only the ONNX file it was built from (sample, triton)
        for engine in entry["engines"]:
            check_sidecar(folder / engine, read_sidecar(folder / engine), onnx_sha256=manifest.sha256(entry["onnx"]),
                          tensorrt_version=None)
    return manifest


def _check_recorded_metadata(folder: Path, manifest: Manifest) -> None:
    """Each ``models`` entry's ``metadata`` must be its (hash-checked) ONNX file's own: the manifest
    itself carries no hash, and ``ddpm-export triton`` serves the schedule and batch range it reads
    there."""
    for entry in manifest.models:
        path = folder / entry["onnx"]
        props = read_metadata(path)
        keys = sorted(k for k in set(props) | set(entry["metadata"]) if props.get(k) != entry["metadata"].get(k))
        if keys:
            raise BundleError(f"{folder / MANIFEST}: the metadata it records for {entry['onnx']} differs from the "
                              f"file's own (key {keys[0]!r}{f' and {len(keys) - 1} more' if len(keys) > 1 else ''}); "
                              f"the manifest was edited -- rebuild the bundle with `ddpm-export bundle`")
        info = ModelInfo.from_metadata(props, source=str(path))
        _check_summary(folder, f"models[{entry['onnx']!r}]",
                       {"precision": entry.get("precision"), "attention": entry.get("attention"),
                        **{f"diffusion.{k}": v for k, v in manifest.diffusion.to_dict().items()}},
                       {"precision": info.precision, "attention": info.attention,
                        **{f"diffusion.{k}": v for k, v in info.diffusion.to_dict().items()}})
    _check_summary(folder, "sampler_defaults", manifest.sampler_defaults,
                   json.loads(json.dumps(sampler_defaults(manifest.diffusion))))


def _check_summary(folder: Path, where: str, recorded: dict[str, Any], derived: dict[str, Any]) -> None:
    """The manifest's summaries (for reading at a glance; the schedule for every file) must say
    what the hash-checked files say: an edited ``num_inference_steps: -3`` was accepted."""
    keys = [k for k in sorted(set(recorded) | set(derived)) if recorded.get(k) != derived.get(k)]
    if keys:
        raise BundleError(f"{folder / MANIFEST}: {where} {keys[0]!r} is {_short(recorded.get(keys[0]))}, its ONNX "
                          f"file's metadata says {_short(derived.get(keys[0]))}; the manifest was edited -- rebuild "
                          f"the bundle with `ddpm-export bundle`")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _refuse_strangers(folder: Path, manifest: Manifest) -> None:
    """Refuse symlinks (they could point out of the bundle) and anything the manifest does not
    list: ONNX Runtime would load an unlisted external-data file without its hash being checked.
    A file manager's own files (:func:`~ddpm_export.files.is_os_metadata`) are let be: a bundle
    opened in Finder gained a .DS_Store and was refused; no ONNX file of the manifest, whose bytes
    are hashed, names them as external data."""
    for path in sorted(folder.iterdir()):
        if path.name not in manifest.files and is_os_metadata(path):
            continue
        if path.is_symlink():
            raise BundleError(f"{path}: is a symbolic link; a bundle holds real files only (it could point out "
                              f"of the bundle) -- copy the file in and rebuild the bundle with `ddpm-export bundle`")
        if path.name != MANIFEST and path.name not in manifest.files:
            raise BundleError(f"{path}: not listed in {MANIFEST}, so its sha256 is not checked; remove it or "
                              f"rebuild the bundle with `ddpm-export bundle`")


def _plain_name(name: Any) -> bool:
    return (isinstance(name, str) and name not in ("", ".", "..", MANIFEST) and "/" not in name
            and "\\" not in name and not name.startswith("."))


# --- building ------------------------------------------------------------------------------
def make_bundle(onnx: Sequence[str | Path], out: str | Path, *, engines: Sequence[str | Path] = (),
                force: bool = False) -> Path:
    """Copy ``onnx`` file(s) and ``engines`` (each with its sidecar ``<engine>.json``) into the
    folder ``out`` with a ``manifest.json``; atomic (built in a temporary folder, then renamed).

    Every engine's sidecar must name the sha256 of one of the ONNX files. Raises BundleError
    (and FileExistsError when ``out`` exists and not ``force``, InputNotFoundError -- a
    FileNotFoundError -- for a missing file, WrongTypeError for an argument of the wrong type).
    """
    _check_make_arguments(onnx, out, engines, force)
    onnx_paths = [Path(p) for p in onnx]
    if not onnx_paths:
        raise BundleError("a bundle needs at least one ONNX file (--onnx)")
    sources = _Sources()
    models, hashes, first = _add_onnx_files(sources, onnx_paths)
    by_onnx = {m["onnx"]: m for m in models}
    for path in (Path(p) for p in engines):
        if not path.is_file():
            raise InputNotFoundError(f"{path}: no such engine file", path)
        sidecar = read_sidecar(path)
        owner = hashes.get(sidecar["onnx_sha256"])
        converted = sidecar.get("converted_from")
        if owner is None and isinstance(converted, dict) and converted.get("onnx_sha256") in hashes:
            graph = path.with_name(path.name + ".onnx")  # `trt --fp16` on an fp32 file: its fp16 graph
            raise BundleError(f"{path}: built from {graph.name}, the fp16 graph `trt --fp16` converted from "
                              f"{hashes[converted['onnx_sha256']]}: bundle that graph with it (--onnx {graph})")
        if owner is None:
            raise BundleError(f"{path}: built from an ONNX file with sha256 {sidecar['onnx_sha256']} "
                              f"(per {sidecar_path(path).name}), which is none of the bundled ONNX files; "
                              f"rebuild the engine from {onnx_paths[0]}")
        name = sources.add(path, "engine")
        if by_onnx[owner]["engines"]:  # sample and triton run an ONNX file's first engine: a second went unused
            raise BundleError(f"{path}: a second engine built from {owner} (the first: {by_onnx[owner]['engines'][0]}); "
                              f"`sample --backend tensorrt` and `triton` run one engine per ONNX file: bundle one (a "
                              f"bundle per GPU model)")
        by_onnx[owner]["engines"].append(name)
        sources.add(sidecar_path(path), "engine_sidecar")

    refuse_nameless_folder(out)
    refuse_inside({"the bundle folder": out}, {f"the input {name}:": src for name, (src, _) in sources.items()},
                  "replacing the folder would delete it; write the bundle into a new folder")
    d = first.diffusion
    with atomic_dir(out, BUNDLE_FOLDER, force=force) as tmp:
        files = []
        for name, (src, role) in sources.items():
            shutil.copyfile(src, tmp / name)
            files.append({"path": name, "sha256": sha256_file(tmp / name), "size": (tmp / name).stat().st_size,
                          "role": role})
        manifest = {"format": FORMAT, "version": VERSION, "created_by": f"ddpm-export {__version__}",
                    "files": files, "models": models, "diffusion": d.to_dict(),
                    "sampler_defaults": sampler_defaults(d)}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return Path(out)


class _Sources(dict):
    """Name in the bundle -> (source path, role); refuses missing files and clashing names."""

    def add(self, path: Path, role: str) -> str:
        if not path.is_file():
            raise BundleError(f"{path}: no such file")
        name = path.name
        if not _plain_name(name):
            raise BundleError(f"{path}: the name {name!r} cannot be used in a bundle (reserved or hidden)")
        if name in self:
            given_twice = os.path.realpath(self[name][0]) == os.path.realpath(path)
            raise BundleError(f"{path}: given twice" if given_twice else
                              f"{path}: two files are named {name!r}; rename one")
        self[name] = (path, role)
        return name


def _check_make_arguments(onnx: Any, out: Any, engines: Any, force: Any) -> None:
    """WrongTypeError naming the argument: a single path for a list (a str would be read one
    character at a time), a folder that is no path, a ``force`` that is no bool ("no" is truthy)."""
    for name, paths in (("onnx", onnx), ("engines", engines)):
        if isinstance(paths, (str, os.PathLike)) or not isinstance(paths, (list, tuple)):
            raise WrongTypeError(f"{name} must be a list of file paths (one file: [path]), got {type(paths).__name__}")
        bad = [p for p in paths if not isinstance(p, (str, os.PathLike))]
        if bad:
            raise WrongTypeError(f"{name}: every entry must be a str or os.PathLike, got {type(bad[0]).__name__}")
    if not isinstance(out, (str, os.PathLike)):
        raise WrongTypeError(f"out must be a str or os.PathLike naming the bundle folder, got {type(out).__name__}")
    if not isinstance(force, (bool, np.bool_)):
        raise WrongTypeError(f"force must be True or False, got {force!r}")


def external_data_files(path: Path) -> list[Path]:
    """The external-data files the ONNX file ``path`` names (every tensor's ``location``, read from
    the file itself: :func:`~ddpm_export.runtime.onnx_wire.scan_external_data`, no ``onnx`` needed).
    Each must be a plain file name beside ``path``: a location in another folder (``../w.bin``, an
    absolute path) is refused, as it would not travel with the bundle."""
    names = scan_external_data(path)
    if names is None:
        raise BundleError(f"{path}: not a well-formed ONNX file (its external data cannot be read from it)")
    for name in names:
        if not _plain_name(name) or name == path.name:
            raise BundleError(f"{path}: external data {name!r} is not a plain file name beside it (it escapes its "
                              f"folder); a bundle holds only files of one folder")
    return [path.with_name(name) for name in names]


def _add_onnx_files(sources: _Sources, onnx_paths: list[Path]
                    ) -> tuple[list[dict[str, Any]], dict[str, str], ModelInfo]:
    """Add each ONNX file (and its external data); its ``models`` entry, sha256 -> name, the first's info."""
    models, hashes = [], {}
    first: ModelInfo | None = None
    for path in onnx_paths:
        props = read_metadata(path)
        info = ModelInfo.from_metadata(props, source=str(path))
        if first is None:
            first = info
        elif info.unet != first.unet or info.diffusion != first.diffusion:
            what, mine, theirs = (("UNet config", info.unet, first.unet) if info.unet != first.unet else
                                  ("schedule (DiffusionConfig)", info.diffusion, first.diffusion))
            fields = [f.name for f in dataclasses.fields(mine) if getattr(mine, f.name) != getattr(theirs, f.name)]
            raise BundleError(f"{path}: its {what} differs from {onnx_paths[0]}'s in {', '.join(fields)}; a bundle "
                              f"holds one model")
        elif not first.same_source(info.source_sha256, info.source_tensors_sha256):  # two models under one name
            raise BundleError(f"{path} was exported from other weights than {onnx_paths[0]} (source sha256 "
                              f"{info.source_sha256[:12]}... vs {first.source_sha256[:12]}...); a bundle holds one "
                              f"model")
        name = sources.add(path, "onnx")
        for data in external_data_files(path):
            sources.add(data, "onnx_data")
        hashes[sha256_file(path)] = name
        models.append({"onnx": name, "precision": info.precision, "attention": info.attention,
                       "engines": [], "metadata": dict(props)})
    assert first is not None
    return models, hashes, first
