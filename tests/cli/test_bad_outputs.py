"""Bad-input corpus, CLI outputs: existing outputs, the same file given twice, unwritable or full
destinations, outputs under a file, wrong suffixes, a missing optional dependency -- each refused
with one line (exit 2) and nothing written or changed. And nothing left behind: unique temp
names per call, leftovers of killed runs removed by the next write."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the exports need torch")
pytest.importorskip("onnx")

from ddpm_export.files import (OutputFolder, atomic_dir, atomic_file, atomic_files, remove_leftovers,  # noqa: E402
                               temp_sibling)

from bad_inputs import expect_failure, run, run_with_file_size_limit  # noqa: E402
from runtime_exports import exported  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return exported("tiny", tmp_path_factory)


def _sample(tiny: Path, *args) -> list:
    return ["sample", "--onnx", tiny, "-n", "2", "--steps", "2", "--no-progress", *args]


def test_existing_output(tmp_path, tiny):
    (tmp_path / "x.png").write_bytes(b"precious")
    expect_failure(_sample(tiny, "-o", tmp_path / "x.png"), 2, "x.png exists; pass --force", watch=[tmp_path])


def test_existing_npy(tmp_path, tiny):
    (tmp_path / "x.npy").write_bytes(b"precious")
    expect_failure(_sample(tiny, "-o", tmp_path / "x.png", "--save-npy", tmp_path / "x.npy"), 2,
                   "x.npy exists; pass --force", watch=[tmp_path])


@pytest.mark.parametrize("spelling", ["same", "dot-slash", "dot-dot"])
def test_same_file_twice(tmp_path, tiny, spelling, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    other = {"same": "o.png", "dot-slash": "./o.png", "dot-dot": "sub/../o.png"}[spelling]
    (tmp_path / "o.png").write_bytes(b"precious")
    expect_failure(_sample(tiny, "-o", "o.png", "--save-npy", other, "--force"), 2, "name the same file",
                   watch=[tmp_path])


def test_an_output_over_the_input_is_refused_even_with_force(tmp_path, tiny):
    """--force overwrites an earlier output, never the file being read."""
    model = tmp_path / "m.onnx"
    model.write_bytes(tiny.read_bytes())
    expect_failure(["sample", "--onnx", model, "-n", "2", "-o", model, "--force"], 2,
                   "--onnx .*m.onnx and --output .*m.onnx name the same file", watch=[tmp_path])
    expect_failure(["sample", "--onnx", model, "-n", "2", "-o", tmp_path / "x.png", "--save-npy", model, "--force"], 2,
                   "--onnx .* and --save-npy .* name the same file", watch=[tmp_path])
    expect_failure(["verify", "--model", "tiny", "--onnx", model, "--report", model, "--force"], 2,
                   "--onnx .* and --report .* name the same file", watch=[tmp_path])


def test_an_output_over_a_file_of_the_model_folder_is_refused(tmp_path, tiny):
    """verify and bench read --model's folder: a report or JSON named like one of its files is
    refused even with --force (verify --report ckpt/config.json used to destroy the checkpoint)."""
    from ddpm_export import load_model
    from ddpm_export.nn.checkpoint import save_checkpoint

    ckpt = save_checkpoint(load_model("tiny"), tmp_path / "ckpt")
    model = tmp_path / "m.onnx"
    model.write_bytes(tiny.read_bytes())
    expect_failure(["verify", "--model", ckpt, "--onnx", model, "--report", ckpt / "config.json", "--force"], 2,
                   "the model's config.json .* and --report .*config.json name the same file", watch=[tmp_path])
    expect_failure(["bench", "--model", ckpt, "--json", ckpt / "model.safetensors", "--force"], 2,
                   "the model's model.safetensors .* name the same file", watch=[tmp_path])
    expect_failure(["verify", "--model", "tiny", "--onnx", model, "--report", tmp_path / "m.onnx.data", "--force"], 2,
                   "--onnx's external data .* name the same file", watch=[tmp_path])
    import onnx  # a file whose weights are in weights.bin: only <name>.data was protected

    onnx.save_model(onnx.load(str(tiny)), str(tmp_path / "w.onnx"), save_as_external_data=True,
                    location="weights.bin", size_threshold=0)
    expect_failure(["verify", "--model", "tiny", "--onnx", tmp_path / "w.onnx", "--report", tmp_path / "weights.bin",
                    "--force"], 2, "--onnx's external data weights.bin .* name the same file", watch=[tmp_path])
    from ddpm_export.runtime import make_bundle

    bundle = make_bundle([tiny], tmp_path / "b")
    expect_failure(["sample", "--bundle", bundle, "-o", tmp_path / "x.png", "--save-npy", bundle / tiny.name, "--force"],
                   2, "the bundle's tiny.onnx .* and --save-npy .* name the same file", watch=[tmp_path])


def test_an_output_over_the_scheduler_config_of_a_diffusers_pipeline_is_refused(tmp_path, tiny):
    """A diffusers UNet folder reads its schedule from ../scheduler/scheduler_config.json, outside the
    folder: verify --report over it with --force overwrote it, and the model no longer loaded."""
    import json

    unet, scheduler = tmp_path / "pipe" / "unet", tmp_path / "pipe" / "scheduler"
    unet.mkdir(parents=True)
    scheduler.mkdir()
    (unet / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel", "sample_size": 16}))
    (scheduler / "scheduler_config.json").write_text(json.dumps({"_class_name": "DDPMScheduler"}))
    expect_failure(["verify", "--model", unet, "--onnx", tiny, "--report", scheduler / "scheduler_config.json",
                    "--force"], 2, "the model's scheduler config .* name the same file", watch=[tmp_path])
    (unet / "diffusion.json").write_text("{}")  # read instead of the pipeline's: the path is free
    from ddpm_export.inputs import input_files

    assert scheduler / "scheduler_config.json" not in input_files(model=unet).values()


def test_an_onnx_file_kept_in_its_model_folder_may_be_read_as_both(tmp_path):
    """Two inputs naming one file are no conflict: verify --model ckpt --onnx ckpt/model.onnx (where
    tools/train.py and the shipped digits folder keep the export) was refused as 'the same file'."""
    from click.testing import CliRunner

    from ddpm_export import load_model
    from ddpm_export.cli import main
    from ddpm_export.nn.checkpoint import save_checkpoint

    from ddpm_export.export.onnx import export_onnx

    ckpt = save_checkpoint(load_model("tiny"), tmp_path / "ckpt")
    export_onnx(ckpt, ckpt / "model.onnx", max_batch=4, validate=False, log=lambda s: None)
    result = CliRunner().invoke(main, ["verify", "--model", str(ckpt), "--onnx", str(ckpt / "model.onnx"), "--steps",
                                       "2", "--ddpm-steps", "2", "--solver-steps", "2"])
    assert "name the same file" not in result.output and "verify passed" in result.output, result.output
    expect_failure(["verify", "--model", ckpt, "--onnx", ckpt / "model.onnx", "--report", ckpt / "model.onnx",
                    "--force"], 2, "the model's model.onnx .* and --report .*model.onnx name the same file",
                   watch=[tmp_path])


def test_a_second_output_that_cannot_be_written_stops_the_first(tmp_path, tiny):
    """Every destination is tried before any work: the grid is not written when the .npy cannot be."""
    npy = _unwritable(tmp_path, "x.npy")
    expect_failure(_sample(tiny, "-o", tmp_path / "x.png", "--save-npy", npy), 2, r"\.npy: cannot be written",
                   watch=[tmp_path])
    assert not (tmp_path / "x.png").exists()


def test_a_failed_write_names_the_destination_not_its_temp_file(tmp_path):
    target = tmp_path / "x.bin"
    with pytest.raises(OSError) as raised:
        with atomic_file(target) as tmp:
            open(tmp.parent / "missing" / tmp.name, "wb")  # an OSError naming another path: passed through
    assert "missing" in str(raised.value)
    with pytest.raises(OSError) as raised:
        with atomic_file(target) as tmp:
            raise FileNotFoundError(2, "No such file or directory", str(tmp))
    assert raised.value.filename == str(target) and ".tmp-" not in str(raised.value)
    with pytest.raises(OSError) as raised:
        with atomic_file(target):
            raise OSError("1536 requested and 343 written")  # numpy's short write: no errno, no file name
    assert raised.value.filename == str(target) and raised.value.strerror == "1536 requested and 343 written"
    assert list(tmp_path.iterdir()) == []


def test_output_under_a_file(tmp_path, tiny):
    (tmp_path / "file.txt").write_text("I am a file")
    expect_failure(_sample(tiny, "-o", tmp_path / "file.txt" / "x.png"), 2, "file.txt is a file, not a folder",
                   watch=[tmp_path])


def test_output_deep_under_a_file(tmp_path, tiny):
    (tmp_path / "file.txt").write_text("I am a file")
    expect_failure(["onnx", "--model", "tiny", "-o", tmp_path / "file.txt" / "a" / "b.onnx"], 2,
                   "file.txt is a file, not a folder", watch=[tmp_path])


@pytest.mark.parametrize("command", [["onnx", "--model", "tiny", "-o"], ["inspect", "--model", "tiny", "--json"],
                                     ["verify", "--model", "tiny", "--onnx", "TINY", "--report"]])
def test_a_file_output_typed_as_a_folder_is_refused(tmp_path, tiny, command):
    """`onnx -o y.onnx/` wrote the file y.onnx (a Path drops the trailing separator), while
    `sample -o x.png/` was refused: every file output ending in '/' is refused, naming it."""
    args = [tiny if part == "TINY" else part for part in command]
    out = f"{tmp_path / 'out.json'}/"
    expect_failure([*args, out], 2, f"{out} ends in '/', which names a folder; give the path of a file to write",
                   watch=[tmp_path])


@pytest.mark.parametrize("target", ["missing", "loop"])
def test_output_under_a_link_that_leads_nowhere_is_refused_before_the_work(tmp_path, tiny, target):
    """A parent folder that is a dangling link (a mount point not mounted, a loop) was passed as a
    missing folder: the export ran, then mkdir failed with 'runs: File exists'."""
    (tmp_path / "runs").symlink_to(tmp_path / "gone" if target == "missing" else tmp_path / "runs")
    said = "runs is a symbolic link to .*, which does not lead to a folder"
    out = expect_failure(["onnx", "--model", "tiny", "-o", tmp_path / "runs" / "today" / "t.onnx"], 2, said,
                         watch=[tmp_path])
    assert "exporting" not in out
    expect_failure(_sample(tiny, "-o", tmp_path / "runs" / "x.png"), 2, said, watch=[tmp_path])
    expect_failure(["bundle", "--onnx", tiny, "-o", tmp_path / "runs" / "b"], 2, said, watch=[tmp_path])


def test_bundle_output_under_a_file(tmp_path, tiny):
    (tmp_path / "f").write_text("x")
    expect_failure(["bundle", "--onnx", tiny, "-o", tmp_path / "f" / "b"], 2, "is a file, not a folder",
                   watch=[tmp_path])


def test_bundle_output_is_a_file(tmp_path, tiny):
    (tmp_path / "b").write_text("x")
    expect_failure(["bundle", "--onnx", tiny, "-o", tmp_path / "b", "--force"], 2, "b. is a file",
                   watch=[tmp_path])


@pytest.mark.parametrize("command, marker", [(["bundle", "--onnx", "TINY"], "manifest.json"),
                                             (["triton", "--bundle", "BUNDLE"], "sampler/config.pbtxt"),
                                             (["demo", "--model", "tiny"], "report.json")])
def test_force_replaces_only_a_folder_the_command_wrote(tmp_path, tiny, command, marker):
    # --force on a folder of the user's own files deleted them (bundle, triton, demo)
    bundle = tmp_path / "bundle"
    assert run(["bundle", "--onnx", tiny, "-o", bundle]).exit_code == 0
    args = [str(tiny) if a == "TINY" else str(bundle) if a == "BUNDLE" else a for a in command]
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "thesis.txt").write_text("years of work")
    expect_failure([*args, "-o", docs, "--force"], 2, f"holds no {marker} of ours, so this command did not write it",
                   watch=[tmp_path])
    # a file of the marker's name is not enough: it deleted thesis.txt beside a user's report.json
    (docs / marker).parent.mkdir(exist_ok=True)
    (docs / marker).write_text("{}")
    expect_failure([*args, "-o", docs, "--force"], 2,
                   # someone else's manifest (or a truncated one of ours): not a bundle this command can vouch for
                   f"its {marker} is unreadable or another tool's, so this command cannot tell it wrote the folder"
                   if marker == "manifest.json" else
                   r"holds thesis.txt besides what this command writes: --force would delete it", watch=[tmp_path])
    if command[0] != "demo":  # a folder it wrote, and an empty one, are replaced (demo: minutes, tested elsewhere)
        for folder in (bundle if command[0] == "bundle" else tmp_path / "repo", tmp_path / "empty"):
            folder.mkdir(exist_ok=True)
            for _ in range(2):
                result = run([*args, "-o", folder, "--force"])
                assert result.exit_code == 0 and (folder / marker).is_file(), result.output


def _unwritable(tmp_path: Path, name: str) -> Path:
    """A destination this process cannot create: under /proc for root, else in a read-only folder."""
    if os.geteuid() == 0:
        return Path("/proc/self") / name  # not writable even for root
    (tmp_path / "ro").mkdir(mode=0o500)
    return tmp_path / "ro" / name


def test_unwritable_destination(tmp_path, tiny):
    target = _unwritable(tmp_path, "x.png")
    out = expect_failure(_sample(tiny, "-o", target), 2, "x.png", watch=[tmp_path])
    assert "cannot be written" in out or "check that the folder exists" in out


@pytest.mark.parametrize("output", ["x.png", "new/deeper/x.png"])
def test_full_disk(tmp_path, tiny, output):
    """A write that fails half-way (a full disk, simulated by RLIMIT_FSIZE) is one line, exit 2,
    and leaves no temp file, no output and none of the folders it created for the output."""
    proc = run_with_file_size_limit(["sample", "--onnx", tiny, "-n", "2", "--steps", "2", "--no-progress", "-o",
                                     tmp_path / output], 200, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().startswith("Error: ") and "File too large" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_full_disk_during_the_demo_names_its_output_folder(tmp_path):
    """demo fills a hidden folder first; a write that fails there names the folder asked for."""
    proc = run_with_file_size_limit(["demo", "--model", "tiny", "--out", tmp_path / "d"], 100_000, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert f"Error: {tmp_path / 'd' / 'model.onnx'}: File too large" in proc.stderr, proc.stderr
    assert ".tmp-" not in proc.stderr
    assert list(tmp_path.iterdir()) == []
    proc = run_with_file_size_limit(["onnx", "--model", "tiny", "-o", tmp_path / "t.onnx"], 100_000, cwd=tmp_path)
    assert proc.returncode == 2 and f"Error: {tmp_path / 't.onnx'}: File too large" in proc.stderr, proc.stderr
    assert list(tmp_path.iterdir()) == []  # the onnx command too: it named "a file"


def test_full_disk_during_bundle_and_triton_names_the_output_folder(tmp_path, tiny):
    """bundle and triton fill a hidden folder too: a copy that failed there was reported as
    '<file> -> .b.tmp-<pid>-<hex>/<file>: File too large', a folder gone when the message is read."""
    from ddpm_export.runtime import make_bundle

    proc = run_with_file_size_limit(["bundle", "--onnx", tiny, "-o", tmp_path / "b"], 100_000, cwd=tmp_path)
    assert proc.returncode == 2 and f"-> {tmp_path / 'b' / tiny.name}: File too large" in proc.stderr, proc.stderr
    assert ".tmp-" not in proc.stderr and list(tmp_path.iterdir()) == []
    bundle = make_bundle([tiny], tmp_path / "b")
    proc = run_with_file_size_limit(["triton", "--bundle", bundle, "-o", "repo"], 100_000, cwd=tmp_path)
    assert proc.returncode == 2 and "-> repo/unet/1/model.onnx: File too large" in proc.stderr, proc.stderr
    assert ".tmp-" not in proc.stderr and sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_full_disk_on_the_second_output_keeps_neither(tmp_path, tiny):
    """The grid fits under the file-size limit, the raw samples do not: the command fails and
    writes neither file (the two temp files are renamed only once both are complete)."""
    limit = 1500  # the PNG of two 16x16 tiles: < 1 KiB
    args = ["sample", "--onnx", tiny, "-n", "2", "--steps", "2", "--no-progress", "-o", tmp_path / "x.png",
            "--save-npy", tmp_path / "x.npy"]
    proc = run_with_file_size_limit(args, limit, cwd=tmp_path)
    # numpy reports the short write itself ("1536 requested and 343 written"), without a file name
    assert proc.returncode == 2 and "x.npy: " in proc.stderr and "free space" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and list(tmp_path.iterdir()) == []
    proc = run_with_file_size_limit(args[:-2], limit, cwd=tmp_path)
    assert proc.returncode == 0 and (tmp_path / "x.png").stat().st_size < limit, proc.stderr  # the PNG alone fits


@pytest.mark.parametrize("args, message", [
    (["-o", "x.jpg"], "--output x.jpg must end in .png"),
    (["-o", "x.png", "--save-npy", "x.npz"], "--save-npy x.npz must end in .npy"),
])
def test_wrong_sample_suffix(tmp_path, tiny, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    expect_failure(_sample(tiny, *args), 2, message, watch=[tmp_path])


def test_wrong_verify_plot_suffix(tmp_path, tiny):
    """verify --plot writes PNG data: a .jpg name was accepted (and held PNG bytes), as sample's
    and inspect's were not."""
    expect_failure(["verify", "--model", "tiny", "--onnx", tiny, "--plot", tmp_path / "drift.jpg"], 2,
                   "--plot .*drift.jpg must end in .png \\(it is written as PNG\\)", watch=[tmp_path])


