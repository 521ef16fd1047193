"""Whole volumes larger than the training patch: overlapping windows blended at every step.

Owns `SlidingWindowModel` (a drop-in for `FusionModel` in `guidance.guided_sample`: the same
`encode` / call / `lesion_head` interface) and `padded_shape` / `pad_case_tensors`, which pad a
case once to a grid the windows tile and the network accepts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference


def padded_shape(
    shape: Sequence[int], multiple: int, patch: Sequence[int] | None = None
) -> tuple[int, ...]:
    """Smallest grid >= `shape` whose axes are multiples of `multiple` and >= the patch.

    Each axis must be at least the patch so every window lies inside the volume (MONAI would
    otherwise pad with a constant, and 0 is mid-grey, not air, in the model range).
    """
    out = []
    for i, s in enumerate(shape):
        s2 = int(math.ceil(s / multiple) * multiple)
        if patch is not None:
            s2 = max(s2, int(patch[i]))
        out.append(s2)
    return tuple(out)


def pad_to(x: torch.Tensor, shape: Sequence[int], mode: str = "replicate") -> torch.Tensor:
    """Pad the spatial axes of `(B, C, *S)` at the high end to `shape` (crop back: `x[..., :s]`).

    Replicate for images (the border of a head volume is air, so the pad is air); pass
    `mode="constant"` for masks (pads False / 0).
    """
    extra = [int(t) - int(s) for s, t in zip(x.shape[2:], shape, strict=True)]
    if any(e < 0 for e in extra):
        raise ValueError(f"cannot pad {tuple(x.shape[2:])} down to {tuple(shape)}")
    if not any(extra):
        return x
    pad: list[int] = []
    for e in reversed(extra):  # F.pad lists the last axis first
        pad += [0, e]
    if mode == "constant":
        return F.pad(x, pad, mode="constant", value=0)
    return F.pad(x.float() if not x.is_floating_point() else x, pad, mode=mode)


class SlidingWindowModel:
    """Wrap a `FusionModel` so every denoiser / lesion-head call runs on overlapping patches.

    Windows of `patch_size` (the training patch: the tokens and the attention were trained at
    that size) overlap by `overlap`; their outputs are blended with MONAI's Gaussian importance
    map, so each voxel's prediction is a smooth mix of the windows around it and no window
    border shows (measured in tests/diffusion/test_sliding.py). The blending happens at every
    denoising step, so the sampler only ever sees one coherent whole-volume x̂0.

    Tokens: each window is encoded from its own conditioning patch, as in training; the tokens
    of every window position are computed on first use and cached (the conditioning never
    changes during sampling), so the encoders still run once per window per case.

    Inputs must be at least the patch along every axis (see `padded_shape`). A volume that is
    exactly one patch runs the model directly. The lesion head runs on the whole volume unless
    `lesion_windows` (it has no tokens; see `lesion_head`).
    """

    def __init__(
        self,
        model: Any,
        patch_size: Sequence[int],
        *,
        overlap: float = 0.5,
        sw_batch_size: int = 4,
        blend: str = "gaussian",
        lesion_windows: bool = False,
    ) -> None:
        self.model = model
        self.config = getattr(model, "config", None)
        self.patch = tuple(int(p) for p in patch_size)
        multiple = int(getattr(model, "size_multiple", 1))
        if any(p % multiple for p in self.patch):
            raise ValueError(f"patch {self.patch} must be a multiple of {multiple}")
        self.size_multiple = multiple
        self.overlap = float(overlap)
        self.sw_batch_size = int(sw_batch_size)
        self.blend = blend
        self.lesion_windows = bool(lesion_windows)
        self._tokens: dict[tuple[int, ...], torch.Tensor] = {}
        self._cond_id: int | None = None

    # -- the FusionModel interface ---------------------------------------------------------
    def encode(self, cond: torch.Tensor) -> torch.Tensor:
        """Start a new case: forget cached tokens. Returns `cond` (tokens are per window)."""
        self._tokens = {}
        self._cond_id = id(cond)
        return cond

    def __call__(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, tokens: Any = None
    ) -> torch.Tensor:
        """Denoiser output over the whole volume, `(B, 1, *S)`, blended from windows."""
        self._check(x_t)
        t0 = int(torch.as_tensor(t).reshape(-1)[0])  # one timestep per call in the sampler
        if tuple(x_t.shape[2:]) == self.patch:
            return self.model(x_t, t, cond, self._window_tokens(cond, None))

        def predictor(
            win: torch.Tensor, coords: list[list[slice]], condition: torch.Tensor
        ) -> torch.Tensor:
            tok = torch.cat(
                [self._window_tokens(condition[i : i + 1], c) for i, c in enumerate(coords)]
            )
            tt = torch.full((win.shape[0],), t0, dtype=torch.long, device=win.device)
            return self.model(win, tt, condition, tok)

        return self._slide(x_t, cond, predictor, with_coord=True)

    def lesion_head(
        self, x: torch.Tensor, cond: torch.Tensor, box: Sequence[slice] | None = None
    ) -> torch.Tensor:
        """Lesion logits `(B, 1, *S)` blended from windows; differentiable in `x`. With `box`,
        the logits of that region only, from the head itself (`LesionHead.forward`)."""
        self._check(x)
        if box is not None:
            return self.model.lesion_head(x, cond, box=box)
        whole_only = bool(getattr(self.model.lesion_head, "whole_volume_only", False))
        if not self.lesion_windows or whole_only or tuple(x.shape[2:]) == self.patch:
            # The head is a plain conv UNet (no tokens, no attention), so it runs on the whole
            # padded volume in one call: about 1/3 of the voxels the overlapping windows cost,
            # and guidance calls it forward + backward. Only its instance-norm statistics
            # differ from per-patch application.
            return self.model.lesion_head(x, cond)

        def predictor(win: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
            return self.model.lesion_head(win, condition)

        return self._slide(x, cond, predictor, with_coord=False)

    # -- internals -------------------------------------------------------------------------
    def _check(self, x: torch.Tensor) -> None:
        small = [s < p for s, p in zip(x.shape[2:], self.patch, strict=True)]
        if any(small):
            raise ValueError(
                f"volume {tuple(x.shape[2:])} is smaller than the patch {self.patch} along some "
                "axis; pad it first (padded_shape / pad_to)"
            )

    def _window_tokens(self, cond_win: torch.Tensor, coords: list[slice] | None) -> torch.Tensor:
        key = (-1,) if coords is None else tuple(int(s.start or 0) for s in coords[2:])
        if key not in self._tokens:
            with torch.no_grad():
                self._tokens[key] = self.model.encode(cond_win[:1])
        tok = self._tokens[key]
        return tok.expand(cond_win.shape[0], *tok.shape[1:])

    def _slide(self, x: torch.Tensor, cond: torch.Tensor, predictor: Any, with_coord: bool) -> Any:
        return sliding_window_inference(
            x,
            roi_size=self.patch,
            sw_batch_size=self.sw_batch_size,
            predictor=predictor,
            overlap=self.overlap,
            mode=self.blend,
            with_coord=with_coord,
            condition=cond,
        )
