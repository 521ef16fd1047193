"""The lesion head: a small MONAI UNet segmenting the lesion from a fused image.

What it reads (``inputs``):

- ``"fused"`` (the shipped model since session 2): the fused image / x̂0 only. Its prediction
  then says how visible the lesion is in *that* image, so the same head scores every fused
  image of the benchmark (ours and each baseline) and the guidance gradient of the lesion term
  flows entirely through the image being guided.
- ``"fused+sources"`` (session 1): x̂0 plus [mri, ct, ct_bone]. The sources carry the lesion
  contrast by themselves, so the prediction barely depends on the fused image; kept so older
  checkpoints still load.
- ``"fused+sources+mirror"`` (session 4): the same four channels plus the left-right mirror
  images of x̂0, the MRI and the clinical-window CT about the head's mid-sagittal plane
  (`mirror_channels`). Strokes are one-sided, so "this voxel differs from its contralateral
  twin" is the cue a radiologist uses for a subtle ischaemic lesion (the symmetry prior of
  stroke segmentation networks, e.g. Wang et al. 2016 "Automatic ischemic stroke lesion
  segmentation from computed tomography of brain images with symmetry"). The mirrors are taken
  on the *whole* volume before any window or patch is cut (`head_inputs`), so a sliding window
  still compares each voxel with its real contralateral twin. Written here: MONAI has no
  mid-sagittal mirror transform.
- ``"fused+sources+mirror+contrast"`` (session 19): those seven channels plus one "sequence
  slot" per MRI sequence (`MRI_CONTRASTS`: T1, T2, ADC, FLAIR, DWI). The MRI goes into the slot
  of its sequence and the other slots are zero; an unknown sequence leaves every slot zero
  (missing-modality zero filling, as multi-sequence segmentation networks treat an absent
  channel). The same bright spot then means different things on a T1 and on a T2 head: an
  ischaemic lesion is dark on T1 and ADC and bright on T2, FLAIR and DWI, and the heads
  without it marked T2/FLAIR-like bright deep white matter on lesion-free T1 anatomy as lesion
  (session 18). The slots carry the image, not a constant: a constant channel would be
  removed by the first instance norm. Which sequence a case is comes from the caller
  (`told_contrast`: `fuse --mri-contrast`, a dataset's `mri_contrast`), never from the image.
- ``"fused+sources+rigid-mirror"`` (session 20): the seven channels of ``"+mirror"``, the
  mirror images taken about a *rigid* mid-sagittal plane (yaw, roll and offset, estimated from
  the MRI: `clinfuse.nn.symmetry`) instead of a left-right shift. Real heads sit turned and
  tilted in their volumes; the shift-only mirror then compares a voxel with the wrong twin
  (session 19). Same channels as ``"+mirror"``, so a ``"+mirror"`` head is a warm start for
  it. Trained and judged in session 20 (lesion21: more lesions found, false lesions not fewer;
  not shipped, docs/TRAINING.md).

Why x̂0 and not x_t: at sampling time the head runs on the fused *estimate* of the clean image
(Algorithm 1 line 7 at t = T/2, and the lesion term from T/2 on); x_t at T/2 is half noise. It is
trained on x̂0 of the frozen denoiser at t <= T/2 and on clean fused images
(`clinfuse.training.lesion`), which is what it sees when sampling and when evaluating.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from monai.networks.nets import UNet
from torch import nn

from clinfuse.choices import MRI_CONTRASTS, parse_mri_contrast
from clinfuse.nn.lesion_mask import LesionMaskRule
from clinfuse.nn.symmetry import MirrorPlane, plane_of, reflect

LESION_INPUTS = (
    "fused",
    "fused+sources",
    "fused+sources+mirror",
    "fused+sources+mirror+contrast",
    "fused+sources+rigid-mirror",
)
IN_CHANNELS = {
    "fused": 1,
    "fused+sources": 4,
    "fused+sources+mirror": 7,
    "fused+sources+mirror+contrast": 7 + len(MRI_CONTRASTS),
    "fused+sources+rigid-mirror": 7,
}
MIRRORED = (0, 1, 2)  # channels of [fused, mri, ct, ct_bone] that get a mirror image
PRIOR = 0.01  # initial lesion probability of every voxel


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
        # The MRI sequence of the case being read (a `MRI_CONTRASTS` name or None = unknown);
        # only heads reading "+contrast" use it. Set around a use with `told_contrast`.
        self.mri_contrast: str | None = None
        self.unet = UNet(
            spatial_dims=spatial_dims,
            in_channels=IN_CHANNELS[inputs],
            out_channels=1,
            channels=tuple(channels),
            strides=(2,) * (len(channels) - 1),
            num_res_units=num_res_units,
            norm=norm,
        )

        # Prior-probability init of the output bias (Lin et al. 2017, "Focal loss"): lesions
        # are ~1 % of a patch, and from p = 0.5 everywhere Adam needed hundreds of steps just
        # to push the background down (session 3: p(background) 0.57 -> 0.47 in 60 steps).
        last = [m for m in self.unet.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))][-1]
        if last.out_channels == 1 and last.bias is not None:
            nn.init.constant_(last.bias, math.log(PRIOR / (1.0 - PRIOR)))
        # Calibration and post-processing travel with the weights (state dict buffers):
        # `temperature` divides the logits (temperature scaling fitted on a validation split,
        # 1 = uncalibrated), `min_lesion_ml` is the smallest connected component `clean_mask`
        # keeps and `min_component_prob` the mean probability a component other than the most
        # probable one needs to stay, `min_lesion_prob` the mean probability the most probable
        # one needs for the head to report a lesion at all, `mirror_ghosts` 1 when components
        # on the mirror image of a more confident one go, `min_peak_prob` the highest
        # probability any kept component must reach (`LesionMaskRule`), `near_logit_scale`
        # the reported probability's logit factor near the mask (`LesionMaskRule.calibrated`).
        # Checkpoints from before they existed load with 1, 0, 0, 0, 0, 0 and 1.
        self.register_buffer("temperature", torch.ones(()))
        self.register_buffer("min_lesion_ml", torch.zeros(()))
        self.register_buffer("min_component_prob", torch.zeros(()))
        self.register_buffer("min_lesion_prob", torch.zeros(()))
        self.register_buffer("mirror_ghosts", torch.zeros((), dtype=torch.long))
        self.register_buffer("min_peak_prob", torch.zeros(()))
        self.register_buffer("near_logit_scale", torch.ones(()))
        # Sliding-window size (voxels per axis) for volumes larger than it, in eval mode: the
        # training patch, so instance norm sees windows like its training patches. 0 = whole.
        self.register_buffer("window", torch.zeros((), dtype=torch.long))
        # Left-right flip test-time augmentation in eval mode (`flip_averaged`): 1 = the logits
        # are the mean of the head on the volume and on its mirror image (flipped back), as
        # nnU-Net's mirroring at inference. Set with the calibration it was fitted with
        # (`train-lesion --flip-tta`); 3D heads only (axis 0 is RAS x). 0 = one pass.
        self.register_buffer("flip_tta", torch.zeros((), dtype=torch.long))

    def _load_from_state_dict(
        self,
        state_dict: dict,
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list,
        unexpected_keys: list,
        error_msgs: list,
    ) -> None:
        defaults = (
            ("temperature", 1.0),
            ("min_lesion_ml", 0.0),
            ("min_component_prob", 0.0),
            ("min_lesion_prob", 0.0),
            ("mirror_ghosts", 0),
            ("min_peak_prob", 0.0),
            ("near_logit_scale", 1.0),
            ("window", 0),
            ("flip_tta", 0),
        )
        for name, default in defaults:
            state_dict.setdefault(prefix + name, torch.tensor(default))
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    @property
    def mask_rule(self) -> LesionMaskRule:
        """How this head's probability becomes a lesion mask (its fitted post-processing)."""
        return LesionMaskRule(
            float(self.min_lesion_ml),
            float(self.min_component_prob),
            float(self.min_lesion_prob),
            bool(self.mirror_ghosts),
            float(self.min_peak_prob),
            float(self.near_logit_scale),
        )

    def set_mask_rule(self, rule: LesionMaskRule) -> None:
        """Store `rule` in the head's buffers (what `mask_rule` returns from then on)."""
        self.min_lesion_ml.fill_(rule.min_ml)
        self.min_component_prob.fill_(rule.min_component_prob)
        self.min_lesion_prob.fill_(rule.min_lesion_prob)
        self.mirror_ghosts.fill_(int(rule.drop_mirror_ghosts))
        self.min_peak_prob.fill_(rule.min_peak_prob)
        self.near_logit_scale.fill_(rule.near_logit_scale)

    @property
    def reads_contrast(self) -> bool:
        """True when the head has sequence slots (`told_contrast` changes its output)."""
        return self.inputs.endswith("+contrast")

    @property
    def whole_volume_only(self) -> bool:
        """True when the head must see the whole volume: its mirror images are taken before any
        window is cut (`head_inputs`), so a caller must not apply it window by window."""
        return reads_mirror(self.inputs)

    @property
    def flip_averaged(self) -> bool:
        """True when this head averages over a left-right flip (`flip_tta`, eval mode only)."""
        return bool(self.flip_tta) and not self.training

    def inputs_of(self, x0_hat: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """The network's input channels for whole volumes (`head_inputs` for this head, with
        its `mri_contrast`)."""
        return head_inputs(self.inputs, x0_hat, cond, self.mri_contrast)

    def raw_logits(self, x0_hat: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """The network's logits before temperature scaling (what training optimises)."""
        return self.unet(self.inputs_of(x0_hat, cond))

    def forward(
        self,
        x0_hat: torch.Tensor,
        cond: torch.Tensor | None = None,
        box: Sequence[slice] | None = None,
    ) -> torch.Tensor:
        """Calibrated logits (apply ``torch.sigmoid`` for the lesion probability). In eval mode
        a volume larger than `window` goes through `sliding_logits` with that window.

        `box` (one slice per spatial axis): logits of that region only, `(B, 1, *box)`. The
        input channels (mirrors included) are still made from the whole volume; the network
        then runs on a context region around the box (`context_box`: a margin of
        `size_multiple` voxels, at least one `window`), so the box's voxels see the same kind
        of neighbourhood as in a whole-volume pass at a fraction of its cost. Guidance uses it
        for the lesion term, whose gradient can only move voxels inside the box.

        With `flip_averaged` the logits are the mean of this over the volume and over its
        left-right mirror image (`flip_mean`), box included."""
        if self.flip_averaged:
            return flip_mean(self._logits, x0_hat, cond, box)
        return self._logits(x0_hat, cond, box)

    def _logits(
        self,
        x0_hat: torch.Tensor,
        cond: torch.Tensor | None = None,
        box: Sequence[slice] | None = None,
    ) -> torch.Tensor:
        """`forward` without the flip average: one pass."""
        win = int(self.window)
        spatial = tuple(x0_hat.shape[2:])
        inputs = self.inputs_of(x0_hat, cond)
        ctx = (
            tuple(slice(0, n) for n in spatial)
            if box is None
            else context_box(box, spatial, win, self.size_multiple, margin=self.size_multiple)
        )
        sub = inputs[(..., *ctx)]
        if not self.training and win > 0 and any(n > win for n in sub.shape[2:]):
            logits = _slide(self, sub, (win,) * len(spatial))  # = sliding_logits on the region
        else:
            logits = self.unet(sub) / self.temperature.to(sub.dtype)
        if box is None:
            return logits
        inner = tuple(
            slice(b.start - c.start, b.stop - c.start)
            for b, c in zip(_resolved(box, spatial), ctx, strict=True)
        )
        return logits[(..., *inner)]


def flip_mean(
    fn: Callable[[torch.Tensor, torch.Tensor | None, Sequence[slice] | None], torch.Tensor],
    x0_hat: torch.Tensor,
    cond: torch.Tensor | None,
    box: Sequence[slice] | None = None,
) -> torch.Tensor:
    """Left-right flip test-time augmentation of a head's logits: the mean of `fn(x0_hat, cond,
    box)` and of `fn` on the images flipped along spatial axis 0 (RAS x), flipped back. The box
    is mirrored with the images, so the result covers the same voxels. Differentiable."""
    spatial = tuple(x0_hat.shape[2:])
    fbox = None
    if box is not None:
        first, *rest = _resolved(box, spatial)
        n = spatial[0]
        fbox = (slice(n - first.stop, n - first.start), *rest)
    direct = fn(x0_hat, cond, box)
    mirrored = fn(x0_hat.flip(2), None if cond is None else cond.flip(2), fbox).flip(2)
    return 0.5 * (direct + mirrored)


def _resolved(box: Sequence[slice], spatial: Sequence[int]) -> tuple[slice, ...]:
    """`box` with explicit, in-range starts and stops (step 1)."""
    if len(box) != len(spatial):
        raise ValueError(f"box has {len(box)} axes, the volume {len(spatial)}")
    out = []
    for s, n in zip(box, spatial, strict=True):
        lo, hi, step = s.indices(int(n))
        if step != 1 or hi <= lo:
            raise ValueError(f"box {tuple(box)} is empty or strided for a volume of {spatial}")
        out.append(slice(lo, hi))
    return tuple(out)


def context_box(
    box: Sequence[slice],
    spatial: Sequence[int],
    window: int,
    multiple: int,
    margin: int = 0,
) -> tuple[slice, ...]:
    """The region a head runs on to predict `box`: the box grown by `margin` voxels per side,
    then (centred, kept inside the volume) to at least `window` voxels and to a multiple of
    `multiple` along each axis, or to the whole axis when that is shorter."""
    out = []
    for s, n in zip(_resolved(box, spatial), spatial, strict=True):
        n = int(n)
        lo, hi = max(0, s.start - margin), min(n, s.stop + margin)
        size = max(hi - lo, int(window))
        size = -(-size // max(1, int(multiple))) * max(1, int(multiple))
        size = min(size, n)
        lo = min(max(0, lo - (size - (hi - lo)) // 2), n - size)
        out.append(slice(lo, lo + size))
    return tuple(out)


def sliding_logits(
    head: LesionHead,
    fused: torch.Tensor,
    cond: torch.Tensor | None,
    roi_size: Sequence[int] = (48, 48, 48),
    raw: bool = False,
    overlap: float = 0.25,
) -> torch.Tensor:
    """The head over a whole volume with MONAI `sliding_window_inference` (Gaussian-weighted
    windows of `roi_size`, the training patch): `fused` (B, 1, *S), `cond` (B, 3, *S) ->
    logits (B, 1, *S), calibrated unless `raw`, averaged over a left-right flip when the head
    is `flip_averaged`. Differentiable (guidance can use it)."""
    nd = fused.ndim - 2
    roi = tuple(int(r) for r in roi_size)[:nd]

    def one_pass(f: torch.Tensor, c: torch.Tensor | None, _box: object = None) -> torch.Tensor:
        x = head.inputs_of(f, c)  # mirrors (if any) from the whole volume, then windows
        return _slide(head, x, roi, raw=raw, overlap=overlap)

    return flip_mean(one_pass, fused, cond) if head.flip_averaged else one_pass(fused, cond)


def _slide(
    head: LesionHead,
    x: torch.Tensor,
    roi: Sequence[int],
    raw: bool = False,
    overlap: float = 0.25,
) -> torch.Tensor:
    """`head.unet` over the input channels `x` (B, C, *S) in Gaussian-blended windows."""
    from monai.inferers import sliding_window_inference

    def net(win: torch.Tensor) -> torch.Tensor:
        logits = head.unet(win)
        return logits if raw else logits / head.temperature.to(logits.dtype)

    return sliding_window_inference(
        x, tuple(roi), sw_batch_size=2, predictor=net, overlap=overlap, mode="gaussian"
    )


def mid_sagittal_shift(mri: torch.Tensor, axis: int = 0) -> int:
    """Integer shift `s` such that voxel `i` mirrors to `n - 1 - i + s` along `axis` (RAS x):
    the head's left-right mirror plane through the centroid of the head's voxels (MRI above
    10 % of its range), rounded to half a voxel. `mri`: one volume (*S)."""
    m = mri.detach().float()
    lo, hi = float(m.min()), float(m.max())
    w = (m > lo + 0.1 * (hi - lo)).to(torch.float64)
    total = float(w.sum())
    n = m.shape[axis]
    if total <= 0:
        return 0
    dims = [d for d in range(m.ndim) if d != axis]
    profile = w.sum(dim=dims) if dims else w
    centre = float((profile * torch.arange(n, dtype=torch.float64)).sum()) / total
    return int(round(2.0 * centre - (n - 1)))


def mirror(x: torch.Tensor, shift: int, axis: int) -> torch.Tensor:
    """`x` mirrored along `axis` about the plane of `mid_sagittal_shift`: out[i] = x[n-1-i+s]
    (edge values where the twin lies outside the volume)."""
    n = x.shape[axis]
    idx = (n - 1 - torch.arange(n, device=x.device) + int(shift)).clamp(0, n - 1)
    return x.index_select(axis, idx)


def reads_mirror(inputs: str) -> bool:
    """True for the input modes with mirror channels (shift-only or rigid)."""
    return "+mirror" in inputs or rigid_mirror(inputs)


def rigid_mirror(inputs: str) -> bool:
    """True for the input modes whose mirrors are about a rigid plane (`clinfuse.nn.symmetry`)."""
    return "+rigid-mirror" in inputs


def mirror_channels(
    x: torch.Tensor,
    channels: Sequence[int] = MIRRORED,
    rigid: bool = False,
    planes: Sequence[MirrorPlane] | None = None,
) -> torch.Tensor:
    """`x` (B, C, *S) with the left-right mirror images of `channels` appended (B, C + k, *S).
    The plane comes from channel 1 (the MRI) of each item; axis 0 of the volume is RAS x.
    `rigid`: about each item's rigid mid-sagittal plane (`planes`, one per item, or estimated
    with `plane_of`), reflected with `grid_sample`; else the shift-only mirror
    (`mid_sagittal_shift`)."""
    out = []
    for b in range(x.shape[0]):
        if rigid:
            plane = planes[b] if planes is not None else plane_of(x[b, 1])
            out.append(reflect(x[b, list(channels)], plane))
        else:
            s = mid_sagittal_shift(x[b, 1])
            out.append(mirror(x[b, list(channels)], s, axis=1))
    return torch.cat([x, torch.stack(out)], dim=1)


def head_inputs(
    inputs: str,
    x0_hat: torch.Tensor,
    cond: torch.Tensor | None,
    contrast: str | None = None,
    planes: Sequence[MirrorPlane] | None = None,
) -> torch.Tensor:
    """The network input of a head reading `inputs` on whole volumes: x̂0 (B, 1, *S) alone, or
    with the sources `cond` (B, 3, *S), or with the sources and the mirror images (mode
    "+rigid-mirror": about `planes`, one per item, or each MRI's estimated plane), and then
    (mode "+contrast") the sequence slots of `contrast` (`contrast_slots`; None = unknown)."""
    if inputs == "fused":
        return x0_hat
    if cond is None:
        raise ValueError("this lesion head reads the sources too: pass cond")
    x = torch.cat([x0_hat, cond], dim=1)
    if reads_mirror(inputs):
        x = mirror_channels(x, rigid=rigid_mirror(inputs), planes=planes)
    if inputs.endswith("+contrast"):
        x = torch.cat([x, contrast_slots(cond[:, :1], contrast)], dim=1)
    return x


def contrast_slots(mri: torch.Tensor, contrast: str | None) -> torch.Tensor:
    """The sequence slots of the "+contrast" head: (B, len(MRI_CONTRASTS), *S), the MRI `mri`
    (B, 1, *S) in the slot of `contrast` and zeros elsewhere (all zero when it is None)."""
    name = parse_mri_contrast(contrast)
    slots = torch.zeros(
        (mri.shape[0], len(MRI_CONTRASTS), *mri.shape[2:]), dtype=mri.dtype, device=mri.device
    )
    if name is not None:
        k = MRI_CONTRASTS.index(name)
        slots = torch.cat([slots[:, :k], mri, slots[:, k + 1 :]], dim=1)
    return slots


@contextmanager
def told_contrast(module: Any, contrast: str | None) -> Iterator[None]:
    """Within the block, the lesion head of `module` (a `LesionHead`, or a model holding one as
    `lesion_head`) reads the case as MRI sequence `contrast` (None = unknown); restored after.
    No effect on heads without sequence slots. A bad name is a `ClinfuseInputError`."""
    name = parse_mri_contrast(contrast)
    head = module if isinstance(module, LesionHead) else getattr(module, "lesion_head", None)
    if not isinstance(head, LesionHead):
        yield
        return
    before = head.mri_contrast
    head.mri_contrast = name
    try:
        yield
    finally:
        head.mri_contrast = before
