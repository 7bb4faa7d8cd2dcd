"""ddpm_export.diffusion and ddpm_export.runtime import and sample with torch unimportable."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from blockers import BLOCK_TORCH

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = BLOCK_TORCH + textwrap.dedent("""
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("the import blocker did not block torch")

    import numpy as np
    import ddpm_export.diffusion, ddpm_export.runtime
    # every submodule, so nothing imports torch lazily behind a package __init__
    for package in (ddpm_export.diffusion, ddpm_export.runtime):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            importlib.import_module(info.name)

    from ddpm_export.diffusion import DiffusionConfig, make_scheduler, sample
    for sampler in ("ddim", "ddpm"):
        scheduler = make_scheduler(DiffusionConfig(num_inference_steps=3, eta=0.5), sampler)
        x = sample(lambda x, t, c: 0.1 * x, scheduler, (1, 1, 2, 2), seed=0)
        assert x.shape == (1, 1, 2, 2)
    leaked = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
    assert not leaked, leaked
    print("torch-free ok")
""")


def test_diffusion_and_runtime_import_without_torch() -> None:
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "torch-free ok" in result.stdout


def test_a_wrong_model_path_is_named_before_the_missing_extra(tmp_path: Path) -> None:
    """Without torch, `sample --model a.png` said the export extra was missing: a user who mistyped
    a path was sent to install PyTorch before learning that the path was wrong."""
    (tmp_path / "a.png").write_bytes(b"not a model")
    (tmp_path / "userdir").mkdir()
    cli = BLOCK_TORCH + "import sys\nfrom ddpm_export.cli import main\nmain()\n"
    for model, message in (("a.png", "a.png is a file; pass the checkpoint folder that holds config.json"),
                           ("userdir", "userdir has no config.json")):
        result = subprocess.run([sys.executable, "-c", cli, "sample", "--model", str(tmp_path / model), "-n", "1",
                                 "-o", str(tmp_path / "x.png")], capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and message in result.stderr, result.stdout + result.stderr
        assert "export extra" not in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "userdir"]


@pytest.mark.parametrize("command", [["onnx", "-o", "{tmp}/m.onnx"], ["verify", "--onnx", "{onnx}"], ["inspect"],
                                     ["bench", "--steps", "1"], ["trt", "-o", "{tmp}/m.plan"], ["demo", "-o", "{tmp}/d"]])
def test_a_mistyped_preset_is_named_before_the_missing_extra(tmp_path: Path, command: list[str]) -> None:
    """Without the export extra, `onnx --model digit` (and verify, inspect, bench, trt) sent the user
    to install PyTorch; `sample` and `demo` named the typo. Every --model command names it now."""
    from ddpm_export.presets import shipped_onnx

    args = [a.format(tmp=tmp_path, onnx=shipped_onnx("digits")) for a in command]
    cli = BLOCK_TORCH + "import sys\nfrom ddpm_export.cli import main\nmain()\n"
    result = subprocess.run([sys.executable, "-c", cli, *args, "--model", "digit"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("Error: unknown model 'digit': not a folder on disk and not a preset; presets: "
                                    "ddpm-cifar10, digits, kitchen-sink, tiny"), result.stderr
    assert list(tmp_path.iterdir()) == []


def test_trt_without_the_export_extra_names_every_extra_it_needs(tmp_path: Path) -> None:
    """`trt --onnx` with neither onnx nor tensorrt named the export extra alone; installing it only
    led to a second refusal, for the gpu extra."""
    block_onnx = BLOCK_TORCH.replace('name == "torch" or name.startswith("torch.")',
                                     'name.split(".")[0] in ("torch", "onnx")').replace(
        'raise ImportError(f"torch is blocked in this test (importing {name})")',
        'raise ModuleNotFoundError(f"No module named {name!r}", name=name)')  # as if not installed
    cli = block_onnx + "import sys\nfrom ddpm_export.cli import main\nmain()\n"
    (tmp_path / "m.onnx").write_bytes(b"an ONNX file")  # not read: the extras are checked first
    result = subprocess.run([sys.executable, "-c", cli, "trt", "--onnx", str(tmp_path / "m.onnx"), "-o",
                             str(tmp_path / "m.plan")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stdout + result.stderr
    import importlib.util

    extras = "export" if importlib.util.find_spec("tensorrt") else "export,gpu"  # a GPU host may have TensorRT
    assert f"pip install 'ddpm-export[{extras}]'" in result.stderr, result.stderr


def test_verify_plot_without_the_export_and_plot_extras_names_both(tmp_path: Path) -> None:
    """`verify --plot` with neither torch nor matplotlib named the plot extra alone; installing it
    only led to a second refusal, for the export extra."""
    from ddpm_export.presets import shipped_onnx

    block = BLOCK_TORCH.replace('name == "torch" or name.startswith("torch.")',
                                'name.split(".")[0] in ("torch", "matplotlib")').replace(
        'raise ImportError(f"torch is blocked in this test (importing {name})")',
        'raise ModuleNotFoundError(f"No module named {name!r}", name=name)')  # as if not installed
    cli = block + "import sys\nfrom ddpm_export.cli import main\nmain()\n"
    result = subprocess.run([sys.executable, "-c", cli, "verify", "--model", "digits", "--onnx",
                             str(shipped_onnx("digits")), "--plot", str(tmp_path / "d.png")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.splitlines() == [
        "Error: verify needs the export extra (no module 'torch') and, for --plot, the plot extra (no module "
        "'matplotlib'): pip install 'ddpm-export[export,plot]' (first the CPU build of torch: pip install "
        "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu)"]
    assert list(tmp_path.iterdir()) == []


def test_bench_without_the_export_extra_says_so_before_any_note_on_openvino() -> None:
    """`bench --model digits` with neither torch nor OpenVINO printed 'note: OpenVINO is not installed
    ... pip install ddpm-export[openvino]' first, then refused for the export extra: two unrelated lines,
    the one that matters last. Both absent as when not installed (None in sys.modules: find_spec says
    None, import raises ModuleNotFoundError)."""
    cli = ("import sys\nsys.modules['torch'] = sys.modules['openvino'] = None\n"
           "from ddpm_export.cli import main\nmain()\n")
    result = subprocess.run([sys.executable, "-c", cli, "bench", "--model", "digits"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == "" and result.stderr.splitlines() == [
        "Error: this command needs the export extra (no module 'torch'): pip install 'ddpm-export[export]' (first "
        "the CPU build of torch, or pip takes the multi-GB CUDA one on Linux: pip install torch==2.13.0 "
        "--index-url https://download.pytorch.org/whl/cpu)"]


def test_the_library_names_the_export_extra_when_safetensors_is_missing() -> None:
    """ddpm_export.load_model and DigitClassifier.load without safetensors raised a bare
    ModuleNotFoundError, where the CLI named the extra to install; now the project's
    MissingDependencyError (an ImportError still) with the CLI's line."""
    block = BLOCK_TORCH.replace('name == "torch" or name.startswith("torch.")', 'name.split(".")[0] == "safetensors"'
                                ).replace('raise ImportError(f"torch is blocked in this test (importing {name})")',
                                          'raise ModuleNotFoundError(f"No module named {name!r}", name=name)')
    code = block + textwrap.dedent("""
        import ddpm_export
        from ddpm_export.errors import MissingDependencyError
        from ddpm_export.quality import DigitClassifier
        for load in (lambda: ddpm_export.load_model("digits"), DigitClassifier.load):
            try:
                load()
            except MissingDependencyError as e:
                print(e)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        f"{what} needs the export extra (no module 'safetensors'): pip install 'ddpm-export[export]'"
        for what in ("loading a model", "the digit classifier")]


def test_an_openvino_that_fails_to_import_is_named_so_with_its_error(tmp_path: Path) -> None:
    """An installed openvino whose libopenvino.so is missing was reported as not installed ('pip
    install ddpm-export[openvino]', which pip answers 'already satisfied'), its ImportError dropped
    even under --debug. A real broken install: openvino's __init__.py raises, first on the path."""
    import os

    from ddpm_export.presets import shipped_onnx

    site = tmp_path / "site"
    (site / "openvino").mkdir(parents=True)
    (site / "openvino" / "__init__.py").write_text(
        "raise ImportError('libopenvino.so.2641: cannot open shared object file: No such file or directory')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    args = ["sample", "--onnx", str(shipped_onnx("digits")), "-n", "1", "--backend", "openvino",
            "-o", str(tmp_path / "out" / "x.png")]
    cli = BLOCK_TORCH + "import sys\nfrom ddpm_export.cli import main\nmain()\n"
    result = subprocess.run([sys.executable, "-c", cli, *args], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.splitlines() == [
        "Error: the openvino backend: the 'openvino' package is installed but fails to import (ImportError: "
        "libopenvino.so.2641: cannot open shared object file: No such file or directory); reinstall it: pip "
        "uninstall -y openvino && pip install 'ddpm-export[openvino]'"]
    # not installed at all: the extra to install, as before
    block = BLOCK_TORCH.replace('name == "torch" or name.startswith("torch.")', 'name == "openvino"').replace(
        'raise ImportError(f"torch is blocked in this test (importing {name})")',
        'raise ModuleNotFoundError(f"No module named {name!r}", name=name)')  # as if not installed
    cli = block + "import sys\nfrom ddpm_export.cli import main\nmain()\n"
    result = subprocess.run([sys.executable, "-c", cli, *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.splitlines() == [
        "Error: the openvino backend needs OpenVINO: pip install 'ddpm-export[openvino]'"]
    assert list(tmp_path.iterdir()) == [site]
