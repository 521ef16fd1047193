"""ResNet-18-style MRI and CT encoders that turn a case into 256-d cross-attention tokens.

Algorithm 1 line 2: c_M = E_MRI(M), c_C = E_CT(C); computed once per case, not per step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from einops import rearrange
from monai.networks.nets import ResNet
from monai.networks.utils import replace_modules
from torch import nn

# "batch": the residual blocks as MONAI's ResNet builds them (BatchNorm; every shipped model up
# to session 7); "group": every norm of the backbone is a GroupNorm (`ModelConfig.encoder_norm`).
ENCODER_NORMS = ("batch", "group")


def _group_norm(bn: nn.modules.batchnorm._BatchNorm, num_groups: int) -> nn.GroupNorm:
    """A GroupNorm (affine) of `bn`'s width: `num_groups` groups, or fewer where that does not
    divide the width. Same parameter names as the BatchNorm, so a checkpoint of the BatchNorm
    encoder warm-starts this one (`training.loop.init_weights`)."""
    width = bn.num_features
    return nn.GroupNorm(math.gcd(num_groups, width), width, eps=bn.eps, affine=True)


class TokenEncoder(nn.Module):
    """ResNet-18 layout (BasicBlock, layers 2-2-2-2) → feature map pooled to a grid → tokens.

    Args:
        spatial_dims: 2 or 3.
        in_channels: 1 for MRI, 2 for CT (clinical + bone window).
        widths: the four stage widths (ResNet-18 uses 64-128-256-512; ours are small for CPU).
        token_dim: token width (256 in the proposal).
        grid: the last feature map is average-pooled to ``grid`` per axis, so the encoder emits
            ``grid ** spatial_dims`` tokens, each with a learned position embedding.
        norm_groups: GroupNorm groups of the stem (and of every block with ``block_norm``
            "group").
        block_norm: the residual blocks' norm. MONAI's `ResNet` (1.6) passes `norm` to its stem
            alone, so its blocks use BatchNorm (MONAI PR #9028): "batch" keeps them (every
            shipped model up to session 7: batches of 1-2 cases in training, running statistics
            at inference); "group" replaces each by a GroupNorm after construction (MONAI
            `replace_modules`), so an encoding no longer depends on the batch it was
            trained in or on running statistics (docs/TRAINING.md).

    Input ``(B, in_channels, *S)`` (any S ≥ 1; the stem downsamples by 4, each later stage by 2);
    output ``(B, grid ** spatial_dims, token_dim)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        widths: Sequence[int] = (16, 32, 64, 128),
        token_dim: int = 256,
        grid: int = 2,
        norm_groups: int = 8,
        block_norm: str = "batch",
    ) -> None:
        super().__init__()
        if block_norm not in ENCODER_NORMS:
            raise ValueError(f"block_norm must be one of {ENCODER_NORMS}, got {block_norm!r}")
        if len(widths) != 4:
            raise ValueError(f"widths must have 4 stages (ResNet-18 layout), got {widths}")
        self.spatial_dims = spatial_dims
        self.grid = grid
        self.backbone = ResNet(
            block="basic",
            layers=[2, 2, 2, 2],
            block_inplanes=list(widths),
            spatial_dims=spatial_dims,
            n_input_channels=in_channels,
            conv1_t_stride=2,  # stride 2 along every axis (MONAI's default keeps the first axis)
            feed_forward=False,
            norm=("group", {"num_groups": norm_groups}),
        )
        if block_norm == "group":
            batch_norms = [
                (name, m)
                for name, m in self.backbone.named_modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm)
            ]
            for name, bn in batch_norms:
                replace_modules(self.backbone, name, _group_norm(bn, norm_groups))
        pool = nn.AdaptiveAvgPool3d if spatial_dims == 3 else nn.AdaptiveAvgPool2d
        self.pool = pool(grid)
        n_tokens = grid**spatial_dims
        self.proj = nn.Linear(widths[-1], token_dim)
        self.pos = nn.Parameter(torch.zeros(1, n_tokens, token_dim))
        nn.init.normal_(self.pos, std=0.02)
        self.norm = nn.LayerNorm(token_dim)

    @property
    def num_tokens(self) -> int:
        """Tokens emitted per image."""
        return self.grid**self.spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, *S)`` → ``(B, grid**dims, token_dim)``."""
        b = self.backbone
        # MONAI's ResNet.forward ends in a global pool; we need the spatial feature map.
        h = b.act(b.bn1(b.conv1(x)))
        if not b.no_max_pool:
            h = b.maxpool(h)
        h = b.layer4(b.layer3(b.layer2(b.layer1(h))))
        h = self.pool(h)
        tokens = rearrange(h, "b c ... -> b (...) c")
        return self.norm(self.proj(tokens) + self.pos)


class ConditionEncoder(nn.Module):
    """The pair E_MRI, E_CT: ``cond (B, 3, *S) = [mri, ct_clinical, ct_bone]`` → ``(B, N, 256)``.

    N = 2·grid^dims (MRI tokens first, then CT tokens); a learned modality embedding is added so
    the denoiser's attention can tell the two token sets apart.
    """

    def __init__(
        self,
        spatial_dims: int,
        widths: Sequence[int] = (16, 32, 64, 128),
        token_dim: int = 256,
        grid: int = 2,
        norm_groups: int = 8,
        block_norm: str = "batch",
    ) -> None:
        super().__init__()
        args = (widths, token_dim, grid, norm_groups, block_norm)
        self.mri = TokenEncoder(spatial_dims, 1, *args)
        self.ct = TokenEncoder(spatial_dims, 2, *args)
        self.modality = nn.Parameter(torch.zeros(2, token_dim))

    @property
    def num_tokens(self) -> int:
        """Tokens per case (both modalities)."""
        return self.mri.num_tokens + self.ct.num_tokens

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        """``(B, 3, *S)`` → ``(B, N, token_dim)``."""
        if cond.shape[1] != 3:
            raise ValueError(f"cond must have 3 channels [mri, ct, ct_bone], got {cond.shape[1]}")
        # Always float32, also inside a bf16 autocast region: the last stage's norm sees
        # only a few values per channel (2³ voxels x 1-2 cases for a 48³ patch), and its
        # backward under bf16 returned inf/NaN or 1e12-1e17 gradient norms on most 3D training
        # steps (docs/TRAINING.md, session 7). The encoders run once per case, so this costs
        # nothing measurable.
        with torch.autocast(cond.device.type, enabled=False):
            cond = cond.float()
            c_m = self.mri(cond[:, :1]) + self.modality[0]
            c_c = self.ct(cond[:, 1:]) + self.modality[1]
            return torch.cat([c_m, c_c], dim=1)
