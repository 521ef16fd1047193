"""The lesion head: a small MONAI UNet segmenting the lesion from a fused image.

What it reads (``inputs``):

- ``"fused"`` (the shipped model since session 2): the fused image / x̂0 only. Its prediction
  then says how visible the lesion is in *that* image, so the same head scores every fused
  image of the benchmark (ours and each baseline) and the guidance gradient of the lesion term
  flows entirely through the image being guided.
- ``"fused+sources"`` (session 1): x̂0 plus [mri, ct, ct_bone]. The sources carry the lesion
  contrast by themselves, so the prediction barely depends on the fused image; kept so older
  checkpoints still load.

Why x̂0 and not x_t: at sampling time the head runs on the fused *estimate* of the clean image
(Algorithm 1 line 7 at t = T/2, and the lesion term from T/2 on); x_t at T/2 is half noise. It is
trained on x̂0 of the frozen denoiser at t <= T/2 and on clean fused images
(`clinfuse.training.lesion`), which is what it sees when sampling and when evaluating.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import UNet
from torch import nn

LESION_INPUTS = ("fused", "fused+sources")


class LesionHead(nn.Module):
    """``(x0_hat (B,1,*S), cond (B,3,*S))`` → lesion logits ``(B,1,*S)``.

    Args:
        spatial_dims: 2 or 3.
        channels: UNet widths; sizes must be a multiple of ``2 ** (len(channels) - 1)``.
        num_res_units: residual units per level.
        inputs: ``"fused"`` (``cond`` is ignored) or ``"fused+sources"``.
        norm: ``"instance"`` or ``"batch"`` (see ``ModelConfig.lesion_norm``).
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: Sequence[int] = (8, 16, 32),
        num_res_units: int = 1,
        inputs: str = "fused+sources",
        norm: str = "instance",
    ) -> None:
        super().__init__()
        if len(channels) < 2:
            raise ValueError(f"lesion head needs at least 2 levels, got {tuple(channels)}")
        if inputs not in LESION_INPUTS:
            raise ValueError(f"inputs must be one of {LESION_INPUTS}, got {inputs!r}")
        self.inputs = inputs
        self.size_multiple = 2 ** (len(channels) - 1)
        self.unet = UNet(
            spatial_dims=spatial_dims,
            in_channels=1 if inputs == "fused" else 4,
            out_channels=1,
            channels=tuple(channels),
            strides=(2,) * (len(channels) - 1),
            num_res_units=num_res_units,
            norm=norm,
        )

    def forward(self, x0_hat: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (apply ``torch.sigmoid`` for the lesion probability)."""
        if self.inputs == "fused":
            return self.unet(x0_hat)
        if cond is None:
            raise ValueError("this lesion head reads the sources too: pass cond")
        return self.unet(torch.cat([x0_hat, cond], dim=1))
