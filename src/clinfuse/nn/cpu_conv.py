"""Work around PyTorch's CPU dispatch that sends small batch-1 3D convolutions to a slow kernel.

PyTorch (``ConvUtils.h``, ``use_mkldnn``) only picks oneDNN when ``N·C·D·H > 20480`` for batch 1;
the rule was tuned for 2D and ignores the last 3D axis, so e.g. a 16-channel 32×32×24 convolution
falls back to ``slow_conv3d``: measured 45 ms against 3.7 ms through oneDNN (docs/MODEL.md).
"""

from __future__ import annotations

import torch
from torch import nn


class OneDNNConv3d(nn.Conv3d):
    """``nn.Conv3d`` that calls oneDNN directly for float32 CPU tensors (same weights, same math).

    Anything else (CUDA, autocast, other dtypes, non-zero padding modes) uses ``nn.Conv3d``.
    """

    def _fast_ok(self, x: torch.Tensor) -> bool:
        return (
            x.device.type == "cpu"
            and x.dtype == torch.float32
            and self.weight.dtype == torch.float32
            and self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
            and not torch.is_autocast_enabled("cpu")
            and torch.backends.mkldnn.is_available()
            and torch.backends.mkldnn.enabled
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same result as ``nn.Conv3d.forward`` (to float32 rounding), autograd included."""
        if not self._fast_ok(x):
            return super().forward(x)
        return torch.mkldnn_convolution(
            x.contiguous(),
            self.weight,
            self.bias,
            self.padding,
            self.stride,
            self.dilation,
            self.groups,
        )


def use_onednn_conv3d(module: nn.Module) -> int:
    """Make every plain ``nn.Conv3d`` inside ``module`` an :class:`OneDNNConv3d`, in place.

    Only the class changes (parameters, state-dict keys and results stay the same); returns how
    many layers were switched.
    """
    n = 0
    for m in module.modules():
        if type(m) is nn.Conv3d:
            m.__class__ = OneDNNConv3d
            n += 1
    return n