def test_wrong_onnx_suffix(tmp_path):
    expect_failure(["onnx", "--model", "tiny", "-o", tmp_path / "t.txt"], 2, "must end in .onnx", watch=[tmp_path])


def test_existing_verify_report(tmp_path, tiny):
    (tmp_path / "r.json").write_text("{}")
    expect_failure(["verify", "--model", "tiny", "--onnx", tiny, "--report", tmp_path / "r.json"], 2,
                   "r.json exists", watch=[tmp_path])


def test_missing_tensorrt_is_one_line(tmp_path, tiny):
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here")
    expect_failure(["trt", "--onnx", tiny, "-o", tmp_path / "t.plan"], 2, "tensorrt", watch=[tmp_path])


# --- nothing left -----------------------------------------------------------------------------
def test_temp_names_are_unique_per_call():
    names = {temp_sibling("x.png").name for _ in range(1000)}
    assert len(names) == 1000 and all(n.startswith(f".x.png.tmp-{os.getpid()}-") for n in names)


def test_concurrent_writes_to_one_path(tmp_path):
    """Threads writing the same destination never delete each other's temp files."""
    errors = []

    def write(k: int) -> None:
        try:
            with atomic_file(tmp_path / "x.bin", force=True) as tmp:
                tmp.write_bytes(bytes([k]) * 100_000)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=write, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    data = (tmp_path / "x.bin").read_bytes()
    assert len(data) == 100_000 and len(set(data)) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def test_two_exports_to_one_path_in_one_process(tmp_path, tiny):
    """The export's write step (temp folder, validation, rename) from several threads at once:
    each has its own temp folder (torch's tracing itself is not thread-safe, so the graph is
    traced once)."""
    import onnx

    from ddpm_export.export.onnx import _write_validated

    proto = onnx.load(str(tiny))
    errors = []

    def run() -> None:
        try:
            _write_validated(proto, tmp_path / "t.onnx", None, log=lambda m: None, force=True)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [p.name for p in tmp_path.iterdir()] == ["t.onnx"]
    assert (tmp_path / "t.onnx").read_bytes() == proto.SerializeToString()


