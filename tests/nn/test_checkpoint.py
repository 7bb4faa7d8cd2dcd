"""Checkpoints (``ddpm_export.nn.checkpoint``): config.json + model.safetensors, strict loading, presets."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

from ddpm_export import load_model as load_model_top  # noqa: E402
from ddpm_export.config import ConfigError, UNetConfig  # noqa: E402
from ddpm_export.nn.checkpoint import (  # noqa: E402
    CONFIG_NAME, WEIGHTS_NAME, CheckpointError, build_model, load_checkpoint, load_model, save_checkpoint,
)
from ddpm_export.nn.unet import UNet  # noqa: E402
from ddpm_export.presets import MODELS_DIR  # noqa: E402

PRESETS = ["ddpm-cifar10", "digits", "kitchen-sink", "tiny"]
SMALL = dict(base_channels=8, channel_mult=(1, 2), sample_size=8, num_groups=4, num_res_blocks=1,
             attention_resolutions=(4,))


def _inputs(cfg: UNetConfig, batch: int = 2):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=g)
    t = torch.tensor([10, 900][:batch])
    cond = torch.tensor([1, cfg.num_classes - 1][:batch]) if cfg.cond_kind == "class" else None
    return x, t, cond


def _perturb(model: UNet, seed: int = 1) -> UNet:
    """Non-default values everywhere, so a reload that ignored the file would be caught."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.01)
    return model


def _assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        assert torch.equal(sa[key], sb[key]), key


def _save_tiny_weights(folder, weights: dict[str, torch.Tensor], cfg: UNetConfig | None = None):
    folder.mkdir()
    cfg = cfg or UNetConfig(**SMALL)
    (folder / CONFIG_NAME).write_text(cfg.to_json())
    safetensors_torch.save_file(weights, str(folder / WEIGHTS_NAME))
    return folder


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "ddpm-cifar10" else n
                                  for n in PRESETS])
