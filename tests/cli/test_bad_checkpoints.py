"""Bad-input corpus, checkpoints: truncated or foreign weight files, missing/extra keys, wrong
shapes or dtypes, NaN weights, pickles -- each refused by ``ddpm-export onnx --model <folder>``
with one line naming the file (exit 2), nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import load_file, save_file  # noqa: E402

from ddpm_export.nn.checkpoint import save_checkpoint  # noqa: E402
from ddpm_export.nn.weights import build_model  # noqa: E402
from ddpm_export.config import UNetConfig  # noqa: E402
from ddpm_export.presets import MODELS_DIR  # noqa: E402

from bad_inputs import expect_failure  # noqa: E402


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_checkpoint(build_model(UNetConfig.load(MODELS_DIR / "tiny" / "config.json")), folder)
    return folder


def _in_state(edit):  # type: ignore[no-untyped-def]
    """A file edit that applies ``edit`` to the tensors of a safetensors file and saves them back."""
    def apply(path: Path) -> None:
        state = load_file(str(path))
        edit(state)
        save_file(state, str(path))
    return apply


def _nan(state):
    key = next(k for k in state if k.endswith("weight"))
    state[key] = state[key].clone()
    state[key].view(-1)[0] = float("nan")


def _inf(state):
    key = sorted(state)[-1]
    state[key] = state[key].clone()
    state[key].view(-1)[-1] = float("inf")


def _fp64_overflow(state):  # finite in float64, inf once the float32 model holds it (it failed at export)
    key = next(k for k in state if k.endswith("weight"))
    state[key] = state[key].to(torch.float64)
    state[key].view(-1)[0] = 1e300


def _shape(state):
    key = next(k for k in state if k.endswith("weight"))
    state[key] = torch.zeros(3, 3)


def _dtype(state):
    key = next(k for k in state if k.endswith("weight"))
    state[key] = state[key].to(torch.int32)


def _missing(state):
    del state[sorted(state)[0]]


def _extra(state):
    state["bonus.weight"] = torch.zeros(2)


STATE_EDITS = {
    "nan-weight": (_in_state(_nan), "NaN or infinite values"),
    "inf-weight": (_in_state(_inf), "NaN or infinite values"),
    "fp64-overflows-fp32": (_in_state(_fp64_overflow), "NaN or infinite values"),
    "wrong-shape": (_in_state(_shape), "has shape \\(3, 3\\), the config expects"),
    "wrong-dtype": (_in_state(_dtype), "has dtype torch.int32, the model expects torch.float32"),
    "missing-key": (_in_state(_missing), "missing key\\(s\\)"),
    "extra-key": (_in_state(_extra), "unexpected key\\(s\\) 'bonus.weight'"),
}


def _truncate_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _truncate_header(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:4])


def _pickle(path: Path) -> None:
    torch.save({"w": torch.zeros(2)}, str(path))


def _random(path: Path) -> None:
    path.write_bytes(bytes(range(256)) * 10)


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _bad_header_json(path: Path) -> None:
    path.write_bytes((10).to_bytes(8, "little") + b"{not json}" + b"\0" * 8)


def _header_key_twice(path: Path) -> None:
    """The header's first tensor entry written twice (json kept the last one silently)."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    name = next(k for k in header if k != "__metadata__")
    text = json.dumps(header)[:-1] + f", {json.dumps(name)}: {json.dumps(header[name])}}}"
    text += " " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text.encode() + data[8 + n:])


FILE_EDITS = {
    "truncated-half": (_truncate_half, "truncated"),
    "truncated-header": (_truncate_header, "not a safetensors file or truncated"),
    "pickle": (_pickle, "not a safetensors file or truncated|header is not JSON"),
    "random-bytes": (_random, "not a safetensors file or truncated"),
    "empty": (_empty, "not a safetensors file or truncated"),
    "header-not-json": (_bad_header_json, "header is not JSON"),
    "header-key-twice": (_header_key_twice, "header is not JSON \\(key '.*' is given twice\\)"),
}


@pytest.mark.parametrize("name", [*STATE_EDITS, *FILE_EDITS])
def test_bad_weights(tmp_path, good, name):
    """Bad tensors (state edits) and bad files (file edits) alike: exit 2 naming the weights file."""
    edit, message = {**STATE_EDITS, **FILE_EDITS}[name]
    folder = tmp_path / "ckpt"
    shutil.copytree(good, folder)
    edit(folder / "model.safetensors")
    expect_failure(["onnx", "--model", folder, "-o", tmp_path / "out.onnx", "--no-validate"], 2,
                   "model.safetensors", message, watch=[tmp_path])


def test_pickled_diffusers_folder_is_refused(tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text('{"_class_name": "UNet2DModel", "sample_size": 16}')
    torch.save({"w": torch.zeros(2)}, str(folder / "diffusion_pytorch_model.bin"))
    expect_failure(["onnx", "--model", folder, "-o", tmp_path / "out.onnx", "--no-validate"], 2,
                   "diffusion_pytorch_model.bin", "safetensors", watch=[tmp_path])


def test_model_given_as_a_file(tmp_path, good):
    expect_failure(["onnx", "--model", good / "model.safetensors", "-o", tmp_path / "out.onnx"], 2,
                   "is a file; pass the checkpoint folder", watch=[tmp_path, good])


def test_a_bundle_folder_as_model_says_what_it_is_before_any_work(tmp_path, tiny_onnx):
    """`bench --model <bundle>` printed "exporting ..." and then "has no config.json"."""
    from ddpm_export.runtime import make_bundle

    bundle = make_bundle([tiny_onnx], tmp_path / "b")
    for command in (["bench", "--model", bundle, "--steps", "1", "--repeats", "1"],
                    ["onnx", "--model", bundle, "-o", tmp_path / "x.onnx"]):
        out = expect_failure(command, 2, "is a bundle folder \\(ONNX files, no PyTorch weights\\); --model takes a "
                             "preset or a checkpoint folder", watch=[tmp_path])
        assert "exporting" not in out


@pytest.mark.parametrize("diffusers_folder", [False, True], ids=["ours", "diffusers"])
def test_weights_that_do_not_fit_a_huge_config_are_refused_before_it_is_built(tmp_path, good, diffusers_folder):
    """config.json edited to 4096 base channels beside the tiny weights: the model (tens of GB) was
    built before the weights were compared with it, so the mismatch ran out of memory (or took
    GBs and seconds) where the file's shapes tell it at once."""
    import json

    from bad_inputs import run_with_memory_limit

    folder = tmp_path / "ckpt"
    shutil.copytree(good, folder)
    config = json.loads((folder / "config.json").read_text())
    if diffusers_folder:  # the same tiny shape: 16 then 32 channels, groups of 8, attention at 8x8
        (folder / "model.safetensors").rename(folder / "diffusion_pytorch_model.safetensors")
        config = {"_class_name": "UNet2DModel", "sample_size": 16, "block_out_channels": [4096, 8192],
                  "layers_per_block": 1, "norm_num_groups": 8, "attention_head_dim": None,
                  "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D",
                                                                                              "UpBlock2D"]}
    else:
        config["base_channels"] = 4096
    (folder / "config.json").write_text(json.dumps(config))
    proc = run_with_memory_limit(["onnx", "--model", folder, "-o", tmp_path / "out.onnx", "--no-validate"],
                                 3 * 2**30)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "out of memory" not in proc.stderr, proc.stderr[-2000:]
    assert "safetensors" in proc.stderr and ("expects" in proc.stderr or "key(s)" in proc.stderr), proc.stderr
    assert not (tmp_path / "out.onnx").exists()
