"""Import a diffusers ``UNet2DModel`` folder (``config.json`` + ``diffusion_pytorch_model.safetensors``).

diffusers itself is never imported (it is a test-only dependency): ``config.json`` is read as
JSON and mapped key by key to a :class:`UNetConfig`, and the weights are renamed to ours and
loaded strictly. Whatever the reference UNet does not reproduce exactly is refused with an error
that names the config key and its value; nothing is approximated.

Layout correspondence (diffusers -> ours)::

    time_proj.weight (learned)         time_embedding.table.weight
    time_embedding.linear_{1,2}        time_embedding.linear_{1,2}
    class_embedding                    class_embedding.table       (no null row: null_class=False)
    down_blocks.i / up_blocks.i        down.i / up.i               (up levels top-down, same order)
      resnets.j.{norm1,conv1,conv2}      resnets.j.{norm1,conv1,conv2}
      resnets.j.time_emb_proj            resnets.j.cond.proj
      resnets.j.norm2                    resnets.j.cond.norm
      resnets.j.conv_shortcut            resnets.j.skip
      attentions.j.group_norm            attentions.j.norm
      attentions.j.to_{q,k,v}            attentions.j.attn.to_{q,k,v}
      attentions.j.to_out.0              attentions.j.attn.to_out
      downsamplers.0.conv                resample.op
      upsamplers.0.conv                  resample.conv
    mid_block.resnets.{0,1}            mid_resnets.{0,1}
    mid_block.attentions.0             mid_attention
    conv_in / conv_norm_out / conv_out conv_in / norm_out / conv_out

Old diffusers attention names (``query``, ``key``, ``value``, ``proj_attn``) are read as
``to_q``, ``to_k``, ``to_v``, ``to_out.0``, as diffusers' own loader does.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import torch

from ddpm_export.config import ConfigError, UNetConfig
from ddpm_export.configbase import read_config_text
from ddpm_export.diffusion.config import DiffusionConfig
from ddpm_export.diffusion.from_diffusers import scheduler_timesteps
from ddpm_export.errors import CheckpointError
from ddpm_export.jsonio import parse_json
from ddpm_export.nn.unet import UNet
from ddpm_export.nn.weights import (build_model, check_state, load_state_strict, meta_model, read_safetensors,
                                    shapes)
from ddpm_export.presets import CONFIG_NAME, DIFFUSERS_WEIGHTS_NAME, DIFFUSION_NAME

__all__ = ["DIFFUSERS_DEFAULTS", "config_from_diffusers", "diffusers_key", "load_diffusers_unet",
           "our_key", "read_diffusers_config"]

#: ``UNet2DModel.__init__`` defaults (diffusers 0.42). A key missing from config.json takes its
#: default here, as it does in diffusers; tests check this table against the real signature.
DIFFUSERS_DEFAULTS: dict[str, Any] = {
    "sample_size": None,
    "in_channels": 3,
    "out_channels": 3,
    "center_input_sample": False,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "freq_shift": 0,
    "flip_sin_to_cos": True,
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    "mid_block_type": "UNetMidBlock2D",
    "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (224, 448, 672, 896),
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "downsample_padding": 1,
    "downsample_type": "conv",
    "upsample_type": "conv",
    "dropout": 0.0,
    "act_fn": "silu",
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "attn_norm_num_groups": None,
    "norm_eps": 1e-5,
    "resnet_time_scale_shift": "default",
    "add_attention": True,
    "class_embed_type": None,
    "num_class_embeds": None,
    "num_train_timesteps": None,
}

# Block types we reproduce -> whether the block has attention. diffusers strips a "UNetRes"
# prefix ("UNetResDownBlock2D" is "DownBlock2D"); so do we.
_DOWN_BLOCKS = {"DownBlock2D": False, "AttnDownBlock2D": True}
_UP_BLOCKS = {"UpBlock2D": False, "AttnUpBlock2D": True}
_TIME_EMBEDDING = {"positional": "sinusoidal", "learned": "learned"}
_TIME_CONDITIONING = {"default": "add", "scale_shift": "film"}
_DOWNSAMPLE_PADDING = {1: "symmetric", 0: "asymmetric"}  # 0: diffusers pads (0, 1, 0, 1), TF 'SAME'
_ACTIVATIONS = ("silu", "swish")                          # both are nn.SiLU in diffusers
_RESAMPLE_TYPES = ("conv", None)                          # None means "conv" in get_{down,up}_block


def _refuse(source: str, key: str, value: Any, why: str) -> ConfigError:
    return ConfigError(f"{source}: {key}={value!r} {why}")


def _choice(source: str, key: str, value: Any, choices: dict[Any, Any] | tuple[Any, ...]) -> Any:
    """``choices[value]`` (``value`` itself for a tuple of choices); refuses others, listing the choices."""
    known = isinstance(value, (str, int, float, type(None))) and value in choices
    if not known or isinstance(value, bool):  # True == 1 must not pass for downsample_padding
        listed = ", ".join(repr(ch) for ch in choices)
        raise _refuse(source, key, value, f"is not reproduced by ddpm-export; supported: {listed}")
    return choices[value] if isinstance(choices, dict) else value


def _block_types(source: str, key: str, types: Any, supported: dict[str, bool], levels: int) -> list[bool]:
    """Per level, whether the block has attention; refuses unknown types by name."""
    if not isinstance(types, (list, tuple)) or len(types) != levels:
        raise _refuse(source, key, types, f"must list one block type per entry of block_out_channels ({levels})")
    out = []
    for i, name in enumerate(types):
        base = name[len("UNetRes"):] if isinstance(name, str) and name.startswith("UNetRes") else name
        if not isinstance(base, str) or base not in supported:  # a list or object: not a name (nor hashable)
            raise _refuse(source, f"{key}[{i}]", name, "is not a block type ddpm-export reproduces; supported: "
                          + ", ".join(repr(s) for s in supported))
        out.append(supported[base])
    return out


def _sample_size(source: str, value: Any, levels: int) -> int:
    """diffusers' int or [H, W] -> our square size, a multiple of 2**(levels-1)."""
    size = value[0] if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == value[1] else value
    if not isinstance(size, int) or isinstance(size, bool):
        raise _refuse(source, "sample_size", value,
                      "must be one integer (square images); set the training image size in config.json")
    factor = 2 ** (levels - 1)
    if size < factor or size % factor:
        raise _refuse(source, "sample_size", value, f"must be a multiple of 2**(levels-1) = {factor}")
    return size


