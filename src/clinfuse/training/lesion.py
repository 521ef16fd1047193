"""Train the lesion head on its own (`clinfuse train-lesion`), then calibrate it.

The head of Algorithm 1 line 7 segments the lesion from everything the sampler has: the fused
estimate x̂0 and the sources [MRI, CT clinical window, CT bone window], and by default the
left-right mirror images of x̂0, MRI and CT about the mid-sagittal plane, taken on whole volumes
(`ModelConfig.lesion_inputs = "fused+sources+mirror"`, `nn.lesion_head.mirror_channels`: a
stroke differs from its contralateral twin). The recipe is MONAI's standard 3D segmentation
recipe; only the choice of the fused channel and the mirror channels are ours:

- **Network**: MONAI `UNet` (16-32-64-128, 2 residual units, instance norm). Whole volumes go
  through sliding windows of the training patch's size (`LesionHead.window`, set here), so
  every window is normalised like a training patch.
- **Samples**: `RandCropByPosNegLabeld` patches (half centred on lesion voxels, half on
  background), left-right flips and a small `RandAffined` (rotation, scale), channel-wise
  intensity scale/shift and Gaussian noise (on the whole volume, before the mirror images, so
  a channel and its mirror get the same draw).
- **The fused channel**: the diffusion model is not needed to train the head. Per sample it is
  the ROI-composite target (what x0-prediction learns), a degraded composite (Gaussian blur and
  noise: how x̂0 looks at t <= T/2) or a classical baseline's fused image, so the same head reads
  x̂0 while guiding and any method's fused image when evaluating.
- **Loss**: MONAI `DiceCELoss` (sigmoid; one Dice over the batch, or per patch with
  `dice_per_sample`, which weighs small lesions like large ones). Voxels whose label is unknown
  (a training volume with a real, unlabelled lesion: the `ignore` manifest column) are removed
  from the loss.
- **Validation**: whole held-out volumes with `sliding_window_inference`, Dice at 0.5 after
  `clean_mask` post-processing; the best step is kept.
- **Calibration**: temperature scaling (`metrics.calibration.fit_temperature`) fitted on the
  validation split's brain voxels, then the post-processing (`nn.lesion_mask.LesionMaskRule`)
  chosen on the same split by Dice: the smallest kept component (`min_lesion_ml`), then the mean
  probability a secondary component needs to stay (`min_component_prob`), and with
  `lesion_gate` the mean probability the most probable component needs for any lesion to be
  reported (`min_lesion_prob`, chosen by the mean Dice over every validation case with the
  BraTS convention for lesion-free ones: 1 for an empty mask, 0 otherwise), and with
  `mirror_ghosts` whether components on the mirror image of a more confident one go
  (`nn.lesion_mask.drop_ghosts`, on or off by the same criterion), and with `peak_rule` the
  highest probability every kept component must reach (`min_peak_prob`, hysteresis; chosen
  after the minimum size and secondary filter by the same criterion), and with
  `near_temperature` a second temperature for the reported probability within 10 mm of the
  head's own mask (`LesionMaskRule.near_logit_scale`, fitted by NLL on those validation voxels;
  the mask is unchanged). With `rule_max_lesion_free_share` < 1 every step of that search
  chooses only among the choices that mark at most that share of the lesion-free validation
  cases (or, if none does, those marking fewest). All are stored in the head (buffers), so
  every user of the head applies them. `transplant_lesion_head(..., recalibrate_on=VAL)`
  (`train-lesion --head-from --recalibrate`) refits them for a trained head without training it.
- **Flip test-time augmentation** (optional, `flip_tta`, 3D): the head's logits in eval mode
  are the mean over the volume and its left-right mirror image (`LesionHead.flip_tta`,
  `nn.lesion_head.flip_mean`); validation, calibration and every later use then see the
  averaged logits, so temperature and mask rule are fitted to what is applied.
- **Hard negatives** (optional, `hard_negative_fraction`): a share of the patches is cropped
  around the head's own far false positives on the training volumes, found again after every
  validation. **Ghost patches** (optional, `ghost_fraction`): a share of the lesion cases'
  patches is cropped around the lesion's mirror twin (`ghost_regions`), labelled background.
- **Data shares** (optional, `data_shares`): several training data sets (e.g. real-anatomy
  pairs and phantoms) each give this share of the sampled cases, whatever their sizes; without
  shares every case is equally likely (the data sets are concatenated).

Never trained on the project's test heads (`clinfuse.phantom.realhead.TEST_CASE_NAMES`).
The output is the given fusion checkpoint with this head in place of its old one.
"""

from __future__ import annotations

import csv
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np
import torch

from clinfuse.errors import ClinfuseInputError
from clinfuse.io.atomic import atomic_write
from clinfuse.model_range import MODEL_RANGE
from clinfuse.nn.lesion_mask import LesionMaskRule

