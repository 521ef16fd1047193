"""The lesion head: a small MONAI UNet segmenting the lesion from [x̂0, mri, ct, ct_bone].

Why x̂0 and not x_t: at sampling time the head runs once, at t = T/2 (Algorithm 1 line 7), on the
fused *estimate* of the clean image; x_t at T/2 is half noise. Training it on x̂0 (plus the
original images, which carry the lesion contrast) matches what it sees when sampling.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import UNet
from torch import nn


class LesionHead(nn.Module):
    """``(x0_hat (B,1,*S), cond (B,3,*S))`` → lesion logits ``(B,1,*S)``.

    Args:
        spatial_dims: 2 or 3.
        channels: UNet widths; sizes must be a multiple of ``2 ** (len(channels) - 1)``.
        num_res_units: residual units per level.
    """

    def __init__(
        self, spatial_dims: int, channels: Sequence[int] = (8, 16, 32), num_res_units: int = 1
    ) -> None:
        super().__init__()
        if len(channels) < 2:
            raise ValueError(f"lesion head needs at least 2 levels, got {tuple(channels)}")
        self.size_multiple = 2 ** (len(channels) - 1)
        self.unet = UNet(
            spatial_dims=spatial_dims,
            in_channels=4,
            out_channels=1,
            channels=tuple(channels),
            strides=(2,) * (len(channels) - 1),
            num_res_units=num_res_units,
            norm="instance",
        )

    def forward(self, x0_hat: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Logits (apply ``torch.sigmoid`` for the lesion probability)."""
        return self.unet(torch.cat([x0_hat, cond], dim=1))