def test_next_write_removes_leftovers_of_dead_processes(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(dead.stdout)
    stale_dir = tmp_path / f".x.png.tmp-{dead_pid}-{'a' * 32}"
    stale_dir.mkdir()
    (stale_dir / "x.png").write_bytes(b"half")
    stale_file = tmp_path / f".x.png.tmp-{dead_pid}-{'d' * 32}"
    stale_file.write_bytes(b"half")
    mine = tmp_path / f".x.png.tmp-{os.getpid()}-{'e' * 32}"  # a live writer (this process): kept
    mine.write_bytes(b"in progress")
    other = tmp_path / f".y.png.tmp-{dead_pid}-{'a' * 32}"  # another destination: not touched
    other.write_bytes(b"")
    users = [tmp_path / ".x.png.tmp-backup", tmp_path / f".x.png.old-{dead_pid}-keep"]  # not our names: kept
    for path in users:
        path.write_bytes(b"the user's")
    with atomic_file(tmp_path / "x.png") as tmp:
        tmp.write_bytes(b"png")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["x.png", mine.name, other.name,
                                                                 *(p.name for p in users)])
    assert remove_leftovers(tmp_path / "y.png") == [other]


def test_a_folder_moved_aside_by_a_killed_run_is_put_back(tmp_path, tiny):
    """A --force run killed between its two renames left the old bundle as .b.old-<pid>-<hex> and no
    b; the next run deleted it. Now it is put back, and a run without --force refuses to replace it."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    assert run(["bundle", "--onnx", tiny, "-o", tmp_path / "b"]).exit_code == 0
    before = sorted(p.name for p in (tmp_path / "b").iterdir())
    (tmp_path / "b").rename(tmp_path / f".b.old-{int(dead.stdout)}-{'f' * 32}")
    expect_failure(["bundle", "--onnx", tiny, "-o", tmp_path / "b"], 2, "b exists; pass --force")
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == before
    assert [p.name for p in tmp_path.iterdir()] == ["b"]


@pytest.mark.parametrize("after", ["old-moved-aside", "new-placed"])
def test_an_interrupt_between_the_two_renames_of_force_keeps_a_folder(tmp_path, monkeypatch, after):
    """Ctrl-C or SIGTERM (the CLI makes it an exception) landing just after a --force swap's first
    rename deleted the previous folder, and none took its place; just after the second, the put-back
    of the previous folder failed ('Directory not empty', naming the hidden .old- folder, exit 2)."""
    kind = OutputFolder("m.json")
    with atomic_dir(tmp_path / "out", kind) as tmp:
        (tmp / "m.json").write_text("old")
    rename = os.rename

    def interrupted(src, dst) -> None:
        rename(src, dst)
        renamed = Path(dst if after == "old-moved-aside" else src).name
        if renamed.startswith(".out.old-" if after == "old-moved-aside" else ".out.tmp-"):
            raise KeyboardInterrupt  # the signal lands as this rename returns

    monkeypatch.setattr(os, "rename", interrupted)
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(tmp_path / "out", kind, force=True) as tmp:
            (tmp / "m.json").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert (tmp_path / "out" / "m.json").read_text() == ("old" if after == "old-moved-aside" else "new")


@pytest.mark.parametrize("force", [False, True])
def test_a_folder_written_by_another_command_during_the_swap_is_named_as_such(tmp_path, monkeypatch, force):
    """Two `bundle -o b` at once: the one whose last rename found the other's folder in place failed
    with '.b.tmp-<pid>-<hex> -> b: Directory not empty -- check that the folder exists, is writable
    and has free space' (or, with --force, named its hidden .old- folder); it now names b and what
    happened, and keeps the other's folder whole."""
    from ddpm_export.errors import OutputExistsError

    kind, out = OutputFolder("m.json"), tmp_path / "out"
    if force:
        with atomic_dir(out, kind) as tmp:
            (tmp / "m.json").write_text("old")
    rename = os.rename

    def other_writes_first(src, dst) -> None:
        if Path(dst) == out:  # the other command's folder lands just before this one's
            out.mkdir()
            (out / "m.json").write_text("other")
        rename(src, dst)

    monkeypatch.setattr(os, "rename", other_writes_first)
    said = "was replaced or moved by another command" if force else "appeared while this command ran; pass --force"
    with pytest.raises(OutputExistsError, match=f"^{out} {said}"):
        with atomic_dir(out, kind, force=force) as tmp:
            (tmp / "m.json").write_text("mine")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (out / "m.json").read_text() == "other"


