"""diffusers ``UNet2DModel`` folders load into the reference UNet and compute the same function.

Real models, nothing downloaded: random-weight ``UNet2DModel``s are saved locally with
``save_pretrained(safe_serialization=True)``, every parameter perturbed so that none is zero or
at its initial value, loaded through ``ddpm_export.load_model`` and compared on the same inputs.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
from safetensors.torch import load_file, save_file  # noqa: E402

import ddpm_export  # noqa: E402
from ddpm_export.config import ConfigError  # noqa: E402
from ddpm_export.diffusion.from_diffusers import SchedulerConfigError  # noqa: E402
from ddpm_export.nn.checkpoint import CheckpointError, diffusion_config_for  # noqa: E402
from ddpm_export.nn.diffusers_import import (DIFFUSERS_DEFAULTS, diffusers_key, our_key,  # noqa: E402
                                              read_diffusers_config)

WEIGHTS = "diffusion_pytorch_model.safetensors"
ATOL = 1e-5

#: google/ddpm-cifar10-32's config.json (Ho et al. 2020's CIFAR-10 network). Attention is at
#: 16 x 16 both ways: down_blocks[1] and up_blocks[2] (up_blocks run from the bottom up).
CIFAR10 = {
    "_class_name": "UNet2DModel",
    "_diffusers_version": "0.0.4",
    "act_fn": "silu",
    "attention_head_dim": None,
    "block_out_channels": [128, 256, 256, 256],
    "center_input_sample": False,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "downsample_padding": 0,
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "in_channels": 3,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-06,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 32,
    "time_embedding_type": "positional",
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
}
CIFAR10_PARAMETERS = 35_746_307

#: A small two-level model with attention at the top level; the cases below vary it.
SMALL = {
    "sample_size": 16,
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "down_block_types": ("AttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "AttnUpBlock2D"),
    "attention_head_dim": None,
}
TWO_LEVEL_ATTENTION = {
    "block_out_channels": (16, 32, 32),
    "norm_num_groups": 4,
    "down_block_types": ("AttnDownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
    "up_block_types": ("AttnUpBlock2D", "UpBlock2D", "AttnUpBlock2D"),
}
SMALL_CASES = {
    "cos-sin-shift0": {"flip_sin_to_cos": True, "freq_shift": 0},
    "sin-cos-shift1-pad0": {"flip_sin_to_cos": False, "freq_shift": 1, "downsample_padding": 0},
    "pad1": {"downsample_padding": 1},
    "scale-shift": {"resnet_time_scale_shift": "scale_shift"},
    "scale-shift-attn-groups": {"resnet_time_scale_shift": "scale_shift", "attn_norm_num_groups": 8},
    "classes": {"num_class_embeds": 5},
    "multi-head": {"attention_head_dim": 8},
    "no-mid-attention": {"add_attention": False},
    "attention-two-levels": TWO_LEVEL_ATTENTION,
    "learned-time": {"time_embedding_type": "learned", "num_train_timesteps": 1000},
    # diffusers ignores downsample_type when no AttnDownBlock2D downsamples
    "resnet-downsample-unused": {"down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
                                 "up_block_types": ("AttnUpBlock2D", "UpBlock2D"), "downsample_type": "resnet"},
    "other-spellings": {"down_block_types": ("UNetResAttnDownBlock2D", "DownBlock2D"), "sample_size": (16, 16),
                        "act_fn": "swish", "dropout": 0.1, "layers_per_block": 2, "in_channels": 1,
                        "out_channels": 2, "norm_eps": 1e-6},
    # an odd sinusoid width: diffusers pads the embedding with a zero column, as ours does (was refused)
    "odd-base-width": {"block_out_channels": (33, 66), "norm_num_groups": 3},
    "odd-base-width-sin-cos-shift1": {"block_out_channels": (33, 66), "norm_num_groups": 3, "flip_sin_to_cos": False,
                                      "freq_shift": 1, "attention_head_dim": 11},
}


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Perturb every parameter (norm affines included) so none is zero or at its initial value."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = float(p.std()) if p.numel() > 1 else 0.0
            p.add_(torch.randn(p.shape, generator=gen) * 0.5 * (scale or 0.1))
            assert bool((p != 0).all()), name


def _save_diffusers(folder: Path, config: dict, seed: int = 0) -> torch.nn.Module:
    """A random-weight UNet2DModel saved as a diffusers folder; returned in eval mode."""
    kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
    torch.manual_seed(seed)
    model = diffusers.UNet2DModel(**kwargs)
    _randomise(model, seed)
    model.save_pretrained(folder, safe_serialization=True)
    return model.eval()


def _max_error(theirs: torch.nn.Module, ours: torch.nn.Module, t: list[int], *, labels: torch.Tensor | None = None,
               seed: int = 0) -> float:
    cfg = ours.config
    x = torch.randn(len(t), cfg.in_channels, cfg.sample_size, cfg.sample_size,
                    generator=torch.Generator().manual_seed(seed))
    steps = torch.tensor(t, dtype=torch.int64)
    with torch.no_grad():
        ref = theirs(x, steps, class_labels=labels).sample
        out = ours(x, steps, labels)
    assert out.shape == ref.shape
    return float((out - ref).abs().max())


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _folder_with_config(folder: Path, config: dict) -> Path:
    """A diffusers folder holding only config.json (the config is refused before any weights are read)."""
    data = {"_class_name": "UNet2DModel", **{k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}}
    (folder / "config.json").write_text(json.dumps(data))
    return folder


@pytest.mark.slow
def test_ddpm_cifar10_config_matches_diffusers(tmp_path):
    theirs = _save_diffusers(tmp_path, CIFAR10)
    ours = ddpm_export.load_model(tmp_path)
    assert _count(theirs) == _count(ours) == CIFAR10_PARAMETERS
    cfg = ours.config
    assert (cfg.base_channels, cfg.channel_mult, cfg.attention_resolutions) == (128, (1, 2, 2, 2), (16,))
    assert (cfg.downsample_padding, cfg.flip_sin_to_cos, cfg.freq_shift) == ("asymmetric", False, 1)
    assert (cfg.head_dim, cfg.num_heads, cfg.norm_eps, cfg.mid_attention_norm) == (None, 1, 1e-6, True)
    errors = [_max_error(theirs, ours, [t], seed=t) for t in (0, 500, 999)]
    print(f"\ncifar10 max abs error per t (0, 500, 999): {errors}")
    assert max(errors) <= ATOL


@pytest.mark.parametrize("case", list(SMALL_CASES), ids=list(SMALL_CASES))
def test_small_configs_match_diffusers(tmp_path, case):
    config = {**SMALL, **SMALL_CASES[case]}
    theirs = _save_diffusers(tmp_path, config)
    ours = ddpm_export.load_model(tmp_path)
    assert _count(theirs) == _count(ours)
    labels = torch.tensor([0, 4, 2, 1]) if "num_class_embeds" in config else None
    error = _max_error(theirs, ours, [0, 1, 500, 999], labels=labels)
    print(f"\n{case}: max abs error {error:.3g}")
    assert error <= ATOL


def test_switches_map_to_our_config(tmp_path):
    cfg = read_diffusers_config(_folder_with_config(tmp_path, {
        **SMALL, "resnet_time_scale_shift": "scale_shift", "num_class_embeds": 5, "attention_head_dim": 16,
        "dropout": 0.1, "downsample_padding": 1}) / "config.json")
    assert (cfg.time_conditioning, cfg.mid_attention_norm, cfg.num_classes, cfg.null_class) == ("film", False, 5, False)
    assert (cfg.head_dim, cfg.heads_for(64), cfg.dropout, cfg.downsample_padding) == (16, 4, 0.1, "symmetric")
    assert (cfg.sample_size, cfg.attention_resolutions, cfg.num_res_blocks, cfg.num_groups) == (16, (16,), 1, 8)


def test_a_scheduler_t_out_of_range_is_named_in_its_own_file(tmp_path):
    """A scheduler's num_train_timesteps of 10**30, taken into the UNet's config, was refused as
    the UNet's config.json's; the UNet keeps its default and the scheduler's file is named."""
    folder = _folder_with_config(tmp_path, SMALL)
    (folder / "scheduler_config.json").write_text(json.dumps({"_class_name": "DDPMScheduler",
                                                              "num_train_timesteps": 10 ** 30}))
    assert read_diffusers_config(folder / "config.json").num_train_timesteps == 1000
    with pytest.raises(SchedulerConfigError, match=r"scheduler_config.json: num_train_timesteps: must be in"):
        diffusion_config_for(folder)


