"""``ddpm-export sample`` on real exports: the PNG grid and the .npy, overwrite refusal, --bundle,
class-conditional sampling with guidance, argument errors; and the grid layout itself."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

pytest.importorskip("torch", reason="the exports need torch")
pytest.importorskip("onnx")

from ddpm_export.cli import main  # noqa: E402
from ddpm_export.images import grid_shape, make_grid, to_uint8  # noqa: E402
from ddpm_export.runtime import Pipeline, make_bundle  # noqa: E402

from runtime_exports import exported  # noqa: E402


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {preset: exported(preset, tmp_path_factory) for preset in ("tiny", "kitchen-sink")}


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["sample", "--no-progress", *args])
    return result.exit_code, result.output


def test_writes_a_png_grid_and_the_samples(onnx_files: dict[str, Path], tmp_path: Path) -> None:
    png, npy = tmp_path / "grid.png", tmp_path / "out.npy"
    code, out = _run("--onnx", str(onnx_files["tiny"]), "-n", "5", "--steps", "3", "--seed", "2",
                     "-o", str(png), "--save-npy", str(npy))
    assert code == 0, out
    with Image.open(png) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        assert im.size == (3 * (16 + 2) + 2, 2 * (16 + 2) + 2)  # 5 images: 3 columns, 2 rows, 2 px padding
        pixels = np.asarray(im)
    samples = np.load(npy)
    assert samples.shape == (5, 3, 16, 16) and samples.dtype == np.float32
    want = Pipeline.from_onnx(onnx_files["tiny"]).sample(5, steps=3, seed=2, progress=False)
    np.testing.assert_array_equal(samples, want)
    np.testing.assert_array_equal(pixels[2:18, 2 + 18:18 + 18], to_uint8(samples)[1])  # second tile
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png", "out.npy"]  # no temp files left


def test_refuses_to_overwrite_without_force(onnx_files: dict[str, Path], tmp_path: Path) -> None:
    png, npy = tmp_path / "grid.png", tmp_path / "out.npy"
    npy.write_bytes(b"keep me")
    code, out = _run("--onnx", str(onnx_files["tiny"]), "-n", "2", "--steps", "2", "-o", str(png),
                     "--save-npy", str(npy))
    assert code != 0 and "out.npy exists; pass --force" in out
    assert not png.exists() and npy.read_bytes() == b"keep me"  # refused before sampling
    code, out = _run("--onnx", str(onnx_files["tiny"]), "-n", "2", "--steps", "2", "-o", str(png),
                     "--save-npy", str(npy), "--force")
    assert code == 0, out
    assert np.load(npy).shape == (2, 3, 16, 16)


def test_class_and_guidance_on_a_class_conditional_model(onnx_files: dict[str, Path], tmp_path: Path) -> None:
    npy = tmp_path / "threes.npy"
    code, out = _run("--onnx", str(onnx_files["kitchen-sink"]), "-n", "5", "--steps", "2", "--class", "3",
                     "--guidance", "3", "--scale", "2", "-o", str(tmp_path / "g.png"), "--save-npy", str(npy))
    assert code == 0, out
    want = Pipeline.from_onnx(onnx_files["kitchen-sink"]).sample(5, steps=2, classes=3, guidance_scale=3.0,
                                                                 progress=False)
    np.testing.assert_array_equal(np.load(npy), want)
    with Image.open(tmp_path / "g.png") as im:
        assert im.size == (3 * (32 + 2) + 2, 2 * (32 + 2) + 2)


def test_repeated_class_values_are_taken_in_turn(onnx_files: dict[str, Path], tmp_path: Path) -> None:
    npy = tmp_path / "c.npy"
    code, out = _run("--onnx", str(onnx_files["kitchen-sink"]), "-n", "5", "--steps", "2", "--class", "3",
                     "--class", "7", "--save-npy", str(npy))
    assert code == 0, out
    want = Pipeline.from_onnx(onnx_files["kitchen-sink"]).sample(5, steps=2, classes=[3, 7, 3, 7, 3], progress=False)
    np.testing.assert_array_equal(np.load(npy), want)
    # more values than images: the surplus was dropped silently (-n 2 --class 1 --class 2 --class 3 gave 1, 2)
    code, out = _run("--onnx", str(onnx_files["kitchen-sink"]), "-n", "2", "--class", "1", "--class", "2",
                     "--class", "3", "--save-npy", str(npy), "--force")
    assert code == 2, out
    assert "Error: --class given 3 times for -n 2: the values after the first 2 would be unused" in out
    np.testing.assert_array_equal(np.load(npy), want)  # untouched


def test_bad_arguments_fail_with_a_message(onnx_files: dict[str, Path], tmp_path: Path) -> None:
    png = str(tmp_path / "g.png")
    code, out = _run("--onnx", str(onnx_files["kitchen-sink"]), "--class", "10", "-o", png)
    assert code == 2 and "Error: --class: id 10 is outside [0, 10)" in out  # the flag, not the API's `classes`
    code, out = _run("--onnx", str(onnx_files["kitchen-sink"]), "--class", str(2**63), "-o", png)
    assert code == 2 and f"Error: --class: id {2**63} is outside [0, 10)" in out  # was an OverflowError traceback
    assert not (tmp_path / "g.png").exists()
    code, out = _run("--onnx", str(onnx_files["tiny"]), "--guidance", "2", "-o", png)
    assert code == 2 and "Error: --guidance 2.0 needs a class-conditional model" in out
    assert "pass --guidance 1.0" in out and "guidance_scale" not in out
    code, out = _run("--onnx", str(onnx_files["kitchen-sink"]), "--guidance", "1e39", "-o", png)
    assert code == 2 and "Error: --guidance 1e+39 is out of range: |scale| <= 1000" in out  # was exit 1, "not finite"
    code, out = _run("--onnx", str(onnx_files["tiny"]), "--sampler", "ddpm", "--eta", "0.5", "-o", png)
    assert code == 2 and "--eta applies to the DDIM sampler only; got --eta 0.5 with --sampler 'ddpm'" in out
    code, out = _run("--onnx", str(onnx_files["tiny"]), "--class", "1", "-o", png)
    assert code == 2 and "Error: --class: this model is unconditional and takes no class ids; leave it out" in out
    code, out = _run("--onnx", str(onnx_files["tiny"]), "--steps", "100000", "-o", png)
    assert code == 2 and "Error: --steps must be an int in [1, " in out
    code, out = _run("--onnx", str(onnx_files["tiny"]), "--model", "tiny", "-o", png)
    assert code != 0 and "at most one of --onnx, --bundle and --model" in out
    code, out = _run("--bundle", str(tmp_path), "--onnx", str(onnx_files["tiny"]), "-o", png)  # a bundle's file?
    assert code == 2 and "pass its name with --bundle-onnx NAME instead of --onnx" in out
    assert not Path(png).exists()


def test_a_huge_n_with_class_is_refused_before_the_class_list_is_built(onnx_files: dict[str, Path],
                                                                        tmp_path: Path) -> None:
    # the ids of --class were listed for every image before -n was checked: 10**12 of them ran
    # until memory ran out ("out of memory", after minutes) instead of the size check's message
    from bad_inputs import run_with_memory_limit

    result = run_with_memory_limit(["sample", "--onnx", onnx_files["kitchen-sink"], "-n", str(10**12), "--class", "3",
                                    "--class", "7", "-o", tmp_path / "g.png"], 3 * 2**30)
    assert result.returncode == 2, result.stderr
    assert re.search(r"Error: -n 1000000000000: the images would need [\d,.]+ GiB", result.stderr), result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "g.png").exists()


def test_a_grid_too_big_for_memory_is_refused_before_sampling(onnx_files: dict[str, Path], tmp_path: Path) -> None:
    # the images fit, so sampling ran (minutes), then the grid's canvas did not: the work was lost
    from bad_inputs import run_with_memory_limit
    from ddpm_export.checks import physical_memory

    n = physical_memory() // (3 * 16 * 16 * 16 * 16) + 1  # the scaled tiles alone exceed memory
    args = ["sample", "--onnx", onnx_files["tiny"], "-n", str(n), "--steps", "1", "--scale", "16", "--no-progress",
            "-o", tmp_path / "g.png", "--save-npy", tmp_path / "g.npy"]
    result = run_with_memory_limit(args, 3 * 2**30)
    assert result.returncode == 2, result.stderr
    assert re.search(rf"Error: --output: the PNG grid of {n} images at --scale 16 would need [\d,.]+ GiB, more than "
                     r"this machine's [\d,.]+ GiB of memory", result.stderr), result.stderr
    assert "Traceback" not in result.stderr and list(tmp_path.iterdir()) == []


def test_grid_bytes_counts_the_canvas_make_grid_draws() -> None:
    from ddpm_export.images import grid_bytes

    for channels, pil_bytes in ((1, 0), (3, 4)):
        images = np.zeros((7, channels, 5, 4), np.float32)
        width, height = make_grid(images, scale=3).size  # 3 columns, 3 rows: 3 * (4 * 3 + 2) + 2 by 3 * (5 * 3 + 2) + 2
        assert (width, height) == (44, 53)
        assert grid_bytes(7, (channels, 5, 4), scale=3) == 7 * channels * 5 * 4 * 9 + width * height * (channels + pil_bytes)


def test_sampler_messages_name_the_flags_and_the_default(tmp_path: Path) -> None:
    """On the shipped digits file, whose default sampler is unipc: --eta without --sampler says
    the sampler is the file's default; a multistep solver's step bound names --steps."""
    from ddpm_export.presets import shipped_onnx

    digits, png = str(shipped_onnx("digits")), str(tmp_path / "g.png")
    code, out = _run("--onnx", digits, "--eta", "0.5", "-o", png)
    assert code == 2 and "got --eta 0.5 with --sampler 'unipc' (the file's default; pass --sampler 'ddim')" in out
    code, out = _run("--onnx", digits, "--sampler", "dpm-solver++", "--steps", "1000", "-o", png)
    assert code == 2 and "--steps: leading spacing of a multistep solver needs num_inference_steps < " \
                         "num_train_timesteps=1000, got 1000" in out, out
    assert not Path(png).exists()


@pytest.mark.slow
def test_a_model_is_exported_on_the_fly_and_digits_is_the_default(onnx_files: dict[str, Path],
                                                                    tmp_path: Path) -> None:
    from ddpm_export.presets import default_model, preset_names

    png, npy = tmp_path / "m.png", tmp_path / "m.npy"
    code, out = _run("--model", "tiny", "-n", "2", "--steps", "3", "-o", str(png), "--save-npy", str(npy))
    assert code == 0, out
    want = Pipeline.from_onnx(onnx_files["tiny"]).sample(2, steps=3, seed=0, progress=False)
    np.testing.assert_allclose(np.load(npy), want, atol=1e-5)  # the same model, exported again
    assert default_model() == ("digits" if "digits" in preset_names() else "tiny")
    code, out = _run("-n", "2", "--steps", "2", "-o", str(tmp_path / "d.png"), "--save-npy", str(tmp_path / "d.npy"))
    assert code == 0, out
    from ddpm_export.presets import shipped_onnx

    shipped = shipped_onnx(default_model())  # the default model's shipped ONNX file: no export
    assert shipped is not None and "exporting" not in out
    want = Pipeline.from_onnx(shipped).sample(2, steps=2, seed=0)
    np.testing.assert_array_equal(np.load(tmp_path / "d.npy"), want)


def test_samples_from_a_bundle(onnx_files: dict[str, Path], tmp_path: Path) -> None:
    bundle = make_bundle([onnx_files["tiny"]], tmp_path / "bundle")
    npy = tmp_path / "b.npy"
    code, out = _run("--bundle", str(bundle), "-n", "2", "--steps", "2", "-o", str(tmp_path / "b.png"),
                     "--save-npy", str(npy))
    assert code == 0, out
    want = Pipeline.from_onnx(onnx_files["tiny"]).sample(2, steps=2, progress=False)
    np.testing.assert_array_equal(np.load(npy), want)


def test_grid_layout_and_grayscale() -> None:
    assert [grid_shape(n) for n in (1, 2, 4, 5, 10, 16, 17)] == [(1, 1), (1, 2), (2, 2), (2, 3), (3, 4), (4, 4),
                                                                 (4, 5)]
    images = np.linspace(-1, 1, 3 * 8 * 8, dtype=np.float32).reshape(3, 1, 8, 8)
    grid = make_grid(images, columns=3, padding=1, scale=2)
    assert grid.mode == "L" and grid.size == (3 * 17 + 1, 17 + 1)
    pixels = np.asarray(grid)
    assert pixels[1, 1] == 0 and pixels[-2, -2] == 255  # -1 -> 0 and 1 -> 255
    assert to_uint8(np.array([[[[0.0]]]], np.float32))[0, 0, 0, 0] == 128  # round(127.5) (half to even)
    with pytest.raises(ValueError, match=r"\[N, 1 or 3, H, W\]"):
        make_grid(np.zeros((2, 2, 4, 4), np.float32))


def test_non_finite_images_are_refused_not_drawn_black(tmp_path: Path) -> None:
    # to_uint8 cast NaN to 0 (with numpy's RuntimeWarning) and save_grid wrote the picture
    from ddpm_export.images import save_grid

    images = np.zeros((2, 1, 4, 4), np.float32)
    images[1, 0, 2, 3] = np.nan
    images[0, 0, 0, 0] = -np.inf
    with pytest.raises(ValueError, match=r"images hold 2 NaN or infinite value\(s\) of 32"):
        to_uint8(images)
    with pytest.raises(ValueError, match="NaN or infinite"):
        save_grid(images, tmp_path / "g.png")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("options, error, message", [
    ({"columns": 0}, ValueError, "columns must be an int >= 1, got 0"),  # was the default layout
    ({"columns": -1}, ValueError, "columns must be an int >= 1, got -1"),  # was numpy's "negative dimensions"
    ({"columns": 1.5}, TypeError, "columns must be an int >= 1, got 1.5"),
    ({"scale": 2.5}, TypeError, "scale must be an int >= 1, got 2.5"),  # was drawn at scale 2
    ({"scale": 0}, ValueError, "scale must be an int >= 1, got 0"),
    ({"padding": 1.5}, TypeError, "padding must be an int >= 0, got 1.5"),
    ({"background": 300}, ValueError, r"background must be a gray level in \[0, 255\], got 300"),  # OverflowError
])
def test_grid_options_are_checked_by_name(options: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=f"^{message}$"):
        make_grid(np.zeros((2, 1, 4, 4), np.float32), **options)


@pytest.mark.parametrize("classes, message", [
    (2**63, f"id {2**63} is outside [0, 10)"), (10**20, f"id {10**20} is outside [0, 10)"),
    ([0, 2**63], f"id {2**63} is outside [0, 10)"),  # numpy would read the list as float64
    (np.array([3, 2**63], np.uint64), f"id {2**63} is outside [0, 10)"),  # not wrapped to a negative id
    ([], "classes must hold n=2 ids, got 0"), ([True, 1], "classes must be ints, not bools"),
    ([1.0, 2.0], "classes must be an int or a 1-D sequence of ints, got float64"),
])
def test_class_ids_of_any_size_are_refused_by_value(onnx_files: dict[str, Path], classes: object, message: str) -> None:
    from ddpm_export.errors import BadInputError

    with pytest.raises(BadInputError, match=re.escape(message)):
        Pipeline.from_onnx(onnx_files["kitchen-sink"]).sample(2, steps=1, classes=classes)
    out = Pipeline.from_onnx(onnx_files["kitchen-sink"]).sample(2, steps=1, classes=[np.int64(9), 0])
    assert out.shape[0] == 2



def test_a_four_channel_model_samples_to_npy_and_refuses_a_png_before_sampling(tmp_path: Path) -> None:
    """A PNG grid holds 1 or 3 channels: -o on a 4-channel model is refused before any step (it
    used to fail after the whole run, writing nothing); --save-npy alone writes the samples."""
    from ddpm_export.config import UNetConfig
    from ddpm_export.export.onnx import export_onnx
    from ddpm_export.nn.checkpoint import build_model, save_checkpoint
    from ddpm_export.presets import MODELS_DIR

    cfg = UNetConfig.load(MODELS_DIR / "tiny" / "config.json").replace(in_channels=4, out_channels=4)
    save_checkpoint(build_model(cfg), tmp_path / "latent")
    onnx = export_onnx(tmp_path / "latent", tmp_path / "latent.onnx", max_batch=4, log=lambda s: None).path
    code, out = _run("--onnx", str(onnx), "--steps", "200", "-o", str(tmp_path / "x.png"))
    assert code == 2 and "Error: --output: a PNG grid holds 1 or 3 channels, and " in out
    assert "makes 4-channel images; write them with --save-npy alone" in out
    code, out = _run("--onnx", str(onnx), "-n", "3", "--steps", "2", "--save-npy", str(tmp_path / "x.npy"))
    assert code == 0 and f"wrote {tmp_path / 'x.npy'} (3 images, 4x16x16, fp32)" in out, out
    assert np.load(tmp_path / "x.npy").shape == (3, 4, 16, 16)
    code, out = _run("--onnx", str(onnx))
    assert code == 2 and "nothing to write: pass -o GRID.png, --save-npy SAMPLES.npy or both" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latent", "latent.onnx", "x.npy"]


def test_a_context_model_is_refused_naming_what_the_command_lacks(tmp_path: Path) -> None:
    """No option of `sample` takes a context: it failed after loading with 'context: ... pass
    context [n, L, 12] float32', an argument the command does not have."""
    from ddpm_export.export.onnx import export_onnx

    from export_helpers import save_test_checkpoint

    onnx = export_onnx(save_test_checkpoint("context", tmp_path), tmp_path / "ctx.onnx", max_batch=2,
                       validate=False, log=lambda s: None).path
    npy = tmp_path / "x.npy"
    code, out = _run("--onnx", str(onnx), "-n", "2", "--steps", "1", "--save-npy", str(npy))
    assert code == 2, out
    assert (f"Error: {onnx}: a context-conditioned model needs a context for every image, which `ddpm-export "
            f"sample` has no way to supply; sample it from Python with Pipeline.sample(n, context=...)") in out
    assert "pass context" not in out and not npy.exists()


def test_a_model_folder_here_wins_over_the_preset_of_its_name(tmp_path: Path, monkeypatch) -> None:
    """`--model digits` sampled the shipped preset even with a ./digits folder (a model trained
    there), which every other command reads."""
    import shutil
    import warnings

    from ddpm_export.presets import MODELS_DIR

    monkeypatch.chdir(tmp_path)
    shutil.copytree(MODELS_DIR / "tiny", tmp_path / "digits")  # tiny's 3 channels, not digits' 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the folder holds no weights: said, and seed weights used
        code, out = _run("--model", "digits", "-n", "2", "--steps", "2", "-o", "x.png")
    assert code == 0 and "(2 images, 3x16x16, fp32)" in out, out