def _mid_attention_norm(source: str, c: dict[str, Any]) -> bool:
    """Whether the bottleneck attention has a GroupNorm.

    diffusers' ``UNetMidBlock2D`` gives it ``attn_norm_num_groups`` groups; when that is null,
    ``norm_num_groups`` groups for "default" and no norm at all for "scale_shift". Ours has
    ``num_groups`` groups or none, so other group counts are refused.
    """
    groups = c["attn_norm_num_groups"]
    if groups is None:
        return c["resnet_time_scale_shift"] == "default"
    if c["add_attention"] and (groups != c["norm_num_groups"] or isinstance(groups, bool)):
        raise _refuse(source, "attn_norm_num_groups", groups,
                      f"is not reproduced; ddpm-export's bottleneck attention norm has norm_num_groups "
                      f"({c['norm_num_groups']}) groups, so only null or {c['norm_num_groups']} are supported")
    return True


def _head_dim(source: str, value: Any, attended: list[int]) -> int | None:
    """diffusers: heads = channels // attention_head_dim in every attention block; null is one head."""
    if not attended or value is None:
        return None  # no attention anywhere: diffusers ignores the key
    if not isinstance(value, int) or isinstance(value, bool) or value < 1 or any(ch % value for ch in attended):
        raise _refuse(source, "attention_head_dim", value,
                      f"must divide the channels of every attention block {sorted(set(attended))}")
    return value