def test_legacy_attention_names_load(tmp_path):
    theirs = _save_diffusers(tmp_path, {**SMALL, "attention_head_dim": 8})
    legacy = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    weights = load_file(tmp_path / WEIGHTS)
    renamed = {}
    for key, value in weights.items():
        module, _, param = key.rpartition(".")
        for new, old in legacy.items():
            if ".attentions." in module and module.endswith("." + new):
                module = module[: -len(new)] + old
        renamed[f"{module}.{param}"] = value
    assert "mid_block.attentions.0.proj_attn.weight" in renamed
    save_file(renamed, tmp_path / WEIGHTS)
    assert _max_error(theirs, ddpm_export.load_model(tmp_path), [0, 999]) <= ATOL


def test_sharded_safetensors_load(tmp_path):
    theirs = diffusers.UNet2DModel(**SMALL)
    _randomise(theirs, 1)
    theirs.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="200KB")
    assert not (tmp_path / WEIGHTS).exists() and (tmp_path / f"{WEIGHTS}.index.json").is_file()
    assert _max_error(theirs.eval(), ddpm_export.load_model(tmp_path), [0, 999]) <= ATOL


def test_the_source_of_sharded_weights_is_the_shard_index_name(tmp_path):
    """docs/metadata.md's ddpm_export.source, a file name: it was the folder's path as typed."""
    pytest.importorskip("onnx")
    from ddpm_export.contract import metadata as md
    from ddpm_export.export.onnx import export_onnx
    from ddpm_export.runtime.info import read_metadata

    theirs = diffusers.UNet2DModel(**SMALL)
    theirs.save_pretrained(tmp_path / "unet", safe_serialization=True, max_shard_size="200KB")
    result = export_onnx(tmp_path / "unet", tmp_path / "m.onnx", max_batch=1, validate=False, log=lambda s: None)
    assert read_metadata(result.path)[md.SOURCE] == f"{WEIGHTS}.index.json"


