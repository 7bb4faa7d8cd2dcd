"""tools/train.py and tools/train_classifier.py: smoke runs, reproducibility, refusing to overwrite."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

TOOLS = Path(__file__).resolve().parents[2] / "tools"
SMOKE = ["--steps", "3", "--batch-size", "4", "--base-channels", "8", "--warmup", "2", "--no-progress", "--threads", "1"]


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(f"tools_{name}", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def train():
    return load_tool("train")


def test_smoke_training_writes_a_loadable_checkpoint(train, tmp_path, capsys):
    from ddpm_export import load_model
    from ddpm_export.nn.checkpoint import diffusion_config_for

    out = tmp_path / "digits"
    assert train.main(["--out", str(out), *SMOKE]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "diffusion.json", "model.safetensors",
                                                     "training.json"]
    model = load_model(out)
    assert model.config.num_classes == 10 and model.config.null_class and model.config.in_channels == 1
    dcfg = diffusion_config_for(out)
    assert (dcfg.sampler, dcfg.num_inference_steps, dcfg.eta, dcfg.clip_sample) == ("ddim", 50, 0.0, True)
    record = json.loads((out / "training.json").read_text())
    assert record["args"]["steps"] == 3 and math.isfinite(record["final_loss"])
    assert "final loss" in capsys.readouterr().out


def test_refuses_to_overwrite_without_force(train, tmp_path, capsys):
    out = tmp_path / "digits"
    assert train.main(["--out", str(out), *SMOKE]) == 0
    (out / "README.md").write_text("notes")
    before = (out / "model.safetensors").read_bytes()
    assert train.main(["--out", str(out), *SMOKE, "--seed", "1"]) == 2
    assert "--force" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == before
    # --force replaces the checkpoint and keeps the hand-written README
    assert train.main(["--out", str(out), *SMOKE, "--seed", "1", "--force"]) == 0
    assert (out / "model.safetensors").read_bytes() != before
    assert (out / "README.md").read_text() == "notes"
    assert not list(tmp_path.glob(".digits.*"))  # no staging folder left behind
    assert oct((out / "model.safetensors").stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # not 0600


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_refuses_an_out_it_cannot_replace_before_training(train, tmp_path, capsys):
    """Each used to fail only after the training, with a traceback, or delete the user's files."""
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "config.json").write_text("{}")
    (tmp_path / "mine" / "main.py").write_text("code")
    (tmp_path / "link").symlink_to(tmp_path / "mine")
    for out, message in [("a-file", "a-file is a file; give a folder"),
                         ("mine", "mine holds main.py besides what this command writes: --force would delete it"),
                         ("link", "link is a symbolic link; give a folder"),
                         ("a-file/sub", "cannot be written")]:
        assert train.main(["--out", str(tmp_path / out), *SMOKE, "--force"]) == 2, out
        err = capsys.readouterr()
        assert message in err.err and "final loss" not in err.out, (out, err)
    assert (tmp_path / "mine" / "main.py").read_text() == "code"