def _default_sigint() -> None:
    """In the child: SIGINT back to its default. A test run started in the background by a
    non-interactive shell (``pytest &``) ignores SIGINT, Python keeps an ignored SIGINT ignored,
    and the export would then run to the end instead of being interrupted."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _export_process(out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "ddpm_export", "onnx", "--model", "ddpm-cifar10", "-o", str(out)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)


def _wait_for_temp(folder: Path, proc: subprocess.Popen, timeout: float = 600) -> list[Path]:
    import time

    def filled_temp_folder(path: Path) -> bool:
        try:  # refuse_existing's probe file has a temp name too, and lives for microseconds
            return ".tmp-" in path.name and path.is_dir() and any(path.iterdir())
        except OSError:
            return False

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [p for p in folder.iterdir() if filled_temp_folder(p)]
        if found:
            return found
        assert proc.poll() is None, f"the export ended before it wrote its temp folder: {proc.stderr.read()}"
        time.sleep(0.02)
    raise AssertionError("no temp folder appeared")


@pytest.mark.slow
def test_sigkill_during_export_then_next_write_cleans_up(tmp_path):
    """A SIGKILLed export leaves its temp folder (nothing can run then) and no output; the next
    export to the same destination removes the leftover."""
    out = tmp_path / "c.onnx"
    proc = _export_process(out)
    try:
        leftovers = _wait_for_temp(tmp_path, proc)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert all(p.exists() for p in leftovers) and not out.exists()
    from ddpm_export.export.onnx import export_onnx

    export_onnx("tiny", out, validate=False, log=lambda m: None)
    assert [p.name for p in tmp_path.iterdir()] == ["c.onnx"]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_during_export_removes_its_temp_files(tmp_path, signum):
    out = tmp_path / "c.onnx"
    proc = _export_process(out)
    try:
        _wait_for_temp(tmp_path, proc)
        proc.send_signal(signum)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signum, proc.stderr.read()
    assert list(tmp_path.iterdir()) == []


def test_an_output_folder_holding_an_input_is_refused_even_with_force(tmp_path, tiny, monkeypatch):
    """bundle / triton / demo replace their output folder with --force: never one that holds what
    they read (the folder of the ONNX file, the bundle, the model), nor the folder the user is in."""
    import shutil

    from ddpm_export.presets import MODELS_DIR
    from ddpm_export.runtime import make_bundle

    work = tmp_path / "work"
    work.mkdir()
    shutil.copyfile(tiny, work / "tiny.onnx")
    (work / "notes.txt").write_text("precious")
    expect_failure(["bundle", "--onnx", work / "tiny.onnx", "-o", work, "--force"], 2,
                   "the input tiny.onnx: .* is inside the bundle folder", "would delete it", watch=[tmp_path])
    bundle = make_bundle([tiny], tmp_path / "b")
    expect_failure(["triton", "--bundle", bundle, "-o", bundle, "--force"], 2,
                   "the bundle .* is the repository folder", watch=[tmp_path])
    checkpoint = tmp_path / "ck"
    shutil.copytree(MODELS_DIR / "tiny", checkpoint)
    expect_failure(["demo", "--model", checkpoint, "--out", checkpoint, "--force"], 2,
                   "--model .*ck is --out .*ck: replacing the folder would delete the model", watch=[tmp_path])
    expect_failure(["demo", "--model", checkpoint, "--out", tmp_path, "--force"], 2, "is inside --out",
                   watch=[tmp_path])
    monkeypatch.chdir(work)
    expect_failure(["bundle", "--onnx", tiny, "-o", ".", "--force"], 2,
                   "output folder '.' names no folder of its own", watch=[tmp_path])
    expect_failure(["bundle", "--onnx", tiny, "-o", "../work", "--force"], 2,
                   "the current folder .* is the output folder .*work: it would be replaced while in use",
                   watch=[tmp_path])
    for command in (["bundle", "--onnx", tiny], ["triton", "--bundle", bundle], ["demo"]):
        expect_failure([*command, "-o", "", "--force"], 2, r"output folder '\.?' names no folder of its own",
                       watch=[tmp_path])  # was "... is inside the bundle folder : ..." (a blank name)


def test_no_command_writes_into_any_bundle_folder(tmp_path, tiny):
    # a bundle not given as an input was unprotected: `bundle -o b/sub` and `sample --onnx b/x.onnx -o b/y.png`
    # exited 0 and the bundle then failed its manifest check ("not listed")
    from ddpm_export.runtime import make_bundle, verify_bundle

    bundle = make_bundle([tiny], tmp_path / "b")
    inside = "is inside the bundle folder .*b: a file added to a bundle breaks its manifest"
    for args in (["bundle", "--onnx", bundle / "tiny.onnx", "-o", bundle / "sub"],
                 ["sample", "--onnx", bundle / "tiny.onnx", "-n", "1", "--steps", "1", "-o", bundle / "y.png"],
                 ["onnx", "--model", "tiny", "-o", bundle / "deeper" / "t.onnx"],
                 ["triton", "--bundle", make_bundle([tiny], tmp_path / "c"), "-o", bundle / "repo"],
                 # `..` after a folder that is not there: the path was walked as written, so it got in
                 ["sample", "--onnx", tiny, "-n", "1", "--steps", "1", "-o", tmp_path / "none" / ".." / "b" / "z.png"]):
        expect_failure(args, 2, inside, watch=[bundle])
    verify_bundle(bundle)
    assert not (tmp_path / "none").exists()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "manifest.json").write_text('{"format": "someone else\'s"}')  # not a bundle of ours
    assert run(["bundle", "--onnx", tiny, "-o", tmp_path / "other" / "b"]).exit_code == 0


def test_an_output_beside_a_bundle_given_from_inside_it_is_written(tmp_path, tiny, monkeypatch):
    """`-o ../x.png` typed inside a bundle folder names a file beside it; it was refused as inside."""
    from ddpm_export.files import enclosing_bundle
    from ddpm_export.runtime import make_bundle

    bundle = make_bundle([tiny], tmp_path / "b")
    monkeypatch.chdir(bundle)
    assert enclosing_bundle("../x.png") is None and enclosing_bundle("x/../y.png") == bundle


def test_an_output_inside_a_bundle_is_refused(tmp_path, tiny):
    """A file or folder added to a bundle fails its manifest check on every later load."""
    from ddpm_export.runtime import make_bundle

    bundle = make_bundle([tiny], tmp_path / "b")
    expect_failure(["sample", "--bundle", bundle, "-n", "2", "-o", bundle / "x.png"], 2,
                   "--output .*x.png is inside --bundle", "breaks its manifest", watch=[tmp_path])
    expect_failure(["sample", "--bundle", bundle, "-n", "2", "-o", tmp_path / "x.png", "--save-npy", bundle / "x.npy"],
                   2, "--save-npy .*x.npy is inside --bundle", watch=[tmp_path])
    expect_failure(["triton", "--bundle", bundle, "-o", bundle / "repo"], 2,
                   "the repository folder .*repo is inside the bundle", watch=[tmp_path])


def test_inspect_and_trt_refuse_an_output_over_an_input(tmp_path, tiny):
    import shutil

    from ddpm_export.presets import MODELS_DIR

    checkpoint = tmp_path / "ck"
    shutil.copytree(MODELS_DIR / "tiny", checkpoint)
    expect_failure(["inspect", "--model", checkpoint, "--json", checkpoint / "config.json", "--force"], 2,
                   "the model's config.json .* and --json .* name the same file", watch=[tmp_path])
    expect_failure(["inspect", "--model", "tiny", "--json", tmp_path / "same", "--plot", tmp_path / "same"], 2,
                   "--json .*same and --plot .*same name the same file", watch=[tmp_path])
    expect_failure(["trt", "--onnx", tiny, "-o", tiny, "--force"], 2, "--onnx .* and -o .* name the same file",
                   watch=[tiny.parent])
    engine = tiny.with_suffix("")  # <engine>.onnx, the graph an --fp16 build writes, is the input
    expect_failure(["trt", "--onnx", tiny, "-o", engine, "--fp16"], 2, "-o's graph .* name the same file",
                   watch=[tiny.parent])
    # an fp16 file is built as it is, no graph written: rebuilding from <engine>.onnx with --fp16 was
    # refused as "-o's graph ... name the same file" (without --fp16 it was not)
    from ddpm_export.export.onnx import export_onnx

    fp16 = export_onnx("tiny", tmp_path / "e.plan.onnx", precision="fp16", max_batch=2, log=lambda line: None).path
    result = run(["trt", "--onnx", fp16, "-o", tmp_path / "e.plan", "--fp16", "--force"])
    assert "name the same file" not in result.output, result.output
    assert result.exit_code == 0 or "cannot build" in result.output, result.output  # built, or no TensorRT here


def test_save_io_is_one_transaction_with_the_onnx_file(tmp_path):
    """--save-io naming the output is refused before any work; a failed export leaves neither the
    ONNX file nor the I/O files (they are temp files until the ONNX file is in place)."""
    expect_failure(["onnx", "--model", "tiny", "-o", tmp_path / "m.onnx", "--save-io", tmp_path / "m.onnx"], 2,
                   "the output .*m.onnx and the I/O folder \\(--save-io\\) .*m.onnx name the same file",
                   watch=[tmp_path])
    # validation fails on an untrained int8 tiny (exit 1): nothing of the three files is written
    # (the ONNX file's folder, new, is removed again)
    result = run(["onnx", "--model", "tiny", "-o", tmp_path / "new" / "q.onnx", "--precision", "int8", "--save-io",
                  tmp_path / "io"])
    assert result.exit_code == 1, result.output
    assert sorted(p.name for p in tmp_path.rglob("*")) in ([], ["io"]), list(tmp_path.rglob("*"))
    assert not (tmp_path / "new").exists() and not list(tmp_path.rglob("*.json"))


@pytest.mark.parametrize("command", [
    ["bench", "--model", "tiny", "--batch", "1", "--steps", "1", "--repeats", "1", "--json", ""],
    ["verify", "--model", "tiny", "--onnx", "TINY", "--steps", "2", "--ddpm-steps", "2", "--plot", ""],
    ["verify", "--model", "tiny", "--onnx", "TINY", "--steps", "2", "--ddpm-steps", "2", "--report", ""],
    ["inspect", "--model", "tiny", "--json", ""],
], ids=["bench-json", "verify-plot", "verify-report", "inspect-json"])
def test_an_output_path_without_a_name_is_refused_before_any_work(tmp_path, tiny, monkeypatch, command):
    """An empty output path used to run the whole command, then end in a traceback (with --force)
    or in "Error:  exists" (without). ("." and "x/.." are refused by click or by the suffix check.)"""
    monkeypatch.chdir(tmp_path)
    args = [str(tiny) if a == "TINY" else a for a in command]
    for force in ([], ["--force"]):
        out = expect_failure(args + force, 2, "names no file of its own; give a file name", watch=[tmp_path])
        assert len(out.splitlines()) == 1, out


@pytest.mark.parametrize("command", [
    ["inspect", "--model", "tiny", "--json", "-"],
    ["verify", "--model", "tiny", "--onnx", "TINY", "--steps", "2", "--ddpm-steps", "2", "--report", "-"],
    ["bench", "--model", "tiny", "--batch", "1", "--steps", "1", "--repeats", "1", "--json", "-"],
], ids=["inspect-json", "verify-report", "bench-json"])
def test_a_dash_is_not_taken_for_a_file_named_dash(tmp_path, tiny, monkeypatch, command):
    """`--json -` (stdout, by convention) wrote a file named '-' into the working folder."""
    monkeypatch.chdir(tmp_path)
    args = [str(tiny) if a == "TINY" else a for a in command]
    expect_failure(args, 2, "output path '-': writing to stdout is not supported", watch=[tmp_path])
    if command[0] == "inspect":  # what the message offers: ./- writes a file of that name
        result = run([*args[:-1], "./-"])
        assert result.exit_code == 0 and (tmp_path / "-").is_file(), result.output


@pytest.mark.parametrize("command", [["bundle", "--onnx", "TINY", "-o"], ["triton", "--bundle", "BUNDLE", "-o"],
                                     ["demo", "--model", "tiny", "--out"],
                                     ["onnx", "--model", "tiny", "-o", "m.onnx", "--save-io"]],
                         ids=["bundle", "repository", "demo", "save-io"])
def test_a_dash_is_not_taken_for_a_folder_named_dash(tmp_path, tiny, monkeypatch, command):
    """`bundle -o -`, `triton -o -`, `demo --out -` and `onnx --save-io -` made a folder named '-',
    where a file output refuses '-'; ./- is a folder of that name."""
    bundle = tmp_path / "bundle"
    assert run(["bundle", "--onnx", tiny, "-o", bundle]).exit_code == 0
    monkeypatch.chdir(tmp_path)
    args = [str(tiny) if a == "TINY" else str(bundle) if a == "BUNDLE" else a for a in command]
    for force in ([], ["--force"]):
        what = "--save-io" if command[-1] == "--save-io" else "output folder"
        out = expect_failure([*args, "-", *force], 2, f"{what} '-': writing to stdout is not supported; give a "
                             r"folder name \(or ./- for a folder of that name\)", watch=[tmp_path])
        assert len(out.splitlines()) == 1, out
    if command[0] == "bundle":
        result = run([*args, "./-"])
        assert result.exit_code == 0 and (tmp_path / "-" / "manifest.json").is_file(), result.output


def test_a_failed_write_removes_the_folders_it_created(tmp_path):
    """atomic_file and atomic_dir create missing parent folders; when the write fails, the ones
    still empty go again, deepest first, and a folder that something else wrote into stays."""
    for write in (atomic_file, functools.partial(atomic_dir, kind=OutputFolder("marker"))):
        with pytest.raises(RuntimeError, match="failed"):
            with write(tmp_path / "a" / "b" / "out"):
                assert (tmp_path / "a" / "b").is_dir()
                raise RuntimeError("failed")
        assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError, match="failed"):
        with atomic_file(tmp_path / "a" / "b" / "out"):
            (tmp_path / "a" / "other.txt").write_text("not ours")
            raise RuntimeError("failed")
    assert [p.relative_to(tmp_path).as_posix() for p in sorted(tmp_path.rglob("*"))] == ["a", "a/other.txt"]
    with atomic_file(tmp_path / "c" / "d" / "out") as tmp:
        tmp.write_text("kept")
    assert (tmp_path / "c" / "d" / "out").read_text() == "kept"


def test_atomic_files_renames_all_or_none(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    with pytest.raises(OSError, match="disk full"):
        with atomic_files(a, None, b) as (tmp_a, nothing, tmp_b):
            assert nothing is None
            tmp_a.write_text("a")
            raise OSError("disk full")  # while writing b
    assert list(tmp_path.iterdir()) == []
    with atomic_files(a, b) as (tmp_a, tmp_b):
        tmp_a.write_text("a")
        tmp_b.write_text("b")
        assert not a.exists() and not b.exists()  # renamed only when the block ends
    assert a.read_text() == "a" and b.read_text() == "b"


def test_atomic_files_undoes_the_first_rename_when_the_second_fails(tmp_path):
    """The renames themselves are all or none: the second output refused at its rename (it
    appeared meanwhile) or failing there (a folder took its name) leaves the first as it was."""
    from ddpm_export.errors import OutputExistsError

    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    with pytest.raises(OutputExistsError, match="b.txt appeared while this command ran"):
        with atomic_files(a, b) as (tmp_a, tmp_b):
            tmp_a.write_text("new a")
            tmp_b.write_text("new b")
            b.write_text("the user's b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.txt"] and b.read_text() == "the user's b"
    a.write_text("old a")
    b.unlink()
    with pytest.raises(OSError):  # --force: a was replaced, then b's rename failed: a's old content is back
        with atomic_files(a, b, force=True) as (tmp_a, tmp_b):
            tmp_a.write_text("new a")
            tmp_b.write_text("new b")
            b.mkdir()
            (b / "notes").write_text("the user's")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["a.txt", "b.txt", "b.txt/notes"]
    assert a.read_text() == "old a"
    with atomic_files(a, tmp_path / "c.txt", force=True) as (tmp_a, tmp_c):
        tmp_a.write_text("new a")
        tmp_c.write_text("c")
    assert a.read_text() == "new a" and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_names_as_long_as_the_file_system_takes_are_written(tmp_path):
    """A temporary name adds 46 bytes to its output's name; a name too long for that has its
    digest in the temporary names instead, and a dead writer's leftovers are still found."""
    name = "y" * 250
    with atomic_file(tmp_path / f"{name}.txt") as tmp:
        assert len(tmp.name) <= 255
        tmp.write_text("file")
    kind = OutputFolder("m")
    with atomic_dir(tmp_path / name, kind) as tmp:
        (tmp / "m").write_text("folder")
    with atomic_dir(tmp_path / name, kind, force=True) as tmp:
        (tmp / "m").write_text("again")
    assert (tmp_path / f"{name}.txt").read_text() == "file" and (tmp_path / name / "m").read_text() == "again"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    leftover = tmp_path / temp_sibling(tmp_path / name).name.replace(f"-{os.getpid()}-", f"-{int(dead.stdout)}-")
    assert leftover.name.startswith(".~") and len(leftover.name) <= 255  # the digest, not the name
    leftover.mkdir()
    assert remove_leftovers(tmp_path / name) == [leftover] and not leftover.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, f"{name}.txt"])