def test_a_tensor_stored_in_two_shards_is_refused(tmp_path):
    """The later shard's copy silently won (which one diffusers loads is the index's word)."""
    theirs = diffusers.UNet2DModel(**SMALL)
    theirs.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="200KB")
    index = json.loads((tmp_path / f"{WEIGHTS}.index.json").read_text())
    first, last = sorted(set(index["weight_map"].values()))[0], sorted(set(index["weight_map"].values()))[-1]
    key = next(iter(load_file(tmp_path / first)))
    save_file({**load_file(tmp_path / last), key: torch.zeros(1)}, tmp_path / last)
    with pytest.raises(CheckpointError, match=rf"{key!r} is stored in both {first} and {last}"):
        ddpm_export.load_model(tmp_path)


def test_sharded_weights_are_trained_weights(tmp_path):
    """A sharded folder has no single weights file: `inspect` called it seed-initialised and, as
    for a zero_init seeded model, measured its ERF on fresh seed weights instead of the user's."""
    from ddpm_export.commands.inspect import _erf_subject, _load
    from ddpm_export.nn.checkpoint import seed_initialised

    theirs = diffusers.UNet2DModel(**SMALL)
    _randomise(theirs, 1)
    theirs.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="200KB")
    unet, weights = _load(str(tmp_path), 1, None)
    assert weights == "trained" and not seed_initialised(tmp_path) and seed_initialised("tiny")
    subject, _ = _erf_subject(unet, weights)
    assert subject is unet and _max_error(theirs.eval(), subject, [0, 999]) <= ATOL


