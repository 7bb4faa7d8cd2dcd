"""UNetConfig: every design choice of the reference U-Net as a validated switch (torch-free).

Defaults follow diffusers' ``UNet2DModel`` where it has the switch (``[cos, sin]`` embedding,
additive time conditioning, symmetric downsampling padding); the ``ddpm-cifar10`` preset in
``models/`` reproduces Ho et al. 2020's CIFAR-10 network.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from ddpm_export.configbase import ConfigError, FrozenConfig, check
from ddpm_export.diffusion.config import MAX_TRAIN_TIMESTEPS

NormType = Literal["group", "batch", "layer"]
TimeEmbeddingType = Literal["sinusoidal", "learned", "hybrid"]
TimeConditioning = Literal["add", "concat", "film", "adain", "attention"]
BlockOrder = Literal["pre", "post"]
Downsample = Literal["conv", "avgpool"]
DownsamplePadding = Literal["symmetric", "asymmetric"]
PositionalEncoding = Literal["none", "sinusoidal_2d", "relative_bias"]
ClassConditioning = Literal["embedding", "cross_attention"]

__all__ = ["MAX_RES_BLOCKS", "MAX_SIZE", "UNetConfig", "ConfigError"]

#: the largest channel count, image side, class count, kernel size or dilation a config may give:
#: far past any U-Net's, and a size torch can take (a config.json's 10**100 channels was a
#: TypeError traceback from torch, exit 1); a model too big for memory is then refused as such
MAX_SIZE = 65536
#: residual blocks per level (a config.json's 10**7 hung while the model was built)
MAX_RES_BLOCKS = 100


@dataclasses.dataclass(frozen=True)
class UNetConfig(FrozenConfig):
    """The reference U-Net's architecture. Channels at level i are ``base_channels * channel_mult[i]``."""

    version: int = 1
    # --- input / output --------------------------------------------------------------------
    in_channels: int = 3
    out_channels: int = 3
    sample_size: int = 32                       # H = W of the training images
    # --- levels ----------------------------------------------------------------------------
    base_channels: int = 128                    # C0
    channel_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2                     # per level on the way down (+1 on the way up)
    attention_resolutions: tuple[int, ...] = (16,)  # feature-map sizes that get attention
    mid_attention: bool = True                  # attention between the two bottleneck blocks
    mid_attention_norm: bool = True             # False reproduces diffusers' scale_shift models, whose
                                                # bottleneck attention has no norm
    dropout: float = 0.0
    downsample: Downsample = "conv"             # stride-2 conv or 2x2 average pooling
    downsample_padding: DownsamplePadding = "symmetric"  # conv: pad 1 all round, or TF 'SAME' (0,1)
    # --- normalization ---------------------------------------------------------------------
    norm: NormType = "group"
    num_groups: int = 32
    norm_eps: float = 1e-5
    # --- timestep embedding ----------------------------------------------------------------
    time_embedding: TimeEmbeddingType = "sinusoidal"
    flip_sin_to_cos: bool = True                # True: [cos, sin] (OpenAI, diffusers); False: [sin, cos] (DDPM)
    freq_shift: float = 0.0                     # 0 (OpenAI, diffusers) or 1 (DDPM)
    max_period: float = 10000.0
    num_train_timesteps: int = 1000             # rows of the learned table; valid t is [0, T)
    # --- residual blocks -------------------------------------------------------------------
    time_conditioning: TimeConditioning = "add"
    block_order: BlockOrder = "pre"             # pre-activation (norm-act-conv) or post (conv-norm-act)
    kernel_size: int = 3
    separable: bool = False                     # depthwise k x k followed by pointwise 1 x 1
    dilation: int = 1
    squeeze_excitation: bool = False            # SE channel attention at the end of each block
    aspp_rates: tuple[int, ...] = ()            # dilation rates of an ASPP block at the bottleneck; () = none
    # --- attention -------------------------------------------------------------------------
    num_heads: int = 1
    head_dim: int | None = None                 # when set, heads = channels // head_dim
    positional_encoding: PositionalEncoding = "none"
    # --- conditioning ----------------------------------------------------------------------
    num_classes: int | None = None              # class-conditional when set
    class_conditioning: ClassConditioning = "embedding"  # added to the time embedding, or a cross-attention token
    null_class: bool = True                     # an extra row (id = num_classes) for classifier-free guidance
    context_dim: int | None = None              # cross-attention to an external context [B, L, context_dim]
    # --- initialisation --------------------------------------------------------------------
    zero_init: bool = True                      # zero the last layer of every residual / attention branch

    def validate(self) -> None:
        for name in ("in_channels", "out_channels", "sample_size", "base_channels", "num_groups",
                     "num_train_timesteps", "num_heads"):
            check(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        self._validate_sizes()
        check(self.num_res_blocks >= 1, "num_res_blocks", f"must be >= 1, got {self.num_res_blocks}")
        check(len(self.channel_mult) >= 1, "channel_mult", "needs at least one level")
        check(all(m >= 1 for m in self.channel_mult), "channel_mult", f"entries must be >= 1, got {self.channel_mult}")
        check(max(self.level_channels) <= MAX_SIZE, "channel_mult",
              f"every level's channels (base_channels * channel_mult) must be <= {MAX_SIZE}, got "
              f"{self.base_channels} * {max(self.channel_mult)}")
        factor = 2 ** (len(self.channel_mult) - 1)
        check(self.sample_size % factor == 0, "sample_size",
              f"{self.sample_size} must be divisible by 2**(levels-1) = {factor} for {len(self.channel_mult)} levels")
        sizes = self.resolutions
        for r in self.attention_resolutions:
            check(r in sizes, "attention_resolutions",
                  f"{r} is not a feature-map size of this network; sizes are {list(sizes)}")
        check(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        check(self.norm_eps > 0, "norm_eps", f"must be > 0, got {self.norm_eps}")
        check(self.max_period > 1, "max_period", f"must be > 1, got {self.max_period}")
        if self.time_embedding != "learned":
            half = (4 * self.base_channels if self.time_embedding == "hybrid" else self.base_channels) // 2
            check(self.freq_shift < half, "freq_shift",
                  f"{self.freq_shift} must be < half the sinusoid width ({half}), else the frequencies divide by <= 0")
        check(self.kernel_size >= 1 and self.kernel_size % 2 == 1, "kernel_size",
              f"must be a positive odd number, got {self.kernel_size}")
        check(self.dilation >= 1, "dilation", f"must be >= 1, got {self.dilation}")
        check(all(r >= 1 for r in self.aspp_rates), "aspp_rates", f"rates must be >= 1, got {self.aspp_rates}")
        self._validate_norms()
        check(self.head_dim is None or self.num_heads == 1, "num_heads",
              f"set num_heads or head_dim, not both (got num_heads={self.num_heads}, head_dim={self.head_dim})")
        check(self.head_dim is None or self.head_dim >= 1, "head_dim", f"must be >= 1, got {self.head_dim}")
        attended = [c for _, c in self._attention_blocks()]
        # every residual block holds attention when the time conditioning is attention
        attended = list(self.level_channels) if self.time_conditioning == "attention" else attended
        for c in attended:
            if self.head_dim is not None:
                check(c % self.head_dim == 0, "head_dim",
                      f"{self.head_dim} must divide the channels of every attention block {attended}")
            else:
                check(c % self.num_heads == 0, "num_heads",
                      f"{self.num_heads} must divide the channels of every attention block {attended}")
        has_attention = bool(self.attention_resolutions) or self.mid_attention
        if self.num_classes is not None:
            check(self.num_classes >= 1, "num_classes", f"must be >= 1, got {self.num_classes}")
            check(self.context_dim is None, "context_dim",
                  "a model is conditioned on class ids (num_classes) or on a context tensor, not both")
            if self.class_conditioning == "cross_attention":
                check(has_attention, "class_conditioning",
                      "'cross_attention' needs attention somewhere (attention_resolutions or mid_attention)")
        if self.context_dim is not None:
            check(self.context_dim >= 1, "context_dim", f"must be >= 1, got {self.context_dim}")
            check(has_attention, "context_dim",
                  "cross-attention to a context needs attention somewhere (attention_resolutions or mid_attention)")
        if self.positional_encoding == "sinusoidal_2d":
            for where, c in self._attention_blocks():  # the blocks that hold a SinusoidalPosition2D
                check(c % 4 == 0, "positional_encoding",
                      f"'sinusoidal_2d' needs the channels of every attention block divisible by 4; "
                      f"{where} has {c}")

    def _validate_sizes(self) -> None:
        """Sizes torch can build (see :data:`MAX_SIZE`), checked before any is computed with; the
        number of levels before ``2 ** (levels - 1)`` is (15000 levels: a ValueError traceback
        printing it)."""
        for name in ("in_channels", "out_channels", "sample_size", "base_channels", "kernel_size", "dilation",
                     "num_classes", "context_dim", "head_dim"):
            value = getattr(self, name)
            check(value is None or value <= MAX_SIZE, name, f"must be <= {MAX_SIZE}, got {value}")
        check(all(r <= MAX_SIZE for r in self.aspp_rates), "aspp_rates", f"rates must be <= {MAX_SIZE}")
        check(self.num_res_blocks <= MAX_RES_BLOCKS, "num_res_blocks",
              f"must be <= {MAX_RES_BLOCKS}, got {self.num_res_blocks}")
        check(self.num_train_timesteps <= MAX_TRAIN_TIMESTEPS, "num_train_timesteps",
              f"must be <= {MAX_TRAIN_TIMESTEPS}, got {self.num_train_timesteps}")
        levels = len(self.channel_mult)
        check(levels <= MAX_SIZE.bit_length(), "channel_mult",
              f"{levels} levels halve the image {levels - 1} times; sample_size <= {MAX_SIZE} allows at most "
              f"{MAX_SIZE.bit_length() - 1}")

    def _attention_blocks(self) -> list[tuple[str, int]]:
        """(where, channels) of each attention block, placed as ``nn.unet.UNet`` places them: the
        levels whose size is in ``attention_resolutions``, and the middle block if ``mid_attention``."""
        blocks = [(f"level {i} ({r}x{r})", c) for i, (c, r) in enumerate(zip(self.level_channels, self.resolutions))
                  if r in self.attention_resolutions]
        return blocks + ([("the middle block", self.level_channels[-1])] if self.mid_attention else [])

    def _validate_norms(self) -> None:
        """Groups that divide every level's channels; and at a 1x1 last level (and bottleneck), no
        norm over single values: AdaIN's instance norm and a group of one channel output 0 for
        every input (export crashed at batch 1)."""
        if self.norm == "group":  # AdaIN's instance norm has groups == channels; batch/layer read no groups
            for c in self.level_channels:
                check(c % self.num_groups == 0, "num_groups",
                      f"{self.num_groups} must divide every level's channels {list(self.level_channels)}")
        if self.resolutions[-1] != 1:
            return
        c = min(self.level_channels[-2:])  # the last level's first block normalizes the level above's channels
        check(self.time_conditioning != "adain", "time_conditioning",
              f"'adain' normalizes each channel over the feature map, and the last level is 1x1 "
              f"(sample_size {self.sample_size}, {len(self.channel_mult)} levels): every feature would be 0; "
              f"use fewer levels or a larger sample_size")
        per_group = {"group": c // self.num_groups, "layer": c, "batch": 2}[self.norm]
        check(per_group > 1, "num_groups",
              f"the last level is 1x1, so each of its {self.norm} norm groups holds {per_group} value(s); "
              f"a group needs more than one (fewer groups, or fewer levels)")

    # --- derived quantities --------------------------------------------------------------
    @property
    def level_channels(self) -> tuple[int, ...]:
        """C_i = C0 * mult_i, one per level."""
        return tuple(self.base_channels * m for m in self.channel_mult)

    @property
    def resolutions(self) -> tuple[int, ...]:
        """Feature-map size at each level: sample_size / 2**i."""
        return tuple(self.sample_size // 2**i for i in range(len(self.channel_mult)))

    @property
    def time_embed_dim(self) -> int:
        """Width of the sinusoid / learned table (C0); the MLP maps it to 4 * C0."""
        return self.base_channels

    @property
    def cond_kind(self) -> Literal["none", "class", "context"]:
        if self.num_classes is not None:
            return "class"
        if self.context_dim is not None:
            return "context"
        return "none"

    @property
    def num_class_rows(self) -> int:
        """Rows of the class table: num_classes, plus one null class when ``null_class``."""
        assert self.num_classes is not None
        return self.num_classes + int(self.null_class)

    def heads_for(self, channels: int) -> int:
        return channels // self.head_dim if self.head_dim is not None else self.num_heads