def test_an_output_that_appears_during_the_write_is_not_replaced(tmp_path):
    """The existence check runs before the work; a file or folder that appears meanwhile was
    overwritten (a folder deleted) at the final rename, without --force."""
    from ddpm_export.errors import BadInputError, OutputExistsError

    with pytest.raises(OutputExistsError, match="x.txt appeared while this command ran; pass --force"):
        with atomic_file(tmp_path / "x.txt") as tmp:
            tmp.write_text("ours")
            (tmp_path / "x.txt").write_text("the user's")
    assert (tmp_path / "x.txt").read_text() == "the user's"
    kind = OutputFolder("m")
    with pytest.raises(OutputExistsError, match="d appeared while this command ran; pass --force to replace it"):
        with atomic_dir(tmp_path / "d", kind) as tmp:
            (tmp / "m").write_text("ours")
            (tmp_path / "d").mkdir()
            (tmp_path / "d" / "notes.txt").write_text("the user's")
    with pytest.raises(BadInputError, match="holds no m of ours"):  # with force: checked again before the swap
        with atomic_dir(tmp_path / "e", kind, force=True) as tmp:
            (tmp / "m").write_text("ours")
            (tmp_path / "e").mkdir()
            (tmp_path / "e" / "notes.txt").write_text("the user's")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "d", "d/notes.txt", "e", "e/notes.txt", "x.txt"]