def test_key_mapping_round_trips(tmp_path):
    """Every key of every small config maps to ours and back."""
    for case in SMALL_CASES.values():
        keys = diffusers.UNet2DModel(**{**SMALL, **case}).state_dict().keys()
        for key in keys:
            assert our_key(key) is not None and diffusers_key(our_key(key)) == key, key
    assert our_key("down_blocks.0.attentions.0.query.bias") == "down.0.attentions.0.attn.to_q.bias"
    assert our_key("down_blocks.0.resnets.0.conv9.weight") is None


def test_defaults_match_unet2dmodel_signature():
    """A key missing from config.json takes diffusers' default; every __init__ argument is decided."""
    params = inspect.signature(diffusers.UNet2DModel.__init__).parameters
    signature = {name: p.default for name, p in params.items() if name != "self"}
    assert set(signature) <= set(DIFFUSERS_DEFAULTS), sorted(set(signature) - set(DIFFUSERS_DEFAULTS))
    for name, default in signature.items():
        assert DIFFUSERS_DEFAULTS[name] == default, name


@pytest.mark.slow
def test_ddpm_export_does_not_import_diffusers(tmp_path):
    _save_diffusers(tmp_path, SMALL)
    code = ("import sys, ddpm_export; ddpm_export.load_model(sys.argv[1]); "
            "assert 'diffusers' not in sys.modules, 'ddpm_export imported diffusers'")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True)


# --- refusals -------------------------------------------------------------------------------------

REFUSED = {
    "skip-down-block": ({"down_block_types": ["SkipDownBlock2D", "DownBlock2D"]},
                        ["down_block_types[0]='SkipDownBlock2D'", "'DownBlock2D', 'AttnDownBlock2D'"]),
    "resnet-downsample-block": ({"down_block_types": ["AttnDownBlock2D", "ResnetDownsampleBlock2D"]},
                                ["'ResnetDownsampleBlock2D'", "supported"]),
    "attn-skip-up-block": ({"up_block_types": ["UpBlock2D", "AttnSkipUpBlock2D"]},
                           ["up_block_types[1]='AttnSkipUpBlock2D'", "'UpBlock2D', 'AttnUpBlock2D'"]),
    # a list or object where a block name belongs: a TypeError traceback (unhashable), exit 1
    "block-type-list": ({"down_block_types": [["DownBlock2D"], "DownBlock2D"]}, ["down_block_types[0]=['DownBlock2D']"]),
    "block-type-object": ({"up_block_types": ["UpBlock2D", {"a": 1}]}, ["up_block_types[1]={'a': 1}"]),
    "cross-attn-block": ({"down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"]}, ["'CrossAttnDownBlock2D'"]),
    "attention-not-mirrored": ({"up_block_types": ["AttnUpBlock2D", "UpBlock2D"]}, ["mirror"]),
    # attention at 16 x 16 on the way down but 8 x 8 on the way up
    "cifar10-attention-at-8-up": (
        {**CIFAR10, "up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"]},
        ["place attention at different levels", "mirror"]),
    "channels-not-multiples": ({"block_out_channels": [32, 48]}, ["block_out_channels=[32, 48]", "multiples"]),
    "gelu": ({"act_fn": "gelu"}, ["act_fn='gelu'", "'silu'"]),
    "center-input": ({"center_input_sample": True}, ["center_input_sample=True"]),
    "mid-scale": ({"mid_block_scale_factor": 1.414}, ["mid_block_scale_factor=1.414"]),
    "fourier": ({"time_embedding_type": "fourier"}, ["time_embedding_type='fourier'", "'positional'"]),
    "class-embed-type": ({"class_embed_type": "timestep"}, ["class_embed_type='timestep'"]),
    "attn-norm-groups": ({"attn_norm_num_groups": 4}, ["attn_norm_num_groups=4"]),
    "spatial": ({"resnet_time_scale_shift": "spatial"}, ["resnet_time_scale_shift='spatial'", "'scale_shift'"]),
    "resnet-upsample": ({"down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types":
                         ["AttnUpBlock2D", "UpBlock2D"], "upsample_type": "resnet"}, ["upsample_type='resnet'"]),
    "resnet-downsample": ({"downsample_type": "resnet"}, ["downsample_type='resnet'"]),
    "padding-2": ({"downsample_padding": 2}, ["downsample_padding=2"]),
    "time-embedding-dim": ({"time_embedding_dim": 64}, ["time_embedding_dim=64"]),
    "no-groups": ({"norm_num_groups": None}, ["norm_num_groups=None"]),
    "no-mid-block": ({"mid_block_type": None}, ["mid_block_type=None"]),
    "no-sample-size": ({"sample_size": None}, ["sample_size=None"]),
    "non-square": ({"sample_size": [16, 32]}, ["sample_size=[16, 32]"]),
    "head-dim": ({"attention_head_dim": 24}, ["attention_head_dim=24"]),
    "head-dim-0": ({"attention_head_dim": 0}, ["attention_head_dim=0", "must divide"]),  # was a ZeroDivisionError
    "layers-per-block-type": ({"layers_per_block": "2"}, ["(num_res_blocks is diffusers' layers_per_block)",
                                                          "num_res_blocks='2' has the wrong type"]),
    "add-attention-type": ({"add_attention": 3}, ["(mid_attention is diffusers' add_attention)"]),
    "unknown-key": ({"cross_attention_dim": 768}, ["cross_attention_dim"]),
    "conditional-unet": ({"_class_name": "UNet2DConditionModel"}, ["UNet2DConditionModel"]),
}


