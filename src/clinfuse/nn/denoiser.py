"""The UNet denoiser: timestep embedding + cross-attention to the encoder tokens (MONAI).

Algorithm 1 line 4: out = UNet(x_t, t, [c_M, c_C]); optionally with the conditioning images
concatenated to x_t (pixel-aligned conditioning).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import DiffusionModelUNet
from torch import nn


class Denoiser(nn.Module):
    """MONAI ``DiffusionModelUNet`` with conditioning, 2D or 3D.

    Args:
        spatial_dims: 2 or 3.
        channels: UNet widths per level; each level after the first halves the size, so inputs
            must be a multiple of ``2 ** (len(channels) - 1)`` per axis (see ``size_multiple``).
        attention_levels: which levels carry self- + cross-attention (at least one).
        num_res_blocks: residual blocks per level.
        num_head_channels: channels per attention head.
        token_dim: width of the context tokens (256).
        concat_conditioning: if True the input is ``[x_t, mri, ct, ct_bone]`` (4 channels).
        norm_num_groups: GroupNorm groups (must divide every width).
        flash_attention: use ``torch.nn.functional.scaled_dot_product_attention`` in MONAI's
            attention blocks (same math; halves the CPU time of self-attention at 1/4 resolution
            by never materialising the N×N score matrix).
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: Sequence[int] = (16, 32, 64),
        attention_levels: Sequence[bool] = (False, False, True),
        num_res_blocks: int = 1,
        num_head_channels: int = 16,
        token_dim: int = 256,
        concat_conditioning: bool = True,
        norm_num_groups: int = 8,
        flash_attention: bool = True,
    ) -> None:
        super().__init__()
        if len(attention_levels) != len(channels):
            raise ValueError(
                f"attention_levels {tuple(attention_levels)} must have one entry per level "
                f"of channels {tuple(channels)}"
            )
        if not any(attention_levels):
            raise ValueError("at least one attention level is needed for cross-attention")
        self.concat_conditioning = concat_conditioning
        self.size_multiple = 2 ** (len(channels) - 1)
        self.unet = DiffusionModelUNet(
            spatial_dims=spatial_dims,
            in_channels=4 if concat_conditioning else 1,
            out_channels=1,
            num_res_blocks=num_res_blocks,
            channels=tuple(channels),
            attention_levels=tuple(attention_levels),
            norm_num_groups=norm_num_groups,
            num_head_channels=num_head_channels,
            with_conditioning=True,
            transformer_num_layers=1,
            cross_attention_dim=token_dim,
            use_flash_attention=flash_attention,
        )

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, tokens: torch.Tensor
    ) -> torch.Tensor:
        """``x_t (B,1,*S)``, ``t (B,)`` long, ``cond (B,3,*S)``, ``tokens (B,N,D)`` → (B,1,*S)."""
        bad = [s for s in x_t.shape[2:] if s % self.size_multiple]
        if bad:
            raise ValueError(
                f"spatial size {tuple(x_t.shape[2:])} must be a multiple of {self.size_multiple} "
                "on every axis; pad the volume first (clinfuse.nn.model.pad_to_multiple)"
            )
        h = torch.cat([x_t, cond], dim=1) if self.concat_conditioning else x_t
        return self.unet(h, timesteps=t, context=tokens)