def config_from_diffusers(data: dict[str, Any], source: str = CONFIG_NAME) -> UNetConfig:
    """Map a diffusers ``UNet2DModel`` config (the parsed config.json) to a :class:`UNetConfig`.

    Raises :class:`ConfigError` naming the key and value of anything not reproduced exactly.
    """
    c = _with_defaults(data, source)
    _refuse_unreproduced(source, c)
    chans, down_attn = _levels(source, c)
    base = chans[0]
    size = _sample_size(source, c["sample_size"], len(chans))
    attention_resolutions = tuple(size // 2**i for i, attn in enumerate(down_attn) if attn)

    # --- time embedding and conditioning ---------------------------------------------------------
    time_embedding = _choice(source, "time_embedding_type", c["time_embedding_type"], _TIME_EMBEDDING)
    if c["time_embedding_dim"] not in (None, 0, 4 * base):  # diffusers: time_embedding_dim or 4 * C0
        raise _refuse(source, "time_embedding_dim", c["time_embedding_dim"],
                      f"is not reproduced; ddpm-export's embedding width is 4 * block_out_channels[0] = {4 * base}")
    steps = c["num_train_timesteps"]
    if time_embedding == "learned" and not isinstance(steps, int):
        raise _refuse(source, "num_train_timesteps", steps, "must be an integer for time_embedding_type='learned'")
    time_conditioning = _choice(source, "resnet_time_scale_shift", c["resnet_time_scale_shift"], _TIME_CONDITIONING)
    downsample_padding = _choice(source, "downsample_padding", c["downsample_padding"], _DOWNSAMPLE_PADDING)

    groups = c["norm_num_groups"]
    if not isinstance(groups, int) or isinstance(groups, bool):
        raise _refuse(source, "norm_num_groups", groups, "must be an integer")
    attended = [ch for ch, attn in zip(chans, down_attn) if attn] + ([chans[-1]] if c["add_attention"] else [])
    head_dim = _head_dim(source, c["attention_head_dim"], attended)

    num_classes = c["num_class_embeds"]
    fields = dict(
        in_channels=c["in_channels"], out_channels=c["out_channels"], sample_size=size,
        base_channels=base, channel_mult=tuple(ch // base for ch in chans),
        num_res_blocks=c["layers_per_block"], attention_resolutions=attention_resolutions,
        mid_attention=c["add_attention"], mid_attention_norm=_mid_attention_norm(source, c),
        dropout=c["dropout"],
        downsample="conv", downsample_padding=downsample_padding,
        norm="group", num_groups=groups, norm_eps=c["norm_eps"],
        time_embedding=time_embedding, flip_sin_to_cos=c["flip_sin_to_cos"], freq_shift=c["freq_shift"],
        time_conditioning=time_conditioning, block_order="pre",
        num_heads=1, head_dim=head_dim,
        num_classes=num_classes, class_conditioning="embedding", null_class=False,  # diffusers has no null row
    )
    if isinstance(steps, int) and not isinstance(steps, bool):
        fields["num_train_timesteps"] = steps
    try:
        return UNetConfig(**fields)
    except ConfigError as e:
        field = re.match(r"\w*", str(e)).group()
        where = f" ({field} is diffusers' {_DIFFUSERS_KEYS[field]})" if field in _DIFFUSERS_KEYS else ""
        raise ConfigError(f"{source}: the UNetConfig this maps to is invalid{where}: {e}") from e


#: our UNetConfig field -> the config.json key it comes from, where the names differ
_DIFFUSERS_KEYS = {"base_channels": "block_out_channels[0]", "channel_mult": "block_out_channels",
                   "num_res_blocks": "layers_per_block", "mid_attention": "add_attention",
                   "num_classes": "num_class_embeds", "num_groups": "norm_num_groups",
                   "head_dim": "attention_head_dim", "time_conditioning": "resnet_time_scale_shift"}


def _with_defaults(data: Any, source: str) -> dict[str, Any]:
    """config.json over :data:`DIFFUSERS_DEFAULTS`; refuses other classes and unknown keys."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a JSON object, got {type(data).__name__}")
    class_name = data.get("_class_name", "UNet2DModel")
    if class_name != "UNet2DModel":
        raise _refuse(source, "_class_name", class_name, "is not supported; only diffusers 'UNet2DModel' is")
    unknown = sorted(k for k in data if not k.startswith("_") and k not in DIFFUSERS_DEFAULTS)
    if unknown:
        raise ConfigError(f"{source}: unknown UNet2DModel key(s) {', '.join(unknown)}; ddpm-export cannot "
                          f"tell whether they change the network (known keys: {', '.join(DIFFUSERS_DEFAULTS)})")
    return {**DIFFUSERS_DEFAULTS, **{k: v for k, v in data.items() if not k.startswith("_")}}


def _refuse_unreproduced(source: str, c: dict[str, Any]) -> None:
    """Refuse switches whose other values we do not reproduce."""
    for key, fixed in (("center_input_sample", False), ("class_embed_type", None), ("mid_block_scale_factor", 1)):
        if c[key] != fixed or isinstance(c[key], bool) != isinstance(fixed, bool):
            raise _refuse(source, key, c[key], f"is not reproduced by ddpm-export; only {fixed!r} is supported")
    _choice(source, "act_fn", c["act_fn"], _ACTIVATIONS)
    if c["mid_block_type"] != "UNetMidBlock2D":
        raise _refuse(source, "mid_block_type", c["mid_block_type"],
                      "is not supported; ddpm-export always has the 'UNetMidBlock2D' bottleneck")


def _levels(source: str, c: dict[str, Any]) -> tuple[list[int], list[bool]]:
    """``block_out_channels`` and, per level, whether it has attention (down and up must mirror)."""
    chans = c["block_out_channels"]
    if (not isinstance(chans, (list, tuple)) or not chans
            or not all(isinstance(ch, int) and not isinstance(ch, bool) and ch >= 1 for ch in chans)):
        raise _refuse(source, "block_out_channels", chans, "must be a non-empty list of positive integers")
    base = chans[0]
    if any(ch % base for ch in chans):
        raise _refuse(source, "block_out_channels", chans,
                      f"must all be multiples of the first entry ({base}): ddpm-export's levels are "
                      "base_channels * channel_mult[i] with integer multipliers")
    levels = len(chans)
    down_attn = _block_types(source, "down_block_types", c["down_block_types"], _DOWN_BLOCKS, levels)
    up_attn = _block_types(source, "up_block_types", c["up_block_types"], _UP_BLOCKS, levels)
    if down_attn != up_attn[::-1]:
        raise ConfigError(
            f"{source}: down_block_types={list(c['down_block_types'])} and up_block_types="
            f"{list(c['up_block_types'])} place attention at different levels; ddpm-export needs up_block_types "
            "to mirror down_block_types (up_block_types[i] has attention iff down_block_types[-1 - i] has)")
    # diffusers uses down/upsample_type only in Attn blocks that resample (not the last level).
    if any(down_attn[:-1]):
        _choice(source, "downsample_type", c["downsample_type"], _RESAMPLE_TYPES)
    if any(up_attn[:-1]):
        _choice(source, "upsample_type", c["upsample_type"], _RESAMPLE_TYPES)
    return list(chans), down_attn


def read_diffusers_config(path: str | Path) -> UNetConfig:
    """Parse a diffusers config.json and map it with :func:`config_from_diffusers`. A positional
    model's config leaves ``num_train_timesteps`` null (diffusers writes it so): its T is then that
    of the schedule it is sampled with (``DDPMPipeline`` samples a T=4000 scheduler with such a
    UNet), as :func:`ddpm_export.nn.checkpoint.schedule_file` picks it: the folder's
    ``diffusion.json``, else the scheduler's beside it; 1000 without either."""
    path = Path(path)
    try:
        data = parse_json(read_config_text(path))
    except ValueError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from e
    if isinstance(data, dict) and data.get("num_train_timesteps") is None \
            and data.get("time_embedding_type", "positional") == "positional":
        T = _schedule_timesteps(path.parent)
        if T is not None:
            data = {**data, "num_train_timesteps": T}
    return config_from_diffusers(data, source=str(path))


def _schedule_timesteps(folder: Path) -> int | None:
    """``num_train_timesteps`` of the folder's ``diffusion.json`` (1000 when it leaves it out), else
    of its scheduler config; None without either, or when the one found is malformed (the schedule
    is read, and refused by name, where the model's schedule is read)."""
    own = folder / DIFFUSION_NAME
    if not own.is_file():
        return scheduler_timesteps(folder)
    try:
        return DiffusionConfig.load(own).num_train_timesteps
    except ConfigError:
        return None


# --- state dict keys ------------------------------------------------------------------------------

_RESNET = {"norm1": "norm1", "conv1": "conv1", "time_emb_proj": "cond.proj", "norm2": "cond.norm",
           "conv2": "conv2", "conv_shortcut": "skip"}
_ATTENTION = {"group_norm": "norm", "to_q": "attn.to_q", "to_k": "attn.to_k", "to_v": "attn.to_v",
              "to_out.0": "attn.to_out"}
_LEGACY_ATTENTION = {"query": "attn.to_q", "key": "attn.to_k", "value": "attn.to_v", "proj_attn": "attn.to_out"}
_TOP = {"time_proj": "time_embedding.table", "time_embedding.linear_1": "time_embedding.linear_1",
        "time_embedding.linear_2": "time_embedding.linear_2", "class_embedding": "class_embedding.table",
        "conv_in": "conv_in", "conv_norm_out": "norm_out", "conv_out": "conv_out"}


@dataclasses.dataclass(frozen=True)
class _Rule:
    """Modules under one diffusers path and the matching path of ours; ``{i}``/``{j}`` are indices."""

    theirs: str
    ours: str
    leaves: dict[str, str]              # diffusers leaf module -> ours
    legacy: dict[str, str] = dataclasses.field(default_factory=dict)  # read-only old diffusers names

    def match(self, key: str, *, to_ours: bool) -> str | None:
        src, dst = (self.theirs, self.ours) if to_ours else (self.ours, self.theirs)
        table = {**self.leaves, **self.legacy} if to_ours else {v: k for k, v in self.leaves.items()}
        head = re.escape(src).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{j\}", r"(?P<j>\d+)")
        leaf = "|".join(re.escape(n) for n in sorted(table, key=len, reverse=True))
        m = re.fullmatch((head + r"\." if src else "") + rf"(?P<leaf>{leaf})\.(?P<param>[^.]+)", key)
        if m is None:
            return None
        prefix = dst.format(**{k: v for k, v in m.groupdict().items() if k in ("i", "j")})
        return ".".join(p for p in (prefix, table[m["leaf"]], m["param"]) if p)


_RULES = (
    _Rule("", "", _TOP),
    _Rule("down_blocks.{i}.resnets.{j}", "down.{i}.resnets.{j}", _RESNET),
    _Rule("down_blocks.{i}.attentions.{j}", "down.{i}.attentions.{j}", _ATTENTION, _LEGACY_ATTENTION),
    _Rule("down_blocks.{i}.downsamplers.0", "down.{i}.resample", {"conv": "op"}),
    _Rule("mid_block.resnets.{j}", "mid_resnets.{j}", _RESNET),
    _Rule("mid_block.attentions.0", "mid_attention", _ATTENTION, _LEGACY_ATTENTION),
    _Rule("up_blocks.{i}.resnets.{j}", "up.{i}.resnets.{j}", _RESNET),
    _Rule("up_blocks.{i}.attentions.{j}", "up.{i}.attentions.{j}", _ATTENTION, _LEGACY_ATTENTION),
    _Rule("up_blocks.{i}.upsamplers.0", "up.{i}.resample", {"conv": "conv"}),
)


def our_key(key: str) -> str | None:
    """A diffusers ``UNet2DModel`` state-dict key -> ours, or None when it has no counterpart."""
    return next((k for k in (r.match(key, to_ours=True) for r in _RULES) if k is not None), None)


def diffusers_key(key: str) -> str | None:
    """One of our state-dict keys -> the current diffusers name, or None when it has no counterpart."""
    return next((k for k in (r.match(key, to_ours=False) for r in _RULES) if k is not None), None)


def _rename(model: UNet, weights: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """diffusers-named weights -> ours; missing, unexpected and mis-shaped keys are refused by
    their diffusers names (the file's own names where it has them)."""
    expected = model.state_dict()
    renamed: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    unexpected = []
    for key, value in weights.items():
        ours = our_key(key)
        if ours is None or ours not in expected:
            unexpected.append(key)
        elif ours in renamed:
            raise CheckpointError(f"{source}: keys {origin[ours]!r} and {key!r} both hold {ours!r}")
        else:
            renamed[ours], origin[ours] = value, key
    theirs = {origin.get(k) or diffusers_key(k) or k: shape for k, shape in shapes(expected).items()}
    given = {**{origin[k]: tuple(v.shape) for k, v in renamed.items()}, **shapes({k: weights[k] for k in unexpected})}
    check_state(theirs, given, source, "config.json")
    return renamed


def _shard_names(index: Path) -> list[str]:
    """The file names a shard index's ``weight_map`` lists (each once)."""
    try:
        shards = set(parse_json(index.read_text(encoding="utf-8"))["weight_map"].values())
        bad = [shard for shard in shards  # a file beside the index: no folder part, nothing outside the folder
               if not isinstance(shard, str) or shard in ("", ".", "..") or Path(shard).name != shard]
        if bad:
            raise TypeError(f"weight_map names a shard {bad[0]!r}")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{index}: not a safetensors shard index ({e})") from e
    return sorted(shards)


def _read_weights(folder: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The folder's safetensors weights (one file, or shards listed by an index) and their name."""
    single = folder / DIFFUSERS_WEIGHTS_NAME
    if single.exists():  # a folder in its place: read_safetensors says so
        return read_safetensors(single), str(single)
    index = folder / f"{DIFFUSERS_WEIGHTS_NAME}.index.json"
    if index.is_file():
        shards = _shard_names(index)
        weights: dict[str, torch.Tensor] = {}
        where: dict[str, str] = {}
        for shard in shards:
            part = read_safetensors(folder / shard)
            twice = sorted(part.keys() & weights.keys())
            if twice:  # which copy diffusers would load is the index's business, not a guess of ours
                raise CheckpointError(f"{index}: {twice[0]!r} is stored in both {where[twice[0]]} and {shard}")
            weights.update(part)
            where.update(dict.fromkeys(part, shard))
        return weights, str(index)
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
    if pickled:
        raise CheckpointError(
            f"{folder} holds {', '.join(pickled)} but no {DIFFUSERS_WEIGHTS_NAME}: ddpm-export reads safetensors "
            "only and never unpickles weights. Convert the folder where you trust the file, e.g. "
            "UNet2DModel.from_pretrained(folder).save_pretrained(folder, safe_serialization=True)")
    found = sorted(p.name for p in folder.glob("*.safetensors"))
    raise CheckpointError(f"{folder} has no {DIFFUSERS_WEIGHTS_NAME}"
                          + (f" (found {', '.join(found)})" if found else ""))


def load_diffusers_unet(folder: str | Path) -> UNet:
    """A diffusers ``UNet2DModel`` folder -> our UNet (eval mode) computing the same function.

    ``forward(x, t, cond)`` equals diffusers' ``model(x, t, class_labels=cond).sample``.
    """
    folder = Path(folder)
    cfg = read_diffusers_config(folder / CONFIG_NAME)
    weights, source = _read_weights(folder)
    renamed = _rename(meta_model(cfg), weights, source)  # refused before the model takes memory
    model = build_model(cfg)
    load_state_strict(model, renamed, source)
    return model.eval()