@pytest.mark.slow
def test_training_is_reproducible(tmp_path):
    """The documented command, run twice in fresh processes (as a user regenerates the model),
    writes the files the digits README names byte-identical, and training.json differing only in
    what it says (the README claimed every file identical: training.json records wall_s)."""
    import re

    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    for name in ("a", "b"):
        proc = subprocess.run([sys.executable, str(TOOLS / "train.py"), "--out", str(tmp_path / name), *SMOKE],
                              capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr
    a, b = tmp_path / "a", tmp_path / "b"
    identical = {p.name for p in a.iterdir() if p.read_bytes() == (b / p.name).read_bytes()}
    readme = " ".join((TOOLS.parent / "ddpm_export/models/digits/README.md").read_text().split())
    claim = re.search(r"give byte-identical (.*?) \(tested", readme)
    assert claim and set(re.findall(r"`([^`]+)`", claim.group(1))) == identical, (claim, identical)
    ra, rb = (json.loads((d / "training.json").read_text()) for d in (a, b))
    for r in (ra, rb):
        r.pop("wall_s"), r.pop("command"), r["args"].pop("out")
    assert ra == rb and identical == {"model.safetensors", "config.json", "diffusion.json"}


def test_lr_schedule_warms_up_then_decays(train):
    lrs = [train.lr_at(s, 100, 1e-3, 10, 0.05) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(x >= y for x, y in zip(lrs[9:], lrs[10:]))
    assert lrs[-1] == pytest.approx(5e-5, rel=0.01)


def test_help(train, capsys):
    with pytest.raises(SystemExit) as e:
        train.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--out", "--steps", "--batch-size", "--lr", "--seed", "--threads", "--force"):
        assert flag in out


def test_classifier_training_refuses_to_overwrite(tmp_path, capsys):
    tool = load_tool("train_classifier")
    assert tool.main(["--out", str(tmp_path)]) == 2  # bad input: the project's exit status (was 1)
    assert "--force" in capsys.readouterr().err
    # --force replaces only a folder this tool wrote: it deleted a folder of the user's own files
    (tmp_path / "mine.txt").write_text("keep")
    assert tool.main(["--out", str(tmp_path), "--epochs", "1", "--force"]) == 2
    assert "holds no classifier.json of ours" in capsys.readouterr().err
    assert (tmp_path / "mine.txt").read_text() == "keep"


@pytest.mark.parametrize(("flags", "message"), [
    (["--outlier-weight", "-1"], "argument --outlier-weight: must be a finite number >= 0, got -1"),
    (["--outlier-weight", "nan"], "argument --outlier-weight: must be a finite number >= 0, got nan"),
    (["--outlier-weight", "inf"], "argument --outlier-weight: must be a finite number >= 0, got inf"),
    (["--lr", "0"], "argument --lr: must be a finite number > 0, got 0"),
    # a RuntimeError traceback inside Adam ("value cannot be converted to type float without overflow")
    (["--lr", "1e38"], "argument --lr: must be at most 3.40282e+37 (Adam's first step, 10x the rate, must be a "
                       "float32), got 1e38"),
])
def test_classifier_bad_flags_are_refused(tmp_path, capsys, flags, message):
    """--outlier-weight -1 or nan trained silently without outlier exposure, inf trained NaN weights (exit 0)."""
    tool = load_tool("train_classifier")
    with pytest.raises(SystemExit) as info:
        tool.main(["--out", str(tmp_path / "clf"), *flags])
    assert info.value.code == 2 and message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("tool", "progress", "signum", "status"), [
    ("train_classifier", "epoch   0", signal.SIGINT, 130), ("train_classifier", "epoch   0", signal.SIGTERM, 143),
    ("train", "step     0", signal.SIGINT, 130),
])
def test_an_interrupted_run_says_so_and_writes_nothing(tmp_path, tool, progress, signum, status):
    """Ctrl-C in train_classifier.py ended in a KeyboardInterrupt traceback (train.py said it in one line)."""
    flags = ["--epochs", "10000"] if tool == "train_classifier" else [*SMOKE, "--steps", "100000"]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(TOOLS.parent)}
    proc = subprocess.Popen([sys.executable, str(TOOLS / f"{tool}.py"), "--out", str(tmp_path / "out"), *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as from a terminal
    try:
        for line in proc.stdout:  # training has begun
            if line.startswith(progress):
                break
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == status, err
    assert "Traceback" not in err and (signum != signal.SIGINT or "interrupted; nothing was written" in err), err
    assert list(tmp_path.iterdir()) == []


def test_a_diverged_classifier_run_writes_nothing(tmp_path, capsys):
    """--lr 1e20 trained to NaN weights and wrote them (and a classifier.json with bare NaNs), exit 0."""
    tool = load_tool("train_classifier")
    assert tool.main(["--out", str(tmp_path / "clf"), "--epochs", "1", "--lr", "1e20"]) == 1
    err = capsys.readouterr().err
    assert "training diverged" in err and "nothing was written" in err, err
    assert list(tmp_path.iterdir()) == []


def test_a_degenerate_classifier_run_writes_nothing(tmp_path, capsys):
    """--lr 1e4 trained finite weights with every feature zero and wrote them (exit 0): a classifier
    that tools/quality.py must refuse (it ended there in a ZeroDivisionError)."""
    tool = load_tool("train_classifier")
    assert tool.main(["--out", str(tmp_path / "clf"), "--epochs", "1", "--lr", "1e4"]) == 1
    err = capsys.readouterr().err
    assert "training diverged" in err and "the classifier's features are the same for every held-out digit" in err
    assert "nothing was written" in err and list(tmp_path.iterdir()) == [], err


@pytest.mark.parametrize(("flags", "message"), [
    (["--lr", "-1"], "--lr must be a finite number > 0"),
    (["--lr", "nan"], "--lr must be a finite number > 0"),
    # a RuntimeError traceback inside Adam ("value cannot be converted to type float without overflow")
    (["--lr", "1e38"], "--lr must be at most 3.40282e+37 (Adam's first step, 10x the rate, must be a float32), "
                       "got 1e+38"),
    (["--ema", "-1"], "--ema must be in [0, 1)"),
    (["--ema", "1.5"], "--ema must be in [0, 1)"),
    (["--warmup", "-5"], "--warmup must be >= 0"),
    (["--final-lr-frac", "3"], "--final-lr-frac in [0, 1]"),
    # each said "num_groups: 8 must divide ..." or "base_channels: must be >= 1", names of no flag
    (["--base-channels", "12"], "--base-channels must be a multiple of 8 (the GroupNorm groups), >= 8; got 12"),
    (["--base-channels", "0"], "--base-channels must be a multiple of 8 (the GroupNorm groups), >= 8; got 0"),
    (["--base-channels", "-8"], "--base-channels must be a multiple of 8 (the GroupNorm groups), >= 8; got -8"),
])
def test_bad_hyperparameters_are_refused_before_any_work(train, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as info:
        train.main(["--out", str(tmp_path / "x"), *SMOKE, *flags])
    assert info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("tool", ["train", "train_classifier"])
def test_max_lr_is_the_largest_rate_adam_can_step_with(tool):
    """Above MAX_LR Adam's first step (lr / (1 - beta1)) is no float32: a RuntimeError inside torch."""
    import torch

    max_lr = load_tool(tool).MAX_LR
    assert f"{max_lr:.6g}" == "3.40282e+37" and float("3.40282e+37") <= max_lr  # the bound printed is accepted
    for lr, fails in ((max_lr, False), (max_lr * (1 + 1e-6), True)):
        p = torch.nn.Parameter(torch.ones(2))
        opt = torch.optim.Adam([p], lr=lr)
        p.sum().backward()
        if fails:
            with pytest.raises(RuntimeError, match="overflow"):
                opt.step()
        else:
            opt.step()
            assert torch.isfinite(p).all()


def test_a_diverged_run_writes_nothing(train, tmp_path, capsys):
    """--lr 1e4 trained to NaN and wrote the checkpoint (and a training.json with a bare NaN), exit 0."""
    assert train.main(["--out", str(tmp_path / "nan"), *SMOKE, "--steps", "40", "--warmup", "1", "--lr", "1e4"]) == 1
    assert "training diverged" in capsys.readouterr().err and list(tmp_path.iterdir()) == []


def test_retraining_a_shipped_model_folder_keeps_its_sampler_and_drops_its_onnx(train, tmp_path, capsys):
    """The README's `tools/train.py --out ddpm_export/models/digits --force` was refused (model.onnx),
    and retraining reset the UniPC-10 default to DDIM-50."""
    import shutil

    from ddpm_export.presets import MODELS_DIR

    out = tmp_path / "digits"
    shutil.copytree(MODELS_DIR / "digits", out)
    before = json.loads((out / "diffusion.json").read_text())
    assert train.main(["--out", str(out), *SMOKE, "--force"]) == 0
    assert "the old model.onnx was made from the old weights" in capsys.readouterr().out
    assert json.loads((out / "diffusion.json").read_text()) == before
    assert not (out / "model.onnx").exists() and (out / "README.md").is_file()