K = TypeVar("K")  # a calibration choice: a value, or a tuple of values (`_pick_rule`)
FLIP_3D_ONLY = "flip test-time augmentation flips RAS x and is for 3D heads only"
DEFAULT_BASELINES = ("average", "weighted", "max", "laplacian", "wavelet")
# Smallest kept component (mL), chosen on validation among these. At most a fifth of 0.5 mL,
# the smallest lesion the head is meant to find (issue 10's size range 0.5-80 mL), because a
# small lesion's mask is often half its size: in session 4 a 1 mL minimum (validation Dice
# 0.263 against 0.261 at 0.5) erased a 0.7 mL haemorrhage found on a held-out phantom, and in
# session 21 a 0.25 mL minimum (validation Dice 0.762 against 0.761 at 0.1) erased two 0.4 mL
# DWI infarcts whose masks were 0.18 and 0.23 mL (lesion_checks.py small, seeds 81000+).
MIN_ML_CHOICES = (0.0, 0.05, 0.1)
# Mean probability a secondary component needs to stay (`clean_mask`), chosen on validation
# among these (0 = off; ties go to the lowest, the filter that removes least). Session 9: far,
# faint false components of the session-8 head set the held-out phantoms' HD95 (issue 10).
MIN_COMPONENT_PROB_CHOICES = (0.0, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
# Mean probability the most probable component needs for the head to report a lesion at all
# (`lesion_gate`; 0 = off). Session 18: on lesion-free real anatomy the session-16 head's only
# component had mean probability 0.61-0.81, its true lesions mostly above 0.83.
MIN_LESION_PROB_CHOICES = (0.0, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9)
# Highest probability every kept component must reach (`peak_rule`; 0 = off), chosen on
# validation among these. Session 25: lesion25w's false components on real anatomy peaked at a
# median 0.90, its true ones at >= 0.975 for 90 % of them (`nn.lesion_mask.clean_mask`).
MIN_PEAK_PROB_CHOICES = (0.0, 0.9, 0.95, 0.98, 0.99)
AMP_MODES = ("auto", "bf16", "off")
# A false positive counts as a hard negative this many voxels (or more) from a labelled lesion:
# separate false components, not the lesion's own border (Dice already weighs that).
HARD_NEGATIVE_MARGIN = 3


@dataclass
class LesionTrainConfig:
    """Options of `train_lesion_head` (recorded in the output checkpoint)."""

    steps: int = 1500
    cases_per_step: int = 2  # each gives `samples_per_case` patches
    samples_per_case: int = 2
    patch_size: tuple[int, ...] = (48, 48, 48)
    lr: float = 2e-3
    weight_decay: float = 1e-4
    # what the head reads (`nn.lesion_head.LESION_INPUTS`); the mirror images of the
    # "+mirror" mode are taken on the whole volume before patches are cut
    inputs: str = "fused+sources+mirror"
    channels: tuple[int, ...] = (16, 32, 64, 128)
    res_units: int = 2
    # Instance norm: training patches and inference windows (`LesionHead.window` = the patch)
    # have the same size, so per-window statistics match. Batch norm's running statistics from
    # 4 correlated patches swung the whole-volume predictions between nothing and 25,000 false
    # voxels (session 3, steps 150-450).
    norm: str = "instance"
    pos_fraction: float = 0.5  # RandCropByPosNegLabeld pos / (pos + neg)
    p_composite: float = 0.3  # fused channel = the clean ROI composite
    p_degraded: float = 0.4  # ... = the composite blurred and noised (x̂0 look-alike)
    fused_inputs: tuple[str, ...] = DEFAULT_BASELINES  # the rest: one of these baselines
    val_every: int = 100
    threshold: float = 0.5
    seed: int = 0
    # Mixed precision of the training steps: "auto" = bf16 autocast where the device computes
    # bf16 natively (`nn.precision.native_bf16`: AVX512-BF16/AMX on CPU, sm80+ on CUDA), else
    # float32; "bf16" forces it, "off" is float32. Validation and calibration run in float32.
    # Session 6, this CPU (AVX512-BF16), 4 patches of 48³: 0.13 s per forward+backward in bf16
    # against 0.23 s in float32.
    amp: str = "auto"
    # Warm start: the lesion head of this checkpoint (a train-lesion output or a shipped model)
    # as the initial weights, e.g. to continue a run whose loss was still falling with a new,
    # lower learning-rate schedule. Its architecture must match `inputs`/`channels`/`norm`.
    init_head: str | None = None
    # Hard negatives (session 9): this share of the samples is cropped around the current
    # head's false positives on the training volumes (p >= threshold inside the brain, label
    # known, at least `HARD_NEGATIVE_MARGIN` voxels from any labelled lesion), found with the
    # composite channel at the start and again after every validation. 0: off (the sampling
    # stream is then exactly that of earlier runs).
    hard_negative_fraction: float = 0.0
    # Ghost patches (session 24): this share of the lesion cases' samples is cropped around the
    # lesion's mirror image about the MRI's rigid mid-sagittal plane (`ghost_regions`), where
    # the mirror channels show the lesion and the own side is normal: the place a rigid-mirror
    # head marked the lesion's twin on held-out phantoms (session 23). 0: off (the sampling
    # stream is then exactly that of earlier runs).
    ghost_fraction: float = 0.0
    # Left-right flip test-time augmentation (session 10): the head's eval-mode logits are the
    # mean over the volume and its mirror image (`LesionHead.flip_tta`); validation,
    # calibration and the exported head use it. Training patches are unchanged. 3D only.
    flip_tta: bool = False
    # Several training data sets (`train_lesion_head(data=[...])`): the share of sampled cases
    # each gives (one per data set, summing to 1); a case is drawn uniformly inside its data
    # set. None: every case of all data sets is equally likely (the sampling stream of earlier
    # runs). Session 12: with 450 cases of which 144 are real-anatomy pairs, uniform sampling
    # gave real anatomy 32% of the samples against 48% in the 300-case data it replaced.
    data_shares: tuple[float, ...] | None = None
    # Dice term of the loss per sample (session 13): MONAI's `batch=False`, the Dice of each
    # patch averaged over the patches, so a patch holding a 0.5 mL lesion weighs as much as one
    # holding 80 mL; a lesion-free patch then adds a near-constant term with almost no
    # gradient (its false positives are left to the cross-entropy). False: one Dice over the
    # whole batch (`batch=True`, every earlier run), where small lesions barely count.
    dice_per_sample: bool = False
    # How the calibration picks the mask rule (session 15): 0 = by validation Dice alone (every
    # earlier head). > 0: among the rules whose Dice is within this of the best and that leave
    # at least as many lesions with a prediction, the one with the lowest mean HD95 over the
    # lesions with a prediction (session 14: a loose filter won by 0.001 Dice and kept far
    # components that cost 4 mm HD95).
    rule_dice_tolerance: float = 0.0
    # With `rule_dice_tolerance` > 0 (session 24): the share of the best-Dice rule's overlapped
    # lesions a near rule may lose, (1 - this) x its count; 0 = not one (every earlier head).
    # The strict count kept a 0 mL minimum for one more lesion of 110 (lesion25v), with far
    # specks that cost 2.6-46 mm of HD95 on held-out sets.
    rule_found_tolerance: float = 0.0
    # Cap on the lesion-free validation cases a rule may mark (session 30), as a share of them:
    # at every step of the rule search the criterion only chooses among the choices that leave
    # a prediction on at most floor(share x lesion-free cases) of them, or, when none does,
    # among those that mark fewest. 1 = no cap (every earlier head). Session 29: the rule
    # score is the Dice over the cases with a lesion, so 40 more small validation lesions
    # dropped the peak filter and left 22 of 94 lesion-free validation heads marked (2 before).
    rule_max_lesion_free_share: float = 1.0
    # Fit a case-level gate as well (session 18, `min_lesion_prob`): after the rule above, the
    # gate that maximises the mean Dice over every validation case, lesion-free ones scored by
    # the BraTS convention (1 when the mask is empty, 0 otherwise), ties to the lowest gate.
    # It trades a doubtful small lesion found against a false lesion on a healthy head, in the
    # proportion of lesion-free cases in the validation split. False: no gate (every earlier head).
    lesion_gate: bool = False
    # Consider the mirror-ghost filter as well (session 24, `LesionMaskRule.drop_mirror_ghosts`):
    # after the minimum size and the secondary filter, on or off by the same criterion (ties:
    # off). It drops components lying on the mirror image of a more confident one, where heads
    # reading mirror channels mark a lesion's contralateral twin. False: off (every earlier head).
    mirror_ghosts: bool = False
    # Consider the peak (hysteresis) filter as well (session 25, `LesionMaskRule.min_peak_prob`):
    # after the minimum size and the secondary filter, by the same criterion among
    # `MIN_PEAK_PROB_CHOICES` (ties: the lowest). Unlike the secondary filter it may drop the
    # most probable component, hence empty a mask: most false lesions on lesion-free real heads
    # are a case's only component. False: off (every earlier head).
    peak_rule: bool = False
    # Fit a second temperature near the head's own mask (session 27,
    # `LesionMaskRule.near_logit_scale`): after the rule, on the validation voxels within
    # `NEAR_MASK_MM` of each case's mask, by NLL; the reported probability uses it there. The
    # mask is unchanged. False: one temperature (every earlier head).
    near_temperature: bool = False
    # Choose the minimum size and the secondary filter together (session 24): the rule
    # criterion over all their pairs instead of one after the other. One after the other, the
    # guard of `_pick_rule` kept a 0 mL minimum for one more validation lesion overlapped (72
    # against 71 at 0.1 mL) that the secondary filter chosen next discarded anyway (70), and
    # the 0 mL minimum kept far specks (lesion24). False: one after the other (every earlier head).
    joint_rule: bool = False
    # Heads with sequence slots (`inputs` "...+contrast", session 19): the share of training
    # samples whose MRI sequence is hidden (every slot zero), so the head also learns to work
    # when the user does not say the sequence. Each case's sequence comes from its dataset
    # (`mri_contrast`: manifest column or truth.json); cases without one are always unknown.
    contrast_dropout: float = 0.25
    # Whole-volume tilt (session 19, degrees; 0 = off): every sample's volume (fused channel,
    # sources, label, known-label map) is turned by a yaw and a roll drawn in [-tilt_deg,
    # tilt_deg] about its centre before the mirror channels are taken, so the head sees the
    # left-right asymmetry a tilted head gives its shift-only mirror without a lesion there
    # (phantoms are generated upright; real heads are not). Patch rotation (RandAffined)
    # comes after the mirrors and cannot show this.
    tilt_deg: float = 0.0

    def validate(self) -> None:
        """Raise `ClinfuseInputError` on values that cannot work."""
        from clinfuse.baselines import BASELINES
        from clinfuse.nn.lesion_head import LESION_INPUTS

        if self.inputs not in LESION_INPUTS[1:]:
            raise ClinfuseInputError(
                f"inputs must be one of {LESION_INPUTS[1:]} (the head reads the sources), "
                f"got {self.inputs!r}"
            )
        bad = [n for n in self.fused_inputs if n not in BASELINES]
        if bad:
            raise ClinfuseInputError(f"unknown fused input(s) {bad}; known: {sorted(BASELINES)}")
        if min(self.steps, self.cases_per_step, self.samples_per_case, self.val_every) < 1:
            raise ClinfuseInputError(
                "steps, cases_per_step, samples_per_case and val_every must be >= 1"
            )
        if self.amp not in AMP_MODES:
            raise ClinfuseInputError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        if not 0 < self.pos_fraction < 1:
            raise ClinfuseInputError("pos_fraction must be in (0, 1)")
        if not 0 <= self.hard_negative_fraction < 1:
            raise ClinfuseInputError("hard_negative_fraction must be in [0, 1)")
        if not 0 <= self.ghost_fraction < 1:
            raise ClinfuseInputError("ghost_fraction must be in [0, 1)")
        if not 0 <= self.tilt_deg <= 45:
            raise ClinfuseInputError("tilt_deg must be in [0, 45] degrees")
        if not 0 <= self.contrast_dropout <= 1:
            raise ClinfuseInputError("contrast_dropout must be in [0, 1]")
        if not 0 <= self.rule_dice_tolerance < 1:
            raise ClinfuseInputError("rule_dice_tolerance must be in [0, 1)")
        if not 0 <= self.rule_found_tolerance < 1:
            raise ClinfuseInputError("rule_found_tolerance must be in [0, 1)")
        if not 0 <= self.rule_max_lesion_free_share <= 1:
            raise ClinfuseInputError("rule_max_lesion_free_share must be in [0, 1]")
        if self.flip_tta and len(self.patch_size) != 3:
            raise ClinfuseInputError(FLIP_3D_ONLY)
        if self.data_shares is not None and (
            min(self.data_shares, default=0.0) <= 0 or abs(sum(self.data_shares) - 1) > 1e-6
        ):
            raise ClinfuseInputError(
                f"data shares must be positive and sum to 1, got {list(self.data_shares)}"
            )
        if self.p_composite + self.p_degraded > 1 or min(self.p_composite, self.p_degraded) < 0:
            raise ClinfuseInputError("p_composite + p_degraded must be in [0, 1]")
        if self.p_composite + self.p_degraded < 1 and not self.fused_inputs:
            raise ClinfuseInputError("fused_inputs is empty but some samples need a baseline")


@dataclass
class LesionTrainResult:
    """Where the outputs went and what validation said."""

    checkpoint: Path
    metrics_csv: Path
    best_step: int
    best_dice: float
    temperature: float
    min_lesion_ml: float
    min_component_prob: float = 0.0
    val: dict[str, Any] = field(default_factory=dict)
    min_lesion_prob: float = 0.0
    mirror_ghosts: bool = False
    min_peak_prob: float = 0.0
    near_logit_scale: float = 1.0

    @property
    def mask_rule(self) -> LesionMaskRule:
        """The fitted mask rule (with the near-mask calibration factor)."""
        return LesionMaskRule(
            self.min_lesion_ml,
            self.min_component_prob,
            self.min_lesion_prob,
            self.mirror_ghosts,
            self.min_peak_prob,
            self.near_logit_scale,
        )


@dataclass
class _Item:
    """One prepared case in memory: channels (C, *S) float32 and masks."""

    case_id: str
    sources: np.ndarray  # (3, *S) mri, ct, ct_bone
    composite: np.ndarray  # (*S)
    baselines: dict[str, np.ndarray]
    label: np.ndarray  # (*S) float32 0/1
    valid: np.ndarray  # (*S) float32: 0 where the label is unknown
    brain: np.ndarray  # (*S) bool
    spacing: tuple[float, ...]
    mri_contrast: str | None = None  # the dataset's MRI sequence (None: unknown); not cached

    @property
    def known(self) -> np.ndarray:
        """Voxels of known label: not in an `ignore` region (a real, unlabelled lesion)."""
        return self.valid > 0.5


def _ignore_paths(data: Path) -> dict[str, Path]:
    """case_id -> ignore mask path from the manifest's optional `ignore` column."""
    manifest = data / "manifest.csv" if data.is_dir() else data
    if not manifest.is_file():
        return {}
    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {
        r["case_id"]: (manifest.parent / r["ignore"]).resolve()
        for r in rows
        if r.get("ignore") and r.get("case_id")
    }


# Bump when what `load_items` computes for a case changes (preprocessing, training target,
# baselines, item fields): cached items of another version are then prepared again.
ITEM_CACHE_VERSION = 1
_ITEM_ARRAYS = ("sources", "composite", "label", "valid", "brain")


def _item_key(
    ref: Any, fused_inputs: Sequence[str], feather_sigma: float, ignore: Path | None
) -> str:
    """What a cached item depends on: its files (resolved path, size, modification time; the
    manifest's `ignore` mask too), the baselines, the target's feathering and
    `ITEM_CACHE_VERSION`."""
    import hashlib

    h = hashlib.sha256()
    files = sorted(ref.paths.items()) + ([("ignore", ignore)] if ignore is not None else [])
    for role, path in files:
        st = Path(path).stat()
        h.update(f"{role}={Path(path).resolve()}:{st.st_size}:{st.st_mtime_ns};".encode())
    h.update(
        f"{ref.case_id}|{ref.ct_kind}|{list(fused_inputs)}|{feather_sigma}|"
        f"{ITEM_CACHE_VERSION}".encode()
    )
    return h.hexdigest()[:20]


def _save_item(item: _Item, folder: Path) -> None:
    """Write an item as one .npy per array plus meta.json; the folder appears whole or not at
    all (written under a temporary name, then renamed)."""
    import json
    import shutil
    import uuid

    tmp = folder.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{folder.name}")
    tmp.mkdir(parents=True)
    try:
        for name in _ITEM_ARRAYS:
            np.save(tmp / f"{name}.npy", getattr(item, name))
        for k, arr in enumerate(item.baselines.values()):
            np.save(tmp / f"baseline{k}.npy", arr)
        meta = {
            "case_id": item.case_id,
            "baselines": list(item.baselines),
            "spacing": list(item.spacing),
        }
        (tmp / "meta.json").write_text(json.dumps(meta))
        try:
            tmp.rename(folder)
        except OSError:  # another run wrote the same item meanwhile: keep theirs
            if not (folder / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _open_item(folder: Path) -> _Item:
    """A cached item, its arrays memory-mapped copy-on-write ("c": the run may modify its view,
    the file never changes), so only the pages a step reads take memory."""
    import json

    meta = json.loads((folder / "meta.json").read_text())

    def arr(name: str) -> np.ndarray:
        return np.load(folder / f"{name}.npy", mmap_mode="c")

    return _Item(
        case_id=meta["case_id"],
        baselines={n: arr(f"baseline{k}") for k, n in enumerate(meta["baselines"])},
        spacing=tuple(float(x) for x in meta["spacing"]),
        **{n: arr(n) for n in _ITEM_ARRAYS},
    )


def load_items(
    data: str | Path,
    fused_inputs: Sequence[str],
    feather_sigma: float = 1.0,
    log: Callable[[str], None] | None = None,
    cache: str | Path | None = None,
) -> list[_Item]:
    """Every case of a dataset (any `load_dataset` layout), prepared in model range, with its
    baselines' fused images precomputed. Cases without a lesion mask count as lesion-free.

    `cache`: a folder where each prepared case is kept as .npy files (`_save_item`) and from
    which it is memory-mapped (`_open_item`): a run then holds only the pages it reads instead
    of every case (about 30 MB per 96x96x72 case with five baselines), and a later run on the
    same, unchanged files skips the preparation (`_item_key`). Entries are never deleted."""
    from clinfuse.baselines import BASELINES
    from clinfuse.io.dataset import load_dataset
    from clinfuse.io.nifti import load_nifti
    from clinfuse.phantom.realhead import is_test_case
    from clinfuse.preprocess.pipeline import preprocess_case
    from clinfuse.training.data import training_target

    data = Path(data)
    ignores = _ignore_paths(data)
    items = []
    for ref in load_dataset(data):
        paths = [str(p) for p in ref.paths.values()]
        if any(is_test_case(p) for p in paths):
            raise ClinfuseInputError(
                f"case {ref.case_id!r} is one of the project's test heads: never trained on", data
            )
        folder = None
        contrast = ref.meta.get("mri_contrast")
        if cache is not None:
            key = _item_key(ref, fused_inputs, feather_sigma, ignores.get(ref.case_id))
            folder = Path(cache) / f"{ref.case_id}-{key}"
            if (folder / "meta.json").is_file():
                items.append(replace(_open_item(folder), mri_contrast=contrast))
                continue
        prep = preprocess_case(ref.load())
        label = (
            np.zeros(prep.shape, np.float32)
            if prep.lesion is None
            else prep.lesion.astype(np.float32)
        )
        valid = np.ones(prep.shape, np.float32)
        if ref.case_id in ignores:
            ign, _ = load_nifti(ignores[ref.case_id])
            if ign.shape != prep.shape:
                raise ClinfuseInputError(
                    "ignore mask is not on the case's grid", ignores[ref.case_id]
                )
            valid[(ign > 0.5) & (label < 0.5)] = 0.0
        items.append(
            _Item(
                ref.case_id,
                prep.stack().astype(np.float32),
                training_target(prep, feather_sigma).astype(np.float32),
                {n: np.asarray(BASELINES[n](prep), np.float32) for n in fused_inputs},
                label,
                valid,
                prep.brain.astype(bool),
                tuple(float(s) for s in prep.spacing),
            )
        )
        if folder is not None:
            _save_item(items[-1], folder)
            items[-1] = _open_item(folder)
        items[-1].mri_contrast = contrast
        if log is not None:
            log(f"loaded {ref.case_id} {prep.shape} lesion {int(label.sum())} voxels")
    if not items:
        raise ClinfuseInputError("no cases found", data)
    return items


def _fused_channel(item: _Item, cfg: LesionTrainConfig, rng: np.random.Generator) -> np.ndarray:
    from scipy import ndimage

    u = rng.random()
    if u < cfg.p_composite or not item.baselines:
        return item.composite
    if u < cfg.p_composite + cfg.p_degraded:
        sigma = float(rng.uniform(0.3, 1.2))
        noisy = ndimage.gaussian_filter(item.composite, sigma)
        noise = float(rng.uniform(0.0, 0.1)) * rng.standard_normal(noisy.shape)
        return np.clip(noisy + noise, *MODEL_RANGE).astype(np.float32)
    names = list(item.baselines)
    return item.baselines[names[int(rng.integers(len(names)))]]


def _intensity_transforms() -> Any:
    """Channel-wise intensity augmentation of [fused, mri, ct, ct_bone] on the whole volume,
    before the mirror images are taken: a channel and its mirror get the same draw."""
    from monai.transforms import (
        Compose,
        RandGaussianNoised,
        RandScaleIntensityd,
        RandShiftIntensityd,
    )

    return Compose(
        [
            RandScaleIntensityd(keys="img", factors=0.1, prob=0.5, channel_wise=True),
            RandShiftIntensityd(keys="img", offsets=0.1, prob=0.5, channel_wise=True),
            RandGaussianNoised(keys="img", prob=0.5, std=0.05),
        ]
    )


def _transforms(cfg: LesionTrainConfig, hard: bool = False) -> Any:
    """Patches and spatial augmentation (every channel, its mirror and the labels alike).
    `hard`: crop around the sample's "hard" voxels (`_hard_negatives`) instead of around
    lesion / background voxels."""
    from monai.transforms import (
        Compose,
        RandAffined,
        RandCropByPosNegLabeld,
        RandFlipd,
        RandSpatialCropd,
        SpatialPadd,
    )

    keys = ["img", "label", "valid", "hard"] if hard else ["img", "label", "valid"]
    pos = 1.0 if hard else cfg.pos_fraction
    return Compose(
        [
            SpatialPadd(
                keys=keys, spatial_size=[int(p * 1.5) for p in cfg.patch_size], mode="edge"
            ),
            # Crop 1.5x the patch around a lesion / background voxel, then a random patch of
            # it: the lesion lands anywhere in the patch, not always at its centre. (Centred
            # crops taught the head "lesion = patch centre": 0.48 vs 0.04 on centred patches,
            # but 14,000 false voxels over sliding windows, session 3.)
            RandCropByPosNegLabeld(
                keys=keys,
                label_key="hard" if hard else "label",
                spatial_size=[int(p * 1.5) for p in cfg.patch_size],
                pos=pos,
                neg=1.0 - pos,
                num_samples=cfg.samples_per_case,
                allow_smaller=True,
            ),
            RandSpatialCropd(keys=keys, roi_size=cfg.patch_size, random_size=False),
            RandFlipd(keys=keys, prob=0.5, spatial_axis=0),
            RandAffined(
                keys=keys,
                prob=0.5,
                rotate_range=(0.17, 0.17, 0.17),
                scale_range=(0.1, 0.1, 0.1),
                mode=("bilinear", "nearest", "nearest", "nearest")[: len(keys)],
                padding_mode="border",
            ),
        ]
    )


def _crop(tf: Any, sample: dict[str, Any]) -> Any:
    """`tf(sample)` (a `_transforms` pipeline). On a lesion-free sample MONAI's
    `RandCropByPosNegLabeld` warns "Num foregrounds 0 ... setting pos_ratio to 0" for every
    crop; background-only crops are what a lesion-free case should give, so that one warning
    is silenced here (it printed once per lesion-free case and step)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Num foregrounds 0", category=UserWarning)
        return tf(sample)


def tilt_volumes(arrays: np.ndarray, yaw: float, roll: float, nearest_from: int) -> np.ndarray:
    """`arrays` (C, X, Y, Z) turned by `yaw` degrees in the x-y plane (about z) and `roll` in the
    x-z plane (about y) about the volume's centre with MONAI's `Rotate` (voxel axes), bilinear
    for channels `< nearest_from` and nearest-neighbour for the rest (masks); outside the volume
    each channel's edge value (border padding)."""
    import math

    from monai.transforms import Rotate

    angle = (0.0, math.radians(roll), math.radians(yaw))
    out = []
    for part, mode in ((arrays[:nearest_from], "bilinear"), (arrays[nearest_from:], "nearest")):
        turn = Rotate(angle, keep_size=True, mode=mode, padding_mode="border")
        out.append(np.asarray(turn(np.ascontiguousarray(part, np.float32)), np.float32))
    return np.concatenate(out)


def _sample_inputs(
    item: _Item,
    cfg: LesionTrainConfig,
    rng: np.random.Generator,
    intensity: Any,
    hard: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """One training sample on the whole volume: the network input (a fused channel, the
    sources, intensity augmentation, with `cfg.tilt_deg` a random whole-volume tilt, then (mode
    "+mirror") the mirror images and (mode "+contrast") the sequence slots of the item's
    sequence, hidden in `cfg.contrast_dropout` of the samples; `head_inputs`), and the label,
    known-label and (if given) hard-negative maps (1, *S) on the same grid."""
    from clinfuse.nn.lesion_head import head_inputs, rigid_mirror
    from clinfuse.nn.symmetry import plane_of

    img = np.concatenate([_fused_channel(item, cfg, rng)[None], item.sources])
    img = np.asarray(intensity({"img": img})["img"], np.float32)
    label, valid = np.asarray(item.label)[None], np.asarray(item.valid)[None]
    hard_map = None if hard is None else np.asarray(hard)[None]
    if cfg.tilt_deg > 0:  # (no draw when off: earlier runs' sampling stream is unchanged)
        yaw, roll = (float(v) for v in rng.uniform(-cfg.tilt_deg, cfg.tilt_deg, 2))
        n = img.shape[0]
        masks = [label, valid] + ([] if hard_map is None else [hard_map])
        out = tilt_volumes(np.concatenate([img, *masks]), yaw, roll, nearest_from=n)
        img, label, valid = out[:n], out[n : n + 1], out[n + 1 : n + 2]
        hard_map = None if hard_map is None else out[n + 2 :]
    x = torch.from_numpy(np.ascontiguousarray(img))[None]
    planes = None
    if rigid_mirror(cfg.inputs) and cfg.tilt_deg == 0:
        # the plane of the item's own MRI (remembered by content), not of its augmented copy;
        # a tilted sample's plane is estimated on the tilted MRI (`head_inputs`, no planes)
        planes = [plane_of(torch.from_numpy(np.ascontiguousarray(item.sources[0])))]
    contrast = None
    # (no draw for heads without slots: earlier runs' sampling stream is unchanged)
    if cfg.inputs.endswith("+contrast") and rng.random() >= cfg.contrast_dropout:
        contrast = item.mri_contrast
    inputs = head_inputs(cfg.inputs, x[:, :1], x[:, 1:], contrast, planes)[0].numpy()
    return inputs, label, valid, hard_map


def predict_logits(
    head: torch.nn.Module,
    fused: np.ndarray,
    sources: np.ndarray,
    roi_size: Sequence[int],
    raw: bool = False,
    contrast: str | None = None,
) -> np.ndarray:
    """Logits of the head on a whole volume (`nn.lesion_head.sliding_logits`), numpy in/out
    (`raw`: before temperature scaling; `contrast`: the MRI sequence, for heads that read it)."""
    from clinfuse.nn.lesion_head import sliding_logits, told_contrast

    f = torch.from_numpy(np.ascontiguousarray(fused, np.float32))[None, None]
    c = torch.from_numpy(np.ascontiguousarray(sources, np.float32))[None]
    with torch.no_grad(), told_contrast(head, contrast):
        out = sliding_logits(head, f, c, roi_size, raw=raw)  # type: ignore[arg-type]
    return np.asarray(out)[0, 0]


def _hard_negatives(
    head: torch.nn.Module, items: Sequence[_Item], cfg: LesionTrainConfig
) -> list[np.ndarray | None]:
    """Per training item, the head's false positives far from any lesion (float32 0/1, the
    crop label of `_transforms(hard=True)`), or None when it has none. Composite channel,
    whole volume, the head's own temperature and `cfg.threshold`."""
    from scipy import ndimage

    was_training = head.training
    head.eval()
    out: list[np.ndarray | None] = []
    for it in items:
        logits = predict_logits(
            head, it.composite, it.sources, cfg.patch_size, contrast=it.mri_contrast
        )
        fp = (1.0 / (1.0 + np.exp(-logits)) >= cfg.threshold) & it.brain & it.known
        lesion = it.label > 0.5
        if lesion.any():
            fp &= ~ndimage.binary_dilation(lesion, iterations=HARD_NEGATIVE_MARGIN)
        out.append(fp.astype(np.float32) if fp.any() else None)
    head.train(was_training)
    return out


def ghost_regions(item: _Item) -> np.ndarray | None:
    """Where a lesion case's lesion has its mirror twin (`ghost_fraction`): the voxels within
    `nn.symmetry.GHOST_MARGIN_VOXELS` of the lesion reflected about the rigid mid-sagittal plane
    of the item's MRI (`near_mirror_image`), inside the brain, of known label and more than
    `HARD_NEGATIVE_MARGIN` 26-neighbour steps from the lesion (float32 0/1, the crop label of
    `_transforms(hard=True)`); None for a lesion-free case or a twin that falls on the lesion."""
    from scipy import ndimage

    from clinfuse.nn.symmetry import mri_plane, near_mirror_image

    lesion = item.label > 0.5
    if not lesion.any():
        return None
    twin = near_mirror_image(lesion, mri_plane(item.sources[0])) & item.brain & item.known
    cube = np.ones((3,) * lesion.ndim, dtype=bool)  # 26-neighbour steps, as the twin's margin
    twin &= ~ndimage.binary_dilation(lesion, structure=cube, iterations=HARD_NEGATIVE_MARGIN)
    return twin.astype(np.float32) if twin.any() else None


def _validate(
    head: torch.nn.Module, items: Sequence[_Item], cfg: LesionTrainConfig, rule: LesionMaskRule
) -> dict[str, Any]:
    from clinfuse.metrics.segmentation import dice

    head.eval()
    dices, fp, false_cases = [], [], 0
    for it in items:
        logits = predict_logits(
            head, it.composite, it.sources, cfg.patch_size, contrast=it.mri_contrast
        )
        prob = 1.0 / (1.0 + np.exp(-logits)) * it.brain
        pred = rule.apply(prob, it.spacing, cfg.threshold, it.sources[0]) & it.known
        if it.label.any():
            dices.append(float(dice(pred, (it.label > 0.5) & it.known)))
        else:
            fp.append(int(pred.sum()))
            false_cases += bool(pred.any())
    head.train()
    return {
        "dice": float(np.mean(dices)) if dices else float("nan"),
        "fp_voxels_lesion_free": float(np.mean(fp)) if fp else float("nan"),
        "lesion_free_cases_with_a_prediction": false_cases,
    }


def _calibrate(
    head: torch.nn.Module, items: Sequence[_Item], cfg: LesionTrainConfig
) -> tuple[float, LesionMaskRule, dict[str, Any]]:
    """Temperature on the validation brains, then the mask rule: the minimum component size,
    then (with it) the secondary components' minimum mean probability, each by validation Dice
    (`cfg.rule_dice_tolerance` > 0: by HD95 among the near-best in Dice, `_pick_rule`); then,
    with `cfg.peak_rule`, the peak filter and, with `cfg.mirror_ghosts`, the ghost filter by
    the same criterion, each step among the choices under `cfg.rule_max_lesion_free_share`'s
    cap on marked lesion-free cases; then, with `cfg.lesion_gate`, the case-level gate
    (`_pick_gate`)."""
    from clinfuse.metrics.calibration import (
        calibration_scores,
        fit_temperature,
        lesion_neighbourhood,
    )
    from clinfuse.metrics.segmentation import dice, hd95

    head.eval()
    logits = [
        predict_logits(head, it.composite, it.sources, cfg.patch_size, True, it.mri_contrast)
        for it in items
    ]
    sel = [it.brain & it.known for it in items]
    z = np.concatenate([lg[m] for lg, m in zip(logits, sel, strict=True)])
    y = np.concatenate([it.label[m] > 0.5 for it, m in zip(items, sel, strict=True)])
    near = np.concatenate(
        [
            lesion_neighbourhood(it.label > 0.5, it.spacing, within=it.brain)[m]
            for it, m in zip(items, sel, strict=True)
        ]
    )
    temp = float(fit_temperature(z, y))
    scores = {}
    for name, t in (("before", 1.0), ("after", temp)):
        cal = calibration_scores(1 / (1 + np.exp(-z / t)), y, np.ones_like(y), near)
        scores[name] = {region: {"ece": c.ece, "brier": c.brier} for region, c in cal.items()}
    probs = [1 / (1 + np.exp(-lg / temp)) * it.brain for lg, it in zip(logits, items, strict=True)]

    with_hd95 = cfg.rule_dice_tolerance > 0

    lesion_free = sum(not it.label.any() for it in items)
    max_marked = None
    if cfg.rule_max_lesion_free_share < 1:
        max_marked = int(np.floor(cfg.rule_max_lesion_free_share * lesion_free + 1e-9))

    def score(rule: LesionMaskRule) -> RuleScore:
        ds, hds, found, marked = [], [], 0, 0
        for p, it in zip(probs, items, strict=True):
            pred = rule.apply(p, it.spacing, cfg.threshold, it.sources[0]) & it.known
            if not it.label.any():
                marked += bool(pred.any())
                continue
            gt = (it.label > 0.5) & it.known
            ds.append(float(dice(pred, gt)))
            if with_hd95 and pred.any() and gt.any():
                hds.append(float(hd95(pred, gt, it.spacing)))
                found += bool((pred & gt).any())
        return RuleScore(
            float(np.mean(ds)) if ds else float("nan"),
            float(np.mean(hds)) if hds else float("nan"),
            found,
            marked,
        )

    tol, found_tol = cfg.rule_dice_tolerance, cfg.rule_found_tolerance

    def pick(table: Mapping[K, RuleScore]) -> K:
        return _pick_rule(table, tol, found_tol, max_marked)

    by_pair: dict[tuple[float, float], RuleScore] = {}
    if cfg.joint_rule:
        by_pair = {
            (ml, q): score(LesionMaskRule(ml, q))
            for ml in MIN_ML_CHOICES
            for q in MIN_COMPONENT_PROB_CHOICES
        }
        best_ml, best_prob = pick(by_pair)
        by_ml = {ml: by_pair[(ml, 0.0)] for ml in MIN_ML_CHOICES}
        by_prob = {q: by_pair[(best_ml, q)] for q in MIN_COMPONENT_PROB_CHOICES}
    else:
        by_ml = {ml: score(LesionMaskRule(ml)) for ml in MIN_ML_CHOICES}
        best_ml = pick(by_ml)
        by_prob = {q: score(LesionMaskRule(best_ml, q)) for q in MIN_COMPONENT_PROB_CHOICES}
        best_prob = pick(by_prob)
    best_peak = 0.0
    by_peak: dict[float, RuleScore] = {}
    if cfg.peak_rule:
        by_peak = {
            h: score(LesionMaskRule(best_ml, best_prob, min_peak_prob=h))
            for h in MIN_PEAK_PROB_CHOICES
        }
        best_peak = pick(by_peak)
    ghosts = False
    by_ghost: dict[float, RuleScore] = {}
    if cfg.mirror_ghosts:  # 0 = off, 1 = on (ties: off, the filter that removes least)
        by_ghost = {
            g: score(LesionMaskRule(best_ml, best_prob, 0.0, bool(g), best_peak))
            for g in (0.0, 1.0)
        }
        ghosts = bool(pick(by_ghost))
    record: dict[str, Any] = {
        "temperature": temp,
        "validation_calibration": scores,
        "dice_by_min_ml": {str(k): v.dice for k, v in by_ml.items()},
        "dice_by_min_component_prob": {str(k): v.dice for k, v in by_prob.items()},
        "rule_dice_tolerance": tol,
        "rule_found_tolerance": found_tol,
        "lesion_free_validation_cases": lesion_free,
    }
    if max_marked is not None:
        record["rule_max_lesion_free_share"] = cfg.rule_max_lesion_free_share
        record["rule_max_lesion_free_marked"] = max_marked
    tables: list[tuple[str, dict[Any, RuleScore]]] = [
        ("min_ml", by_ml),
        ("min_component_prob", by_prob),
    ]
    if by_pair:  # keys "minimum mL/secondary filter"
        pairs = {f"{ml}/{q}": v for (ml, q), v in by_pair.items()}
        record["dice_by_min_ml_and_component_prob"] = {k: v.dice for k, v in pairs.items()}
        record["joint_rule"] = True
        tables.append(("min_ml_and_component_prob", pairs))
    if by_peak:
        record["dice_by_min_peak_prob"] = {str(k): v.dice for k, v in by_peak.items()}
        tables.append(("min_peak_prob", by_peak))
    if by_ghost:
        record["dice_by_mirror_ghosts"] = {str(k): v.dice for k, v in by_ghost.items()}
        tables.append(("mirror_ghosts", by_ghost))
    if with_hd95:
        for name, table in tables:
            record[f"hd95_by_{name}"] = {str(k): v.hd95 for k, v in table.items()}
            record[f"found_by_{name}"] = {str(k): v.found for k, v in table.items()}
    for name, table in tables:
        record[f"lesion_free_marked_by_{name}"] = {str(k): v.marked for k, v in table.items()}
    best_gate = 0.0
    if cfg.lesion_gate:
        gates = {}
        for g in MIN_LESION_PROB_CHOICES:
            rule = LesionMaskRule(best_ml, best_prob, g, ghosts, best_peak)
            gates[g] = _gate_score(
                [
                    rule.apply(p, it.spacing, cfg.threshold, it.sources[0]) & it.known
                    for p, it in zip(probs, items, strict=True)
                ],
                items,
            )
        best_gate = _pick_gate(gates)
        record["gate_by_min_lesion_prob"] = {str(k): v._asdict() for k, v in gates.items()}
    rule = LesionMaskRule(best_ml, best_prob, best_gate, ghosts, best_peak)
    if cfg.near_temperature:
        rule = _fit_near_temperature(probs, items, rule, temp, (z, y, near), cfg, record)
    return temp, rule, record


def _fit_near_temperature(
    probs: Sequence[np.ndarray],
    items: Sequence[_Item],
    rule: LesionMaskRule,
    temp: float,
    pooled: tuple[np.ndarray, np.ndarray, np.ndarray],
    cfg: LesionTrainConfig,
    record: dict[str, Any],
) -> LesionMaskRule:
    """`rule` with its near-mask logit factor: T / T_near, T_near fitted by NLL on the validation
    voxels (brain, known label) within `NEAR_MASK_MM` of each case's mask under `rule`; the
    record gets T_near and the calibration scores with it ("after_near"). Unchanged (and said
    so in the record) when no validation case has both classes there. `pooled`: `_calibrate`'s
    raw logits, labels and reference lesion neighbourhood over those voxels, cases in order."""
    from dataclasses import replace

    from clinfuse.metrics.calibration import (
        calibration_scores,
        fit_temperature,
        lesion_neighbourhood,
    )
    from clinfuse.nn.lesion_mask import NEAR_MASK_MM

    masks = [
        rule.apply(p, it.spacing, cfg.threshold, it.sources[0])
        for p, it in zip(probs, items, strict=True)
    ]
    sel = [it.brain & it.known for it in items]
    near = [
        lesion_neighbourhood(m, it.spacing, NEAR_MASK_MM, within=it.brain)[s]
        for m, it, s in zip(masks, items, sel, strict=True)
    ]
    z, y, ref_near = pooled
    nm = np.concatenate(near)
    if not nm.any() or y[nm].all() or not y[nm].any():
        record["near_temperature"] = None  # nothing to fit on: one temperature
        return rule
    t_near = float(fit_temperature(z, y, nm))
    rule = replace(rule, near_logit_scale=temp / t_near)
    reported = [
        rule.calibrated(p, m, it.spacing)[s]
        for p, m, it, s in zip(probs, masks, items, sel, strict=True)
    ]
    cal = calibration_scores(np.concatenate(reported), y, np.ones_like(y), ref_near)
    record["near_temperature"] = t_near
    record["near_logit_scale"] = rule.near_logit_scale
    record["validation_calibration"]["after_near"] = {
        region: {"ece": c.ece, "brier": c.brier} for region, c in cal.items()
    }
    return rule


class GateScore(NamedTuple):
    """A mask rule over every validation case: mean Dice with lesion-free cases scored 1 when
    the mask is empty and 0 otherwise (the BraTS convention), mean Dice over the cases with a
    lesion, how many of those keep a prediction, and the false mL on the lesion-free cases."""

    dice_all: float
    dice_lesion: float
    found: int
    false_ml: float


def _gate_score(preds: Sequence[np.ndarray], items: Sequence[_Item]) -> GateScore:
    from clinfuse.metrics.segmentation import dice

    with_lesion, lesion_free, found, false_ml = [], [], 0, 0.0
    for pred, it in zip(preds, items, strict=True):
        if it.label.any():
            with_lesion.append(float(dice(pred, (it.label > 0.5) & it.known)))
            found += bool(pred.any())
        else:
            lesion_free.append(0.0 if pred.any() else 1.0)
            false_ml += float(pred.sum()) * float(np.prod(it.spacing)) / 1000.0
    every = with_lesion + lesion_free
    return GateScore(
        float(np.mean(every)) if every else float("nan"),
        float(np.mean(with_lesion)) if with_lesion else float("nan"),
        found,
        false_ml,
    )


def _pick_gate(table: dict[float, GateScore]) -> float:
    """The gate with the best mean Dice over every case (`GateScore.dice_all`), ties to the
    lowest (the gate that removes least); NaN (no case) keeps the first choice."""
    return max(table, key=lambda k: (table[k].dice_all, -k))


class RuleScore(NamedTuple):
    """A mask rule on the validation cases with a lesion: mean Dice, mean HD95 (mm) over the
    lesions it leaves a prediction on (NaN if not measured), and how many lesions its mask
    overlaps (Dice > 0); and on the lesion-free cases, how many it leaves a prediction on
    (`marked`, session 30; only `_pick_rule`'s cap reads it). Until session 23 the count was of
    lesion cases with a prediction anywhere, so a far speck in a missed case counted as a find
    and the guard of `_pick_rule` kept the rules that leave specks (lesion24: minimum size 0 mL
    with HD95 18.2 mm over 0.1 mL with 12.6, for three such "finds")."""

    dice: float
    hd95: float
    found: int
    marked: int = 0


def _pick_rule(
    table: Mapping[K, RuleScore],
    tolerance: float,
    found_tolerance: float = 0.0,
    max_marked: int | None = None,
) -> K:
    """The choice (a key of `table`, in order from the filter that removes least) the
    calibration keeps.

    `tolerance` 0: the best Dice, ties to the earliest choice (the filter that removes least).
    Otherwise: among the choices within `tolerance` of the best Dice whose masks overlap at least
    (1 - `found_tolerance`) times as many lesions as the best-Dice choice's (0: at least as
    many), the lowest mean HD95 (ties: earliest).
    NaN Dice (no lesion case) compares False everywhere: the first choice is kept.
    `max_marked` (None: no cap): first keep only the choices marking at most this many
    lesion-free cases or, if none does, those marking fewest; then the above among them.
    """
    if max_marked is not None:
        fewest = min(v.marked for v in table.values())
        cap = max(max_marked, fewest)
        table = {k: v for k, v in table.items() if v.marked <= cap}
    order = {k: i for i, k in enumerate(table)}
    best = max(table, key=lambda k: (table[k].dice, -order[k]))
    if tolerance <= 0 or table[best].dice != table[best].dice:
        return best
    near = [
        k
        for k, v in table.items()
        if v.dice >= table[best].dice - tolerance
        and v.found >= (1.0 - found_tolerance) * table[best].found
    ]
    return min(near, key=lambda k: (table[k].hd95, order[k]))


def _case_sampler(
    sizes: Sequence[int], shares: Sequence[float] | None, rng: np.random.Generator
) -> Callable[[], int]:
    """Index into the concatenated training items of the next sampled case: uniform over all
    of them (`shares` None), or a data set by its share, then a case uniformly inside it."""
    total = int(sum(sizes))
    if shares is None:
        return lambda: int(rng.integers(total))
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int)
    p = np.asarray(shares, float) / float(np.sum(shares))

    def draw() -> int:
        g = int(rng.choice(len(sizes), p=p))
        return int(starts[g] + rng.integers(sizes[g]))

    return draw


def train_lesion_head(
    checkpoint: str | Path,
    data: str | Path | Sequence[str | Path],
    val_data: str | Path,
    out: str | Path,
    cfg: LesionTrainConfig | None = None,
    *,
    device: str = "cpu",
    overwrite: bool = False,
    resume: bool = False,
    log: Callable[[str], None] | None = print,
    cache: str | Path | None = None,
) -> LesionTrainResult:
    """Train a lesion head reading [fused, mri, ct, ct_bone] (and, by default, their mirror
    images: `LesionTrainConfig.inputs`) and place it into `checkpoint`.

    data / val_data: datasets with lesion masks (`clinfuse synth`, `realhead` pairs); the
    validation split selects the step, fits the temperature and the minimum lesion size.
    `data` may be several data sets; `cfg.data_shares` then sets the share of sampled cases
    each gives (else all cases are equally likely). `cache`: keep the prepared training and
    validation cases there, memory-mapped (`load_items`).
    Writes `OUT/lesion_head.ckpt` (the input checkpoint with the new head) and
    `OUT/lesion_metrics.csv`; at every validation also `OUT/lesion_last.pt` (head, optimizer,
    schedule, metrics, best state), from which `resume=True` continues an interrupted run with
    the same options. A resumed run re-seeds its patch sampling from the step it resumes at, so
    it is equivalent to, not bit-identical with, an uninterrupted one.
    """
    from monai.losses import DiceCELoss

    from clinfuse.nn.lesion_head import LesionHead
    from clinfuse.nn.precision import native_bf16
    from clinfuse.training.checkpoint import check_whole_model, read_checkpoint

    cfg = cfg or LesionTrainConfig()
    cfg.validate()
    out = Path(out)
    target_ckpt = out / "lesion_head.ckpt"
    if target_ckpt.exists() and not overwrite:
        raise ClinfuseInputError("output exists; pass --overwrite to replace it", target_ckpt)
    last_path = out / "lesion_last.pt"
    if resume and not last_path.is_file():
        raise ClinfuseInputError("nothing to resume: no lesion_last.pt in the output", out)
    if Path(checkpoint).resolve() == target_ckpt.resolve():
        raise ClinfuseInputError("the output would overwrite the input checkpoint", checkpoint)
    state = read_checkpoint(checkpoint)  # fails early and clearly on a bad checkpoint
    check_whole_model(state, checkpoint)  # the model the new head goes into
    spatial_dims = int(state["config"]["model"].get("spatial_dims", 3))
    if spatial_dims != len(cfg.patch_size):
        raise ClinfuseInputError(
            f"patch size {cfg.patch_size} does not fit a {spatial_dims}D model", checkpoint
        )
    say = log or (lambda _msg: None)
    data_sets = [data] if isinstance(data, (str, Path)) else list(data)
    if not data_sets:
        raise ClinfuseInputError("no training data set given")
    if cfg.data_shares is not None and len(cfg.data_shares) != len(data_sets):
        raise ClinfuseInputError(
            f"{len(cfg.data_shares)} data shares for {len(data_sets)} training data sets"
        )
    t_load = time.perf_counter()
    parts = [load_items(d, cfg.fused_inputs, log=None, cache=cache) for d in data_sets]
    train_items = [it for part in parts for it in part]
    val_items = load_items(val_data, (), log=None, cache=cache)
    say(
        f"{len(train_items)} training cases ({sum(bool(i.label.any()) for i in train_items)} "
        f"with a lesion), {len(val_items)} validation cases, ready in "
        f"{time.perf_counter() - t_load:.0f} s" + ("" if cache is None else f" (cache {cache})")
    )
    if cfg.data_shares is not None:
        say(
            "data shares: "
            + ", ".join(
                f"{d} ({len(p)} cases) {s:.0%}"
                for d, p, s in zip(data_sets, parts, cfg.data_shares, strict=True)
            )
        )
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device)
    torch.manual_seed(cfg.seed)
    head = LesionHead(
        spatial_dims, cfg.channels, cfg.res_units, inputs=cfg.inputs, norm=cfg.norm
    ).to(dev)
    if cfg.init_head is not None:
        _warm_start(head, cfg, spatial_dims)
    head.flip_tta.fill_(int(cfg.flip_tta))
    use_bf16 = cfg.amp == "bf16" or (cfg.amp == "auto" and native_bf16(dev))
    say(f"training precision: {'bf16 autocast' if use_bf16 else 'float32'} on {dev}")
    tf = _transforms(cfg)
    tf.set_random_state(seed=cfg.seed)
    hard_tf = _transforms(cfg, hard=True)
    hard_tf.set_random_state(seed=cfg.seed + 2)
    intensity = _intensity_transforms()
    intensity.set_random_state(seed=cfg.seed + 1)
    rng = np.random.default_rng(cfg.seed)
    sizes = [len(p) for p in parts]
    next_case = _case_sampler(sizes, cfg.data_shares, rng)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.05
    )
    loss_fn = DiceCELoss(sigmoid=True, batch=not cfg.dice_per_sample)
    columns = ["step", "loss", "lr", "seconds", "val_dice", "val_fp_voxels_lesion_free"]
    rows: list[dict[str, Any]] = []
    best: tuple[float, int, dict[str, torch.Tensor]] = (-1.0, 0, {})
    first = 1
    elapsed = 0.0  # seconds of earlier (resumed) runs
    cfg_record = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}
    if resume:
        saved = torch.load(last_path, map_location=dev, weights_only=False)
        saved["config"].setdefault("amp", "off")  # runs from before --amp trained in float32
        saved["config"].setdefault("hard_negative_fraction", 0.0)  # ... before session 9
        saved["config"].setdefault("flip_tta", False)  # ... before session 10
        saved["config"].setdefault("data_shares", None)  # ... before session 12
        saved["config"].setdefault("dice_per_sample", False)  # ... before session 13
        saved["config"].setdefault("contrast_dropout", cfg_record["contrast_dropout"])
        saved["config"].setdefault("tilt_deg", 0.0)  # ... before session 19
        later = ("mirror_ghosts", "joint_rule", "ghost_fraction", "rule_found_tolerance")
        for key in (*later, "peak_rule", "near_temperature"):  # ... sessions 24, 25 and 27
            saved["config"].setdefault(key, type(cfg_record[key])(0))
        saved["config"].setdefault("rule_max_lesion_free_share", 1.0)  # ... session 30
        if saved["config"] != cfg_record:
            diff = sorted(k for k in cfg_record if saved["config"].get(k) != cfg_record[k])
            raise ClinfuseInputError(
                f"cannot resume with different options ({', '.join(diff)})", last_path
            )
        head.load_state_dict(saved["head"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        rows = list(saved["rows"])
        best = (float(saved["best"][0]), int(saved["best"][1]), saved["best"][2])
        first, elapsed = int(saved["step"]) + 1, float(saved["seconds"])
        tf.set_random_state(seed=cfg.seed + first)
        hard_tf.set_random_state(seed=cfg.seed + 2 + first)
        intensity.set_random_state(seed=cfg.seed + 1 + first)
        rng = np.random.default_rng([cfg.seed, first])
        next_case = _case_sampler(sizes, cfg.data_shares, rng)
        say(f"resumed from step {first - 1} ({last_path})")
    start = time.perf_counter() - elapsed
    running, counted, skipped = 0.0, 0, 0
    hard_maps: list[np.ndarray | None] = [None] * len(train_items)

    def refresh_hard_negatives() -> None:
        hard_maps[:] = _hard_negatives(head, train_items, cfg)
        found = [h for h in hard_maps if h is not None]
        say(
            f"hard negatives: {len(found)} of {len(train_items)} training cases, "
            f"{int(sum(h.sum() for h in found))} false-positive voxels"
        )

    if cfg.hard_negative_fraction > 0:
        refresh_hard_negatives()
    ghost_maps: list[np.ndarray | None] = [None] * len(train_items)
    if cfg.ghost_fraction > 0:
        ghost_maps = [ghost_regions(it) for it in train_items]
        say(f"ghost patches: {sum(g is not None for g in ghost_maps)} lesion cases")
    head.train()
    for step in range(first, cfg.steps + 1):
        imgs, labels, valids = [], [], []
        for _ in range(cfg.cases_per_step):
            k = next_case()
            it = train_items[k]
            # (no draw at all when an option is off: earlier runs' sampling is unchanged)
            ghost = ghost_maps[k] is not None and rng.random() < cfg.ghost_fraction
            around = ghost_maps[k] if ghost else hard_maps[k]
            img, label, valid, hard = _sample_inputs(it, cfg, rng, intensity, around)
            sample = {"img": img, "label": label, "valid": valid}
            if ghost:
                patches = _crop(hard_tf, {**sample, "hard": hard})
            elif hard is not None and rng.random() < cfg.hard_negative_fraction:
                patches = _crop(hard_tf, {**sample, "hard": hard})
            else:
                patches = _crop(tf, sample)
            for s in patches:
                imgs.append(torch.as_tensor(np.asarray(s["img"])))
                labels.append(torch.as_tensor(np.asarray(s["label"])))
                valids.append(torch.as_tensor(np.asarray(s["valid"])))
        x = torch.stack(imgs).float().to(dev)
        y = (torch.stack(labels) > 0.5).float().to(dev)
        v = torch.stack(valids).to(dev) > 0.5
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16):
            # x holds every input channel (mirrors taken on whole volumes)
            logits = head.unet(x).float()
        # Unknown-label voxels: logit -20, label 0 -> no Dice and ~0 cross-entropy contribution.
        logits = torch.where(v, logits, torch.full_like(logits, -20.0))
        y = y * v
        loss = loss_fn(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        if bool(torch.isfinite(loss)) and bool(torch.isfinite(norm)):
            opt.step()
            running += float(loss.item())
            counted += 1
        else:  # a non-finite loss or gradient (bf16 overflow) would poison every weight
            skipped += 1
        sched.step()
        if step % cfg.val_every == 0 or step == cfg.steps:
            scores = _validate(head, val_items, cfg, LesionMaskRule())
            row = {
                "step": step,
                "loss": running / counted if counted else float("nan"),
                "lr": sched.get_last_lr()[0],
                "seconds": time.perf_counter() - start,
                "val_dice": scores["dice"],
                "val_fp_voxels_lesion_free": scores["fp_voxels_lesion_free"],
            }
            running, counted = 0.0, 0
            rows.append(row)
            if scores["dice"] > best[0]:
                best = (
                    scores["dice"],
                    step,
                    {k: t.detach().cpu().clone() for k, t in head.state_dict().items()},
                )
            with atomic_write(out / "lesion_metrics.csv") as tmp:
                with open(tmp, "w", newline="") as fh:
                    w = csv.DictWriter(fh, fieldnames=columns)
                    w.writeheader()
                    w.writerows(rows)
            with atomic_write(out / "lesion_head_best.pt") as tmp:
                torch.save({"step": best[1], "dice": best[0], "state": best[2]}, tmp)
            with atomic_write(last_path) as tmp:
                torch.save(
                    {
                        "step": step,
                        "config": cfg_record,
                        "head": {k: t.detach().cpu() for k, t in head.state_dict().items()},
                        "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(),
                        "rows": rows,
                        "best": best,
                        "seconds": row["seconds"],
                    },
                    tmp,
                )
            say(
                f"step {step}: loss {row['loss']:.4f}, val Dice {scores['dice']:.3f}, "
                f"FP voxels on lesion-free cases {scores['fp_voxels_lesion_free']:.0f}, "
                f"{row['seconds']:.0f} s"
                + (f"; {skipped} non-finite updates skipped so far" if skipped else "")
            )
            if cfg.hard_negative_fraction > 0 and step < cfg.steps:
                refresh_hard_negatives()  # the head has moved: find its false positives again

    head.load_state_dict(best[2])
    head.window.fill_(int(max(cfg.patch_size)))
    rule, calib, final = _fit_postprocessing(head, val_items, cfg)
    say(f"best step {best[1]} (val Dice {best[0]:.3f}); {_fitted(head, rule, final)}")
    head_weights = {k: t.cpu() for k, t in head.state_dict().items()}
    return _write_checkpoint(
        state,
        checkpoint,
        target_ckpt,
        head_weights,
        cfg,
        {
            "source_checkpoint": str(checkpoint),
            "data": str(data) if isinstance(data, (str, Path)) else [str(d) for d in data],
            "val_data": str(val_data),
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()},
            "best_step": best[1],
            "val_dice_at_best": best[0],
            "calibration": calib,
            **_rule_record(rule),
            "val_final": final,
            "val_cases": [i.case_id for i in val_items],
            "seconds": time.perf_counter() - start,
        },
        out / "lesion_metrics.csv",
    )


def _fit_postprocessing(
    head: Any, val_items: Sequence[_Item], cfg: LesionTrainConfig
) -> tuple[LesionMaskRule, dict[str, Any], dict[str, Any]]:
    """Fit the head's temperature and mask rule on the validation items (`_calibrate`), store
    them in its buffers, and validate with them: (rule, calibration record, final validation)."""
    temp, rule, calib = _calibrate(head, val_items, cfg)
    head.temperature.fill_(temp)
    head.set_mask_rule(rule)
    return rule, calib, _validate(head, val_items, cfg, rule)


def _rule_record(rule: LesionMaskRule) -> dict[str, Any]:
    """The fields of a head's training record that say its mask rule."""
    return {
        "min_lesion_ml": rule.min_ml,
        "min_component_prob": rule.min_component_prob,
        "min_lesion_prob": rule.min_lesion_prob,
        "mirror_ghosts": rule.drop_mirror_ghosts,
        "min_peak_prob": rule.min_peak_prob,
        "near_logit_scale": rule.near_logit_scale,
    }


def _fitted(head: Any, rule: LesionMaskRule, final: dict[str, Any]) -> str:
    return (
        f"{'flip-averaged, ' if bool(head.flip_tta) else ''}"
        f"temperature {float(head.temperature):.3f}; {rule.describe()}"
        f" -> val Dice {final['dice']:.3f}, lesion-free cases with a "
        f"prediction {final.get('lesion_free_cases_with_a_prediction', 0)}"
    )


def _write_checkpoint(
    state: dict[str, Any],
    checkpoint: str | Path,
    target: Path,
    head_weights: dict[str, torch.Tensor],
    cfg: LesionTrainConfig,
    record: dict[str, Any],
    metrics_csv: Path,
) -> LesionTrainResult:
    """The input checkpoint with the new head in place of the old one (EMA and raw weights)."""
    from clinfuse.training.checkpoint import FORMAT, load_checkpoint
    from clinfuse.training.config import config_from_dict, dump_config, to_dict

    new_model_cfg = {
        **state["config"]["model"],
        "lesion_channels": list(cfg.channels),
        "lesion_res_units": int(cfg.res_units),
        "lesion_inputs": cfg.inputs,
        "lesion_norm": cfg.norm,
    }
    new_config = config_from_dict({**state["config"], "model": new_model_cfg}, str(checkpoint))
    ema = {k: v for k, v in state["ema"].items() if not k.startswith("module.lesion_head.")}
    ema.update({f"module.lesion_head.{k}": v for k, v in head_weights.items()})
    raw = {k: v for k, v in state.get("model", {}).items() if not k.startswith("lesion_head.")}
    if raw:
        raw.update({f"lesion_head.{k}": v for k, v in head_weights.items()})
    new_state = {
        **state,
        "format": FORMAT,
        "config": to_dict(new_config),
        "config_yaml": dump_config(new_config),
        "model": raw,
        "ema": ema,
        "optimizer": None,
        "scheduler": None,
        "scaler": None,
        "extra": {**state.get("extra", {}), "lesion_head": record},
    }
    with atomic_write(target) as tmp:
        torch.save(new_state, tmp)
    load_checkpoint(target)  # the result must load (architecture check)
    return LesionTrainResult(
        target,
        metrics_csv,
        int(record["best_step"]),
        float(record["val_dice_at_best"]),
        float(record["calibration"]["temperature"]),
        float(record["min_lesion_ml"]),
        float(record.get("min_component_prob", 0.0)),
        dict(record["val_final"]),
        float(record.get("min_lesion_prob", 0.0)),
        bool(record.get("mirror_ghosts", False)),
        float(record.get("min_peak_prob", 0.0)),
        float(record.get("near_logit_scale", 1.0)),
    )


def _recalibrated(
    weights: dict[str, torch.Tensor],
    cfg: LesionTrainConfig,
    spatial_dims: int,
    val_data: str | Path,
    log: Callable[[str], None] | None,
    flip_tta: bool | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A trained head's weights with temperature and mask rule refitted on `val_data` (with
    flip test-time augmentation switched to `flip_tta` first, unless None), and the record
    fields that change."""
    from clinfuse.nn.lesion_head import LesionHead

    head = LesionHead(spatial_dims, cfg.channels, cfg.res_units, inputs=cfg.inputs, norm=cfg.norm)
    head.load_state_dict(weights)
    if flip_tta is not None:
        if flip_tta and spatial_dims != 3:
            raise ClinfuseInputError(FLIP_3D_ONLY)
        head.flip_tta.fill_(int(flip_tta))
    window = int(head.window)
    if window > 0:
        cfg = replace(cfg, patch_size=(window,) * spatial_dims)
    val_items = load_items(val_data, (), log=None)
    rule, calib, final = _fit_postprocessing(head, val_items, cfg)
    if log is not None:
        log(f"recalibrated on {len(val_items)} validation cases: {_fitted(head, rule, final)}")
    refit = {
        "calibration": calib,
        **_rule_record(rule),
        "flip_tta": bool(head.flip_tta),
        "val_final": final,
        "val_data": str(val_data),
        "val_cases": [i.case_id for i in val_items],
        "recalibrated": True,
    }
    return {k: t.detach().cpu() for k, t in head.state_dict().items()}, refit


def _head_of(state: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, torch.Tensor]]:
    """A checkpoint's lesion head: its architecture (spatial dims, inputs, channels, residual
    units, norm) and its EMA weights (float32, keys of `LesionHead.state_dict`)."""
    from clinfuse.training.checkpoint import ema_weights

    m = state["config"]["model"]
    arch = (
        int(m.get("spatial_dims", 3)),
        str(m.get("lesion_inputs")),
        tuple(int(c) for c in m.get("lesion_channels", ())),
        int(m.get("lesion_res_units", -1)),
        str(m.get("lesion_norm")),
    )
    weights = {
        k[len("lesion_head.") :]: v.float()
        for k, v in ema_weights(state).items()
        if k.startswith("lesion_head.")
    }
    return arch, weights


def _warm_start(head: Any, cfg: LesionTrainConfig, spatial_dims: int) -> None:
    """Load the lesion head of `cfg.init_head` into `head` (same architecture, or a clear error
    naming the file). Its calibration (temperature, mask rule) is reset: this run fits
    its own on the validation cases."""
    from clinfuse.training.checkpoint import read_checkpoint

    src = cfg.init_head
    assert src is not None
    have, weights = _head_of(read_checkpoint(src))
    want = (spatial_dims, cfg.inputs, tuple(cfg.channels), cfg.res_units, cfg.norm)
    if have != want and have == (*want[:1], _without_contrast(cfg.inputs), *want[2:]):
        weights = _with_sequence_slots(head, weights)  # the same head, plus zero slot weights
        have = want
    if have != want and have == (*want[:1], _shift_mirror(cfg.inputs), *want[2:]):
        have = want  # the same channels, mirrored about a rigid plane instead of a shift
    if have != want:
        raise ClinfuseInputError(
            "its lesion head (dims, inputs, channels, residual units, norm) is "
            f"{have}, this run trains {want}",
            src,
        )
    head.load_state_dict(weights)
    head.temperature.fill_(1.0)
    head.set_mask_rule(LesionMaskRule())


def _without_contrast(inputs: str) -> str:
    return inputs.removesuffix("+contrast") if inputs.endswith("+contrast") else ""


def _shift_mirror(inputs: str) -> str:
    """The shift-only mode with the channels of a "+rigid-mirror" mode ("" for other modes)."""
    return inputs.replace("+rigid-mirror", "+mirror") if "+rigid-mirror" in inputs else ""


def _with_sequence_slots(
    head: torch.nn.Module, weights: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """A head's weights widened for `head`'s extra input channels (the sequence slots): every
    tensor whose shape differs from `head`'s only in axis 1 (the first layer's input channels)
    gets zeros for the new channels, so the widened head starts computing exactly what the
    old one did, whatever the slots hold."""
    target = head.state_dict()
    out = {}
    for k, v in weights.items():
        want = target.get(k)
        if (
            want is not None
            and want.ndim == v.ndim >= 2
            and want.shape[1] > v.shape[1]
            and want.shape[:1] + want.shape[2:] == v.shape[:1] + v.shape[2:]
        ):
            pad = torch.zeros((v.shape[0], want.shape[1] - v.shape[1], *v.shape[2:]), dtype=v.dtype)
            v = torch.cat([v, pad], dim=1)
        out[k] = v
    return out


def transplant_lesion_head(
    head_checkpoint: str | Path,
    target_checkpoint: str | Path,
    out: str | Path,
    *,
    recalibrate_on: str | Path | None = None,
    flip_tta: bool | None = None,
    rule_dice_tolerance: float = 0.0,
    rule_found_tolerance: float = 0.0,
    rule_max_lesion_free_share: float = 1.0,
    lesion_gate: bool = False,
    mirror_ghosts: bool = False,
    joint_rule: bool = False,
    peak_rule: bool = False,
    near_temperature: bool = False,
    log: Callable[[str], None] | None = print,
) -> LesionTrainResult:
    """Write `out` = `target_checkpoint` (e.g. a newer denoiser) with the lesion head of
    `head_checkpoint` (a `train_lesion_head` output): weights, calibration buffers, `lesion_*`
    config fields and the training record. The head reads the fused image and the sources, not
    the denoiser, so it moves between checkpoints of the same spatial dimension unchanged.

    `recalibrate_on` (a validation dataset): refit the head's temperature and mask rule there
    first, as the end of training does (`_fit_postprocessing`), without changing a weight;
    for a head trained before a post-processing option existed. `flip_tta` (needs
    `recalibrate_on`): switch the head's flip test-time augmentation on or off before the
    refit; None keeps the head's setting."""
    from clinfuse.training.checkpoint import check_whole_model, read_checkpoint

    out = Path(out)
    if out.resolve() in (Path(head_checkpoint).resolve(), Path(target_checkpoint).resolve()):
        raise ClinfuseInputError("the output would overwrite an input checkpoint", out)
    if flip_tta is not None and recalibrate_on is None:
        raise ClinfuseInputError(
            "switching flip test-time augmentation changes the logits: recalibrate on a "
            "validation dataset as well"
        )
    if (
        rule_dice_tolerance > 0
        or rule_found_tolerance > 0
        or rule_max_lesion_free_share < 1
        or lesion_gate
        or mirror_ghosts
        or joint_rule
        or peak_rule
        or near_temperature
    ) and recalibrate_on is None:
        raise ClinfuseInputError(
            "a rule criterion, gate, peak or ghost filter or a near-mask temperature only "
            "applies when recalibrating (--recalibrate)"
        )
    src = read_checkpoint(head_checkpoint)
    record = (src.get("extra") or {}).get("lesion_head")
    if not record:
        raise ClinfuseInputError(
            "has no trained lesion head (train-lesion output)", head_checkpoint
        )
    target = read_checkpoint(target_checkpoint)
    check_whole_model(target, target_checkpoint)
    dims = [int(s["config"]["model"].get("spatial_dims", 3)) for s in (src, target)]
    if dims[0] != dims[1]:
        raise ClinfuseInputError(
            f"a {dims[0]}D head cannot go into a {dims[1]}D model", target_checkpoint
        )
    (_, inputs, channels, res_units, norm), head = _head_of(src)
    cfg = LesionTrainConfig(
        inputs=inputs,
        channels=channels,
        res_units=res_units,
        norm=norm,
        rule_dice_tolerance=rule_dice_tolerance,
        rule_found_tolerance=rule_found_tolerance,
        rule_max_lesion_free_share=rule_max_lesion_free_share,
        lesion_gate=lesion_gate,
        mirror_ghosts=mirror_ghosts,
        joint_rule=joint_rule,
        peak_rule=peak_rule,
        near_temperature=near_temperature,
    )
    cfg.validate()
    record = {**record, "transplanted_from": str(head_checkpoint)}
    if recalibrate_on is not None:
        head, refit = _recalibrated(head, cfg, dims[0], recalibrate_on, log, flip_tta)
        record.update(refit)
    out.parent.mkdir(parents=True, exist_ok=True)
    return _write_checkpoint(
        target,
        target_checkpoint,
        out,
        head,
        cfg,
        record,
        Path(head_checkpoint).parent / "lesion_metrics.csv",
    )
