"""The precision policy, written into the model so that export records it in the graph.

``fp16`` is an explicitly typed mixed-precision network: convolutions, linears and activations
in float16; the time embedding (sinusoid or table, and its MLP), the class embedding, every
normalization's statistics, position codes, and attention's bias add and softmax in float32
(the q k^T product itself runs in float16, made safe by pre-scaling q and k by d^-1/4). The graph's
inputs and outputs stay float32; casts at the boundary are part of the graph.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ddpm_export.export.precision_policy import check_precision
from ddpm_export.nn.attention import RelativePositionBias, SinusoidalPosition2D
from ddpm_export.nn.embeddings import ClassEmbedding, TimeEmbedding
from ddpm_export.nn.layers import BatchNorm32, GroupNorm32
from ddpm_export.nn.unet import UNet

#: modules whose parameters stay float32 in an fp16 model (they compute in float32)
FP32_MODULES = (TimeEmbedding, ClassEmbedding, GroupNorm32, BatchNorm32, SinusoidalPosition2D, RelativePositionBias)


class GraphModule(nn.Module):
    """What is exported: float32 in, float32 out, the UNet computing in ``precision`` inside.

    ``forward(x_t [B, C, H, W] f32, t [B] i64, cond?) -> [B, C_out, H, W] f32``.
    """

    def __init__(self, unet: UNet, precision: str) -> None:
        super().__init__()
        check_precision(precision)
        self.unet = copy.deepcopy(unet).eval()
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        if precision == "fp16":
            keep = {id(sub) for m in self.unet.modules() if isinstance(m, FP32_MODULES) for sub in m.modules()}
            for module in self.unet.modules():
                if id(module) not in keep:  # converted one module at a time: fp32 weights never round-trip fp16
                    module._apply(lambda x: x.half() if x.is_floating_point() else x, recurse=False)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return self.unet(x_t.to(self.dtype), t, cond).float()