def test_round_trip_is_bit_exact_for_every_preset(name, tmp_path):
    model = _perturb(load_model(name))
    out_dir = save_checkpoint(model, tmp_path / name)
    assert sorted(p.name for p in out_dir.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    assert json.loads((out_dir / CONFIG_NAME).read_text()) == model.config.to_dict()
    back = load_checkpoint(out_dir)
    assert not back.training
    assert back.config == model.config
    _assert_same_state(model, back)
    x, t, cond = _inputs(model.config, batch=1 if name == "ddpm-cifar10" else 2)
    with torch.no_grad():
        assert torch.equal(back(x, t, cond), model.eval()(x, t, cond))
    assert not list(tmp_path.glob(".*"))  # no temp folder left behind


def test_round_trip_keeps_batch_norm_buffers(tmp_path):
    cfg = UNetConfig(**SMALL, norm="batch", zero_init=False)
    model = build_model(cfg).train()
    x, t, _ = _inputs(cfg)
    with torch.no_grad():
        for _ in range(3):
            model(x * 3 + 1, t)  # move the running statistics away from (0, 1)
    bn = model.norm_out
    assert bn.num_batches_tracked.item() == 3 and not torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
    model.eval()
    back = load_checkpoint(save_checkpoint(model, tmp_path / "bn"))
    assert any(k.endswith("running_var") for k in back.state_dict())
    assert back.norm_out.num_batches_tracked.dtype == torch.int64
    _assert_same_state(model, back)
    with torch.no_grad():
        assert torch.equal(back(x, t), model(x, t))


def test_existing_folder_refused_without_force_and_overwritten_with_force(tmp_path):
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    first = build_model(UNetConfig(**SMALL), seed=1)
    with pytest.raises(FileExistsError, match="force"):
        save_checkpoint(first, out)
    assert (out / "stale.txt").read_text() == "old"  # untouched
    with pytest.raises(ValueError, match="holds no config.json of ours, so this command did not write it"):
        save_checkpoint(first, out, force=True)  # not a checkpoint: --force would delete the user's files
    assert (out / "stale.txt").read_text() == "old"
    (out / CONFIG_NAME).write_text("{}")
    with pytest.raises(ValueError, match="holds stale.txt besides what this command writes"):
        save_checkpoint(first, out, force=True)  # a config.json beside the user's files is not enough
    (out / "stale.txt").unlink()  # a (broken) checkpoint folder is ours to replace
    save_checkpoint(first, out, force=True)
    assert sorted(p.name for p in out.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    second = build_model(UNetConfig(**SMALL, norm="layer"), seed=2)
    save_checkpoint(second, out, force=True)
    back = load_checkpoint(out)
    assert back.config.norm == "layer"
    _assert_same_state(second, back)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def _unsavable_model() -> UNet:
    """A model whose state dict holds two tensors sharing memory, which safetensors refuses to write."""
    model = build_model(UNetConfig(**SMALL))
    model.register_buffer("alias", model.conv_in.weight.data)
    return model


def test_failed_save_leaves_nothing_behind(tmp_path):
    out = tmp_path / "ckpt"
    with pytest.raises(RuntimeError):
        save_checkpoint(_unsavable_model(), out)
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temp folder


def test_failed_forced_save_keeps_the_old_checkpoint(tmp_path):
    out = tmp_path / "ckpt"
    good = build_model(UNetConfig(**SMALL), seed=3)
    save_checkpoint(good, out)
    with pytest.raises(RuntimeError):
        save_checkpoint(_unsavable_model(), out, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    _assert_same_state(good, load_checkpoint(out))


def test_save_creates_missing_parents(tmp_path):
    out = save_checkpoint(build_model(UNetConfig(**SMALL)), tmp_path / "a" / "b" / "ckpt")
    assert (out / WEIGHTS_NAME).is_file()


def test_missing_key_is_refused_by_name(tmp_path):
    weights = dict(build_model(UNetConfig(**SMALL)).state_dict())
    del weights["mid_attention.attn.to_k.bias"]
    folder = _save_tiny_weights(tmp_path / "ckpt", weights)
    with pytest.raises(CheckpointError, match=r"missing key\(s\) 'mid_attention\.attn\.to_k\.bias'"):
        load_checkpoint(folder)
    with pytest.raises(CheckpointError, match="mid_attention.attn.to_k.bias"):
        load_model(folder)


def test_unexpected_key_is_refused_by_name(tmp_path):
    weights = dict(build_model(UNetConfig(**SMALL)).state_dict())
    weights["extra.weight"] = torch.zeros(3)
    folder = _save_tiny_weights(tmp_path / "ckpt", weights)
    with pytest.raises(CheckpointError, match=r"unexpected key\(s\) 'extra\.weight'"):
        load_checkpoint(folder)


def test_shape_mismatch_is_refused_by_name(tmp_path):
    weights = dict(build_model(UNetConfig(**SMALL)).state_dict())
    weights["conv_out.weight"] = torch.zeros(3, 8, 5, 5)
    folder = _save_tiny_weights(tmp_path / "ckpt", weights)
    with pytest.raises(CheckpointError, match=r"'conv_out\.weight' has shape \(3, 8, 5, 5\).*\(3, 8, 3, 3\)"):
        load_checkpoint(folder)


def test_weights_of_another_config_are_refused(tmp_path):
    weights = build_model(UNetConfig(**{**SMALL, "base_channels": 16})).state_dict()
    folder = _save_tiny_weights(tmp_path / "ckpt", dict(weights))
    with pytest.raises(CheckpointError, match="has shape"):
        load_checkpoint(folder)


def test_missing_weights_file_and_bad_config(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / CONFIG_NAME).write_text(UNetConfig(**SMALL).to_json())
    with pytest.raises(CheckpointError, match=f"{WEIGHTS_NAME} not found"):
        load_checkpoint(folder)
    (folder / CONFIG_NAME).write_text('{"norm": "instance"}')
    with pytest.raises(ConfigError, match="norm='instance'"):
        load_model(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match=f"has no {CONFIG_NAME}"):
        load_model(empty)


def test_unknown_model_name_lists_the_presets():
    with pytest.raises(ValueError) as info:
        load_model("no-such-model")
    message = str(info.value)
    assert "'no-such-model'" in message
    assert "presets: ddpm-cifar10, digits, kitchen-sink, tiny" in message


def test_a_file_instead_of_a_folder_is_a_clear_error(tmp_path):
    folder = save_checkpoint(build_model(UNetConfig(**SMALL)), tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="is a file; pass the checkpoint folder"):
        load_model(folder / WEIGHTS_NAME)
    with pytest.raises(CheckpointError, match="is a file"):
        load_model(str(folder / CONFIG_NAME))


@pytest.mark.parametrize("name", PRESETS)
def test_presets_load(name):
    model = load_model_top(name)
    assert isinstance(model, UNet) and not model.training
    assert model.config == UNetConfig.load(MODELS_DIR / name / CONFIG_NAME)
    again = load_model(name)
    _assert_same_state(model, again)  # presets without weights come from a fixed seed
    x, t, cond = _inputs(model.config, batch=1)
    with torch.no_grad():
        out = model(x, t, cond)
    assert out.shape == (1, model.config.out_channels, model.config.sample_size, model.config.sample_size)
    assert torch.isfinite(out).all()


@pytest.mark.slow
def test_saving_is_byte_identical_across_processes(tmp_path):
    """The same weights give the same file bytes (and so the same sha256 in exported metadata)
    in every process; safetensors orders a multi-entry metadata map differently per process."""
    import subprocess
    import sys

    code = ("import sys; from ddpm_export.nn.checkpoint import save_checkpoint; "
            "from ddpm_export import load_model; save_checkpoint(load_model('tiny'), sys.argv[1])")
    for name in ("a", "b", "c"):
        proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / name)], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr
    blobs = {(tmp_path / n / "model.safetensors").read_bytes() for n in ("a", "b", "c")}
    assert len(blobs) == 1


@pytest.mark.parametrize("name", ["", "  "])
def test_an_empty_model_name_is_refused_not_read_as_the_working_folder(name):
    # Path("") is "."; it used to be read as a checkpoint folder ("... . has no config.json")
    with pytest.raises(ValueError, match="an empty model name: give a preset .*ddpm-cifar10.* or a checkpoint folder"):
        load_model(name)