def test_links_and_special_files_as_outputs(tmp_path):
    """A dangling link or a link loop exists (it was replaced without --force); a FIFO is refused
    even with --force (as root, --force made /dev/null a regular file)."""
    (tmp_path / "dangling.png").symlink_to(tmp_path / "nowhere" / "x.png")
    (tmp_path / "l1.png").symlink_to(tmp_path / "l2.png")
    (tmp_path / "l2.png").symlink_to(tmp_path / "l1.png")
    for name in ("dangling.png", "l1.png"):
        with pytest.raises(FileExistsError, match=f"{name} exists; pass --force"):
            with atomic_file(tmp_path / name) as tmp:
                tmp.write_text("x")
        assert (tmp_path / name).is_symlink()
    os.mkfifo(tmp_path / "fifo.json")
    with pytest.raises(ValueError, match="fifo.json is a FIFO, not a file: outputs are written as new files"):
        with atomic_file(tmp_path / "fifo.json", force=True) as tmp:
            tmp.write_text("x")
    assert (tmp_path / "fifo.json").is_fifo()


def test_a_folder_where_a_file_goes_is_refused_before_the_work(tmp_path, tiny):
    """--save-io's outputs.json as a folder: the export replaced the .onnx, then failed on it."""
    (tmp_path / "io" / "outputs.json").mkdir(parents=True)
    (tmp_path / "m.onnx").write_text("old")
    expect_failure(["onnx", "--model", "tiny", "-o", tmp_path / "m.onnx", "--save-io", tmp_path / "io", "--force"], 2,
                   "outputs.json is a folder; give the path of a file to write")
    assert (tmp_path / "m.onnx").read_text() == "old"