@pytest.mark.parametrize("case", list(REFUSED), ids=list(REFUSED))
def test_unsupported_configs_are_refused_by_name(tmp_path, case):
    changes, fragments = REFUSED[case]
    with pytest.raises(ConfigError) as info:
        ddpm_export.load_model(_folder_with_config(tmp_path, {**SMALL, **changes}))
    for fragment in fragments:
        assert fragment in str(info.value)


def test_time_embedding_dim_zero_is_diffusers_default_width(tmp_path):
    """diffusers builds ``time_embedding_dim or 4 * block_out_channels[0]``: 0 is the default."""
    theirs = _save_diffusers(tmp_path, {**SMALL, "time_embedding_dim": 0})
    assert _max_error(theirs, ddpm_export.load_model(tmp_path), [0, 500, 999]) <= ATOL


def test_a_config_that_is_not_utf8_is_named(tmp_path):
    folder = _folder_with_config(tmp_path, SMALL)
    config = folder / "config.json"
    config.write_bytes(config.read_text().encode("utf-16"))  # e.g. PowerShell 5's Out-File
    with pytest.raises(ConfigError, match=r"config.json: not UTF-8 text .*; save it as UTF-8 JSON"):
        ddpm_export.load_model(folder)


def test_a_pipeline_folder_or_a_weights_file_points_to_the_unet_folder(tmp_path):
    _save_diffusers(tmp_path / "pipe" / "unet", SMALL)
    (tmp_path / "pipe" / "model_index.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"pipe is a diffusers pipeline folder; pass its UNet folder, .*unet"):
        ddpm_export.load_model(tmp_path / "pipe")
    with pytest.raises(CheckpointError, match=r"is a file; pass the checkpoint folder .* or "
                                              r"diffusion_pytorch_model.safetensors \(a diffusers UNet2DModel\)"):
        ddpm_export.load_model(tmp_path / "pipe" / "unet" / WEIGHTS)


def test_bin_only_folder_is_refused(tmp_path):
    diffusers.UNet2DModel(**SMALL).save_pretrained(tmp_path, safe_serialization=False)
    assert (tmp_path / "diffusion_pytorch_model.bin").is_file()
    with pytest.raises(CheckpointError, match=r"diffusion_pytorch_model\.bin.*safetensors only"):
        ddpm_export.load_model(tmp_path)


@pytest.mark.parametrize(("weight_map", "match"), [
    ({"a.weight": 1}, r"index.json: not a safetensors shard index \(weight_map names a shard 1\)"),  # a TypeError
    ({"a.weight": ""}, r"index.json: not a safetensors shard index \(weight_map names a shard ''\)"),  # 'not found'
    ({"a.weight": "sub"}, r"sub: not a regular file"),  # 'sub not found' of a folder that is there
    ({"a.weight": "../w.safetensors"}, r"not a safetensors shard index \(weight_map names a shard '\.\./w"),  # was read
])
def test_a_shard_index_naming_no_file_is_named(tmp_path, weight_map, match):
    _folder_with_config(tmp_path, SMALL)
    (tmp_path / "sub").mkdir()
    (tmp_path / f"{WEIGHTS}.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match=match):
        ddpm_export.load_model(tmp_path)


def test_a_folder_in_place_of_the_weights_is_named(tmp_path):
    """It read 'has no diffusion_pytorch_model.safetensors (found diffusion_pytorch_model.safetensors)'."""
    _folder_with_config(tmp_path, SMALL)
    (tmp_path / WEIGHTS).mkdir()
    with pytest.raises(CheckpointError, match=rf"{WEIGHTS}: not a regular file"):
        ddpm_export.load_model(tmp_path)


@pytest.mark.parametrize("key", ["down_blocks.0.resnets.0.conv1.weight", "mid_block.attentions.0.to_q.bias"])
def test_renamed_key_is_named(tmp_path, key):
    _save_diffusers(tmp_path, SMALL)
    weights = load_file(tmp_path / WEIGHTS)
    weights[key.replace(".weight", ".wieght").replace(".bias", ".bais")] = weights.pop(key)
    save_file(weights, tmp_path / WEIGHTS)
    with pytest.raises(CheckpointError, match=f"missing key.*{key}"):
        ddpm_export.load_model(tmp_path)


def test_changed_shape_is_named(tmp_path):
    _save_diffusers(tmp_path, SMALL)
    weights = load_file(tmp_path / WEIGHTS)
    weights["up_blocks.1.attentions.0.to_k.weight"] = torch.zeros(32, 16)
    save_file(weights, tmp_path / WEIGHTS)
    with pytest.raises(CheckpointError, match=r"'up_blocks\.1\.attentions\.0\.to_k\.weight' has shape \(32, 16\)"):
        ddpm_export.load_model(tmp_path)


def test_a_config_key_given_twice_is_named(tmp_path):
    """json keeps the last of two keys silently: an edited value above the old one was ignored."""
    diffusers.UNet2DModel(**SMALL).save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    path.write_text(path.read_text().rstrip()[:-1] + ', "sample_size": 32}')
    with pytest.raises(ConfigError, match=r"config\.json: not valid JSON \(key 'sample_size' is given twice\)"):
        ddpm_export.load_model(tmp_path)


def test_extra_key_is_named(tmp_path):
    _save_diffusers(tmp_path, SMALL)
    weights = load_file(tmp_path / WEIGHTS)
    weights["down_blocks.1.attentions.0.to_q.weight"] = torch.zeros(64, 64)
    save_file(weights, tmp_path / WEIGHTS)
    with pytest.raises(CheckpointError, match=r"unexpected key.*'down_blocks\.1\.attentions\.0\.to_q\.weight'"):
        ddpm_export.load_model(tmp_path)


@pytest.mark.parametrize(("name", "match"), [
    ("config.json", r"config\.json: not a regular file"),  # 'has no config.json'
    ("diffusion.json", r"diffusion\.json: not a regular file"),  # skipped: the default schedule applied
    ("scheduler_config.json", r"scheduler_config\.json: not a readable .*Is a directory"),  # skipped likewise
])
def test_a_folder_in_place_of_a_config_file_is_named(tmp_path, name, match):
    """A folder where a model's config, its diffusion.json or its scheduler config belongs: the
    schedule files were skipped (exit 0 with the default schedule), config.json was 'missing'."""
    from ddpm_export.errors import BadInputError
    from ddpm_export.nn.checkpoint import diffusion_config_for
    from ddpm_export.presets import check_model_name

    diffusers.UNet2DModel(**SMALL).save_pretrained(tmp_path)
    if name == "config.json":
        (tmp_path / name).unlink()
    (tmp_path / name).mkdir()
    with pytest.raises(BadInputError, match=match):
        check_model_name(tmp_path)
        diffusion_config_for(tmp_path)
