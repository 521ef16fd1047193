"""Training data: prepared cases cached in memory, a patient-level split, patch batches with
registration jitter, and the training target (the feathered ROI composite).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clinfuse.baselines.composite import roi_composite
from clinfuse.errors import ClinfuseInputError
from clinfuse.preprocess.prepared import PreparedCase
from clinfuse.training.config import DataConfig, JitterConfig
from clinfuse.training.jitter import AIR, JitterParams, apply_jitter, sample_jitter


@dataclass
class Batch:
    """One micro-batch. Images float32 in model range; masks float32 in {0, 1}.

    cond (B, 3, *P) = [mri, ct, ct_bone]; target, brain, bone, lesion (B, 1, *P);
    has_lesion (B,) bool (whether the case has a lesion mask at all); spacing per sample (mm).
    """

    cond: torch.Tensor
    target: torch.Tensor
    brain: torch.Tensor
    bone: torch.Tensor
    lesion: torch.Tensor
    has_lesion: torch.Tensor
    spacing: list[tuple[float, ...]]
    case_ids: list[str] = field(default_factory=list)
    jitter: list[JitterParams] = field(default_factory=list)

    def to(self, device: torch.device) -> Batch:
        """Copy the tensors to `device`."""
        return Batch(
            self.cond.to(device),
            self.target.to(device),
            self.brain.to(device),
            self.bone.to(device),
            self.lesion.to(device),
            self.has_lesion.to(device),
            self.spacing,
            self.case_ids,
            self.jitter,
        )


def training_target(case: PreparedCase, feather_sigma: float) -> np.ndarray:
    """The clean image x0 the model learns: MRI in the brain, bone-window CT in the skull, their
    average elsewhere, mask edges feathered. There is no ground-truth fused image (TRAINING.md)."""
    return roi_composite(case.mri, case.ct_bone, case.brain, case.bone, feather_sigma=feather_sigma)


def _pad_to(arr: np.ndarray, shape: Sequence[int], value: float | bool) -> np.ndarray:
    """Pad symmetrically so every axis is at least `shape`."""
    pads = []
    for n, p in zip(arr.shape, shape, strict=False):
        extra = max(0, p - n)
        pads.append((extra // 2, extra - extra // 2))
    if not any(a or b for a, b in pads):
        return arr
    return np.pad(arr, pads, mode="constant", constant_values=value)


def pad_case(case: PreparedCase, shape: Sequence[int]) -> PreparedCase:
    """The case padded with air / False so each axis is at least `shape` (patch smaller than
    the image is the usual case; this handles thin 3D slabs and small 2D images)."""
    if all(n >= p for n, p in zip(case.shape, shape, strict=False)):
        return case
    lesion = None if case.lesion is None else _pad_to(case.lesion, shape, False)
    return PreparedCase(
        case_id=case.case_id,
        mri=_pad_to(case.mri, shape, AIR),
        ct=_pad_to(case.ct, shape, AIR),
        ct_bone=_pad_to(case.ct_bone, shape, AIR),
        affine=case.affine,
        brain=_pad_to(case.brain, shape, False),
        bone=_pad_to(case.bone, shape, False),
        lesion=lesion,
        ct_kind=case.ct_kind,
        mask_source=case.mask_source,
        record=case.record,
    )


def centre_crop(case: PreparedCase, shape: Sequence[int]) -> PreparedCase:
    """Centre crop (after padding if needed) to exactly `shape`: the fixed validation view."""
    case = pad_case(case, shape)
    sl = tuple(
        slice((n - p) // 2, (n - p) // 2 + p) for n, p in zip(case.shape, shape, strict=True)
    )
    return PreparedCase(
        case_id=case.case_id,
        mri=case.mri[sl],
        ct=case.ct[sl],
        ct_bone=case.ct_bone[sl],
        affine=case.affine,
        brain=case.brain[sl],
        bone=case.bone[sl],
        lesion=None if case.lesion is None else case.lesion[sl],
        ct_kind=case.ct_kind,
        mask_source=case.mask_source,
        record=case.record,
    )


class TrainData:
    """Training and validation cases (in memory) and the patch sampler.

    Sampling is a pure function of the `numpy.random.Generator` it is given, so a run that
    derives one generator per (seed, step, micro-batch, rank) is exactly reproducible.
    """

    def __init__(
        self,
        train: Sequence[PreparedCase],
        val: Sequence[PreparedCase],
        cfg: DataConfig,
        source: str | None = None,
        patients: dict[str, str] | None = None,
    ) -> None:
        if not train:
            raise ClinfuseInputError("no training cases left after the split", source)
        ndim = len(cfg.patch_size)
        for case in [*train, *val]:
            if case.ndim != ndim:
                raise ClinfuseInputError(
                    f"case '{case.case_id}' is {case.ndim}D but the config's patch_size "
                    f"{tuple(cfg.patch_size)} is {ndim}D: use a {case.ndim}D preset",
                    source,
                )
        self.cfg = cfg
        self.ndim = ndim
        self.patients = dict(patients or {})  # case id -> patient, for the run log
        self.train = [pad_case(c, cfg.patch_size) for c in train]
        val_shape = cfg.val_patch_size
        self.val = [c if val_shape is None else centre_crop(c, val_shape) for c in val]
        self._targets = [training_target(c, cfg.feather_sigma) for c in self.train]
        # Patch centres are drawn from the head (brain or bone) or, for a share, the lesion.
        self._head_idx = [np.flatnonzero(c.brain | c.bone) for c in self.train]
        self._lesion_idx = [
            np.flatnonzero(c.lesion) if c.lesion is not None else np.zeros(0, np.int64)
            for c in self.train
        ]

    @property
    def train_ids(self) -> list[str]:
        return [c.case_id for c in self.train]

    @property
    def val_ids(self) -> list[str]:
        return [c.case_id for c in self.val]

    def _centre(self, rng: np.random.Generator, i: int) -> np.ndarray:
        shape = self.train[i].shape
        use_lesion = rng.random() < self.cfg.lesion_fraction
        pick = rng.random()
        pool = self._lesion_idx[i] if use_lesion and self._lesion_idx[i].size else None
        if pool is None:
            pool = self._head_idx[i]
        if pool.size == 0:
            return np.array([n // 2 for n in shape])
        flat = pool[min(int(pick * pool.size), pool.size - 1)]
        return np.array(np.unravel_index(flat, shape))

    def sample(self, rng: np.random.Generator, jitter_cfg: JitterConfig) -> dict[str, Any]:
        """One training patch as numpy arrays (plus its case id and jitter parameters)."""
        i = int(rng.integers(len(self.train)))
        case = self.train[i]
        params = sample_jitter(rng, jitter_cfg, case.spacing)
        centre = self._centre(rng, i)
        patch = self.cfg.patch_size
        start = [
            int(np.clip(c - p // 2, 0, n - p))
            for c, p, n in zip(centre, patch, case.shape, strict=False)
        ]
        sl = tuple(slice(s, s + p) for s, p in zip(start, patch, strict=False))
        ct, ct_bone, bone = case.ct, case.ct_bone, case.bone
        target = self._targets[i]
        if params.applied:
            # The CT side moves, the MRI side (brain, lesion) stays: as if the CT had been
            # registered slightly wrong. The target follows the moved CT, so the model learns
            # to take bone from where the CT shows it.
            moved = apply_jitter({"ct": ct, "ct_bone": ct_bone, "bone": bone}, params, case.spacing)
            ct, ct_bone, bone = moved["ct"], moved["ct_bone"], moved["bone"]
            target = roi_composite(
                case.mri, ct_bone, case.brain, bone, feather_sigma=self.cfg.feather_sigma
            )
        lesion = case.lesion if case.lesion is not None else np.zeros(case.shape, bool)
        return {
            "cond": np.stack([case.mri[sl], ct[sl], ct_bone[sl]]).astype(np.float32),
            "target": target[sl][None].astype(np.float32),
            "brain": case.brain[sl][None].astype(np.float32),
            "bone": bone[sl][None].astype(np.float32),
            "lesion": lesion[sl][None].astype(np.float32),
            "has_lesion": case.lesion is not None,
            "spacing": case.spacing,
            "case_id": case.case_id,
            "jitter": params,
        }

    def sample_batch(
        self, rng: np.random.Generator, batch_size: int, jitter_cfg: JitterConfig
    ) -> Batch:
        """`batch_size` patches drawn with `rng` (CPU tensors)."""
        items = [self.sample(rng, jitter_cfg) for _ in range(batch_size)]
        return collate(items)

    def val_batches(self, limit: int | None = None) -> list[Batch]:
        """One batch per validation case (whole, or its centre crop), no jitter."""
        out = []
        for case in self.val[: limit if limit is not None else len(self.val)]:
            lesion = case.lesion if case.lesion is not None else np.zeros(case.shape, bool)
            item = {
                "cond": case.stack(),
                "target": training_target(case, self.cfg.feather_sigma)[None],
                "brain": case.brain[None].astype(np.float32),
                "bone": case.bone[None].astype(np.float32),
                "lesion": lesion[None].astype(np.float32),
                "has_lesion": case.lesion is not None,
                "spacing": case.spacing,
                "case_id": case.case_id,
                "jitter": None,
            }
            out.append(collate([item]))
        return out


def collate(items: list[dict[str, Any]]) -> Batch:
    """Stack sample dicts into a `Batch`."""

    def stack(key: str) -> torch.Tensor:
        return torch.from_numpy(np.stack([it[key] for it in items]))

    return Batch(
        cond=stack("cond"),
        target=stack("target"),
        brain=stack("brain"),
        bone=stack("bone"),
        lesion=stack("lesion"),
        has_lesion=torch.tensor([bool(it["has_lesion"]) for it in items]),
        spacing=[tuple(it["spacing"]) for it in items],
        case_ids=[it["case_id"] for it in items],
        jitter=[it["jitter"] for it in items if it["jitter"] is not None],
    )


def patient_of(case_id: str, meta: dict[str, Any] | None, pattern: str | None) -> str:
    """The group a case belongs to for splitting: never split one patient across train/val.

    Order: `meta['patient_id']` / `meta['patient']` if the loader recorded it, then
    `pattern` (regex, group 1; e.g. `^(\\d+)_` for Harvard ids like `16_007`), else the case id.
    """
    meta = meta or {}
    for key in ("patient_id", "patient"):
        if meta.get(key) not in (None, ""):
            return str(meta[key])
    if pattern:
        m = re.search(pattern, case_id)
        if m:
            return m.group(1) if m.groups() else m.group(0)
    return case_id


def split_by_patient(
    patients: dict[str, str], cfg: DataConfig, source: str | None = None
) -> tuple[list[str], list[str], list[str]]:
    """(train, val, test) case ids from {case_id: patient}. Test patients are removed first;
    validation is `cfg.val_patients` or a seeded `val_fraction` of the remaining patients."""
    groups = sorted(set(patients.values()))
    for key, wanted in (("val_patients", cfg.val_patients), ("test_patients", cfg.test_patients)):
        missing = sorted(set(wanted) - set(groups))
        if missing:
            raise ClinfuseInputError(
                f"config key 'data.{key}' names patients not in the dataset: {missing} "
                f"(dataset patients: {groups[:20]})",
                source,
            )
    overlap = set(cfg.val_patients) & set(cfg.test_patients)
    if overlap:
        raise ClinfuseInputError(f"patients {sorted(overlap)} are both validation and test", source)
    test = set(cfg.test_patients)
    rest = [g for g in groups if g not in test]
    if cfg.val_patients:
        val = set(cfg.val_patients)
    else:
        n_val = max(1, round(cfg.val_fraction * len(rest))) if cfg.val_fraction > 0 else 0
        if n_val >= len(rest):
            raise ClinfuseInputError(
                f"only {len(rest)} patient(s): cannot hold out {n_val} for validation", source
            )
        order = np.random.default_rng(cfg.split_seed).permutation(len(rest))
        val = {rest[j] for j in order[:n_val]}
    ids = sorted(patients)
    return (
        [c for c in ids if patients[c] not in val and patients[c] not in test],
        [c for c in ids if patients[c] in val],
        [c for c in ids if patients[c] in test],
    )


def _ref_id(ref: Any) -> str:
    for attr in ("case_id", "id", "name"):
        value = getattr(ref, attr, None)
        if value:
            return str(value)
    raise TypeError(f"case reference {ref!r} has no case id")


def _ref_meta(ref: Any) -> dict[str, Any]:
    meta = dict(getattr(ref, "meta", None) or {})
    for attr in ("patient_id", "patient"):
        value = getattr(ref, attr, None)
        if value not in (None, ""):
            meta.setdefault("patient_id", value)
    return meta


def load_train_data(
    path: str | Path,
    cfg: DataConfig,
    progress: Callable[[str], None] | None = None,
) -> TrainData:
    """Load a dataset (any `clinfuse.io.dataset.load_dataset` layout), split it by patient,
    preprocess the train and validation cases once and keep them in memory. Test patients
    are never loaded."""
    from clinfuse.io.dataset import load_dataset
    from clinfuse.preprocess.pipeline import preprocess_case

    source = str(path)
    if not Path(path).exists():
        raise ClinfuseInputError("dataset not found", source)
    refs = load_dataset(path)
    if not refs:
        raise ClinfuseInputError("the dataset has no cases", source)
    by_id = {_ref_id(r): r for r in refs}
    patients = {cid: patient_of(cid, _ref_meta(r), cfg.patient_pattern) for cid, r in by_id.items()}
    train_ids, val_ids, _ = split_by_patient(patients, cfg, source)
    if len(val_ids) > cfg.max_val_cases:
        # Evenly spread over the held-out cases, ends excluded (for slices: neither the skull
        # base nor the vertex, which are atypical).
        pick = np.linspace(0, len(val_ids) - 1, cfg.max_val_cases + 2)[1:-1].round().astype(int)
        val_ids = [val_ids[i] for i in pick]

    def prepare(cid: str) -> PreparedCase:
        if progress is not None:
            progress(cid)
        case = by_id[cid].load()
        kwargs: dict[str, Any] = {"auto_masks": cfg.auto_masks}
        if cfg.spacing is not None:
            kwargs["spacing"] = tuple(cfg.spacing)
        return preprocess_case(case, **kwargs)

    train = [prepare(c) for c in train_ids]
    val = [prepare(c) for c in val_ids]
    return TrainData(train, val, cfg, source, patients=patients)