def test_inspect_writes_its_plot_and_json_together(tmp_path):
    """Both or neither (atomic_files): the plot was renamed into place before the JSON failed on a
    full disk. A JSON over the file-size limit stands in for the full disk."""
    result = run_with_file_size_limit(["inspect", "--model", "tiny", "--erf-samples", "1", "--json",
                                       tmp_path / "j.json", "--plot", tmp_path / "p.png"], 4096)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert list(tmp_path.iterdir()) == []
    assert run(["inspect", "--model", "tiny", "--erf-samples", "1", "--json", tmp_path / "i.json",
                "--plot", tmp_path / "i.png"]).exit_code == 0
    assert (tmp_path / "i.json").is_file() and (tmp_path / "i.png").is_file()


def test_trt_timing_cache_may_not_be_an_input(tmp_path, tiny):
    """--timing-cache is written back (with the new timings): over --onnx it would destroy it."""
    expect_failure(["trt", "--onnx", tiny, "-o", tmp_path / "e.plan", "--timing-cache", tiny], 2,
                   "name the same file", watch=[tmp_path])


def test_a_name_too_long_for_the_file_system_is_refused_before_any_work(tmp_path):
    """The write probe uses a shorter name of its own, so a 305-byte `-o` passed the checks, failed
    after the export and named the scratch folder; `--save-io ''` wrote into the current folder."""
    long = tmp_path / ("a" * 300 + ".onnx")
    out = expect_failure(["onnx", "--model", "tiny", "-o", long], 2,
                         r"cannot be written, its name is 305 bytes and the file system allows 255", watch=[tmp_path])
    assert "exporting" not in out
    expect_failure(["onnx", "--model", "tiny", "-o", tmp_path / "t.onnx", "--save-io", ""], 2,
                   r"--save-io '' names no folder; give one \(\. for the current folder\)", watch=[tmp_path])


def test_a_mount_point_as_output_folder_is_refused_before_the_work(tmp_path, tiny):
    """A volume mounted at the output folder (`docker run -v repo:/models ... triton -o /models --force`)
    cannot be renamed: the bundle was made, then 'vol -> .vol.old-<pid>-<hex>: Device or resource
    busy -- check that the folder exists' (exit 2). Now refused before the work, naming the mount point."""
    import subprocess

    volume = tmp_path / "vol"
    volume.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(volume)], capture_output=True,
                             check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode(errors='replace').strip()}")
    try:
        for force in ([], ["--force"]):
            expect_failure(["bundle", "--onnx", tiny, "-o", volume, *force], 2,
                           "vol is a mount point: .* give a new folder inside it", watch=[tmp_path])
        assert run(["bundle", "--onnx", tiny, "-o", volume / "b"]).exit_code == 0
    finally:
        subprocess.run(["umount", str(volume)], check=False)


@pytest.mark.parametrize("force", [False, True])
def test_a_file_or_link_given_as_output_folder_is_named_so_with_or_without_force(tmp_path, force):
    """Without --force a file or a link was refused as 'exists; pass --force', and --force then
    refused it as a file or a link: the first message sent the user to a flag that cannot help."""
    from ddpm_export.errors import BadInputError, NotAFolderError

    (tmp_path / "f").write_text("the user's")
    (tmp_path / "dir").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "dir")
    for name, error, message in [("f", NotAFolderError, "f is a file; give a folder"),
                                 ("link", BadInputError, "link is a symbolic link; give a folder")]:
        with pytest.raises(error, match=message):
            with atomic_dir(tmp_path / name, OutputFolder("m"), force=force):
                pass
    assert (tmp_path / "f").read_text() == "the user's" and (tmp_path / "link").is_symlink()
