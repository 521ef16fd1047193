"""The lesion head's MRI-sequence slots (session 19): inputs "fused+sources+mirror+contrast",
`told_contrast`, where a case's sequence comes from (manifest column, truth.json, APIS, the
`fuse --mri-contrast` option) and the warm start from a head without slots."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from clinfuse.choices import MRI_CONTRASTS, parse_mri_contrast
from clinfuse.errors import ClinfuseInputError
from clinfuse.nn.lesion_head import (
    IN_CHANNELS,
    LesionHead,
    contrast_slots,
    head_inputs,
    told_contrast,
)

SLOTTED = "fused+sources+mirror+contrast"


def test_parse_mri_contrast_names_unknown_and_refuses_the_rest():
    assert parse_mri_contrast("flair") == "FLAIR"
    assert parse_mri_contrast(" t1 ") == "T1"
    for unknown in (None, "", "unknown", "UNKNOWN"):
        assert parse_mri_contrast(unknown) is None
    with pytest.raises(ClinfuseInputError, match="T1, T2, ADC, FLAIR, DWI, unknown") as err:
        parse_mri_contrast("PD", "cases.csv")
    assert "cases.csv" in str(err.value)


def test_sequence_slots_hold_the_mri_in_its_sequences_slot_only():
    mri = torch.randn(2, 1, 8, 8, 6)
    for k, name in enumerate(MRI_CONTRASTS):
        slots = contrast_slots(mri, name.lower())
        assert slots.shape == (2, len(MRI_CONTRASTS), 8, 8, 6)
        torch.testing.assert_close(slots[:, k : k + 1], mri)
        assert float(slots.abs().sum()) == pytest.approx(float(mri.abs().sum()))
    assert float(contrast_slots(mri, None).abs().sum()) == 0.0  # unknown: every slot zero
    x0, cond = torch.randn(1, 1, 8, 8, 6), torch.randn(1, 3, 8, 8, 6)
    x = head_inputs(SLOTTED, x0, cond, "T2")
    assert x.shape[1] == IN_CHANNELS[SLOTTED] == 12
    torch.testing.assert_close(x[:, :7], head_inputs("fused+sources+mirror", x0, cond))
    torch.testing.assert_close(x[:, 7 + MRI_CONTRASTS.index("T2")], cond[:, 0])


def test_told_contrast_changes_a_slotted_head_only_and_is_restored():
    torch.manual_seed(0)
    head = LesionHead(3, (4, 8), 1, inputs=SLOTTED).eval()
    with torch.no_grad():  # make the slot weights matter (a fresh head's are random anyway)
        first = next(m for m in head.unet.modules() if isinstance(m, torch.nn.Conv3d))
        first.weight[:, 7:] += 0.5
    x0, cond = torch.randn(1, 1, 8, 8, 8), torch.randn(1, 3, 8, 8, 8)
    with torch.no_grad():
        unknown = head(x0, cond)
        with told_contrast(head, "T1"):
            assert head.mri_contrast == "T1"
            t1 = head(x0, cond)
        with told_contrast(head, "T2"):
            t2 = head(x0, cond)
    assert head.mri_contrast is None  # restored
    assert not torch.allclose(t1, t2) and not torch.allclose(t1, unknown)
    with pytest.raises(ClinfuseInputError, match="MRI contrast"), told_contrast(head, "PD"):
        pass
    # a model holding the head works the same way; a head without slots ignores it
    plain = LesionHead(3, (4, 8), 1, inputs="fused+sources+mirror").eval()
    holder = torch.nn.Module()
    holder.lesion_head = plain
    with torch.no_grad():
        untold = plain(x0, cond)
        with told_contrast(holder, "FLAIR"):
            assert plain.mri_contrast == "FLAIR"
            torch.testing.assert_close(plain(x0, cond), untold)
    assert plain.mri_contrast is None


def test_flip_averaged_slotted_head_mirrors_the_slots_too():
    torch.manual_seed(1)
    head = LesionHead(3, (4, 8), 1, inputs=SLOTTED).eval()
    head.flip_tta.fill_(1)
    x0, cond = torch.randn(1, 1, 8, 8, 8), torch.randn(1, 3, 8, 8, 8)
    with torch.no_grad(), told_contrast(head, "DWI"):
        a = head(x0, cond)
        b = head(x0.flip(2), cond.flip(2)).flip(2)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)  # symmetric by construction


def test_warm_start_widens_a_head_without_slots_to_the_same_function(monkeypatch):
    from clinfuse.training import lesion as lesion_mod
    from clinfuse.training.lesion import LesionTrainConfig, _warm_start, _with_sequence_slots

    torch.manual_seed(2)
    old = LesionHead(3, (4, 8), 1, inputs="fused+sources+mirror").eval()
    new = LesionHead(3, (4, 8), 1, inputs=SLOTTED).eval()
    new.load_state_dict(_with_sequence_slots(new, old.state_dict()))
    x0, cond = torch.randn(1, 1, 16, 16, 16), torch.randn(1, 3, 16, 16, 16)
    with torch.no_grad():
        want = old(x0, cond)
        for name in (None, *MRI_CONTRASTS):
            with told_contrast(new, name):
                torch.testing.assert_close(new(x0, cond), want, atol=1e-5, rtol=1e-5)
    # through _warm_start: a checkpoint whose head has no slots starts the slotted run
    arch = (3, "fused+sources+mirror", (4, 8), 1, "instance")
    monkeypatch.setattr(lesion_mod, "_head_of", lambda _state: (arch, old.state_dict()))
    monkeypatch.setattr("clinfuse.training.checkpoint.read_checkpoint", lambda _p: {})
    cfg = LesionTrainConfig(inputs=SLOTTED, channels=(4, 8), res_units=1, init_head="x.ckpt")
    got = LesionHead(3, (4, 8), 1, inputs=SLOTTED)
    _warm_start(got, cfg, 3)
    got.eval()
    with torch.no_grad(), told_contrast(got, "T1"):
        torch.testing.assert_close(got(x0, cond), want, atol=1e-5, rtol=1e-5)
    # another architecture (other widths) is still refused
    bad = LesionTrainConfig(inputs=SLOTTED, channels=(8, 16), res_units=1, init_head="x.ckpt")
    with pytest.raises(ClinfuseInputError, match="lesion head"):
        _warm_start(LesionHead(3, (8, 16), 1, inputs=SLOTTED), bad, 3)


def _write_case(folder, truth=None):
    import nibabel as nib

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for role in ("mri", "ct"):
        nib.save(
            nib.Nifti1Image(rng.random((8, 8, 8)).astype(np.float32), np.eye(4)),
            str(folder / f"{role}.nii.gz"),
        )
    if truth is not None:
        (folder / "truth.json").write_text(json.dumps(truth))


def test_datasets_carry_the_mri_sequence_from_manifest_or_truth_file(tmp_path):
    from clinfuse.io.dataset import load_dataset

    _write_case(tmp_path / "a", {"config": {"mri_contrast": "T2"}})  # a phantom's truth.json
    _write_case(tmp_path / "b", {"mri_contrast": "FLAIR"})  # a real-anatomy pair's
    _write_case(tmp_path / "c")  # nothing said
    refs = {r.case_id: r for r in load_dataset(tmp_path)}
    assert refs["a"].meta["mri_contrast"] == "T2"
    assert refs["b"].meta["mri_contrast"] == "FLAIR"
    assert "mri_contrast" not in refs["c"].meta
    # a manifest column wins over the truth file; "unknown" and empty behave as documented
    man = tmp_path / "cases.csv"
    with man.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["case_id", "mri", "ct", "mri_contrast"])
        w.writerow(["a", "a/mri.nii.gz", "a/ct.nii.gz", "dwi"])
        w.writerow(["b", "b/mri.nii.gz", "b/ct.nii.gz", ""])
        w.writerow(["c", "c/mri.nii.gz", "c/ct.nii.gz", "unknown"])
    refs = {r.case_id: r for r in load_dataset(man)}
    assert refs["a"].meta["mri_contrast"] == "DWI"
    assert refs["b"].meta["mri_contrast"] == "FLAIR"  # empty: the truth file
    assert "mri_contrast" not in refs["c"].meta
    case = refs["a"].load()
    assert case.meta["mri_contrast"] == "DWI"
    # a bad value names the manifest and the case
    man.write_text("case_id,mri,ct,mri_contrast\na,a/mri.nii.gz,a/ct.nii.gz,T3\n")
    with pytest.raises(ClinfuseInputError, match="MRI contrast") as err:
        load_dataset(man)
    assert "cases.csv" in str(err.value) and "'a'" in str(err.value)


def test_training_items_carry_the_sequence_and_samples_hide_it_as_asked(tmp_path):
    from clinfuse.phantom import PhantomConfig, write_phantom_dataset
    from clinfuse.training.lesion import LesionTrainConfig, _sample_inputs, load_items

    cfg = PhantomConfig(shape=(24, 24, 16), spacing=(3.0, 3.0, 3.0), supersample=1)
    data = write_phantom_dataset(tmp_path / "d", 2, cfg, seed=0, contrast="FLAIR")
    items = load_items(data, (), cache=tmp_path / "cache")
    assert [it.mri_contrast for it in items] == ["FLAIR", "FLAIR"]
    again = load_items(data, (), cache=tmp_path / "cache")  # from the cache: still told
    assert [it.mri_contrast for it in again] == ["FLAIR", "FLAIR"]
    k = 7 + MRI_CONTRASTS.index("FLAIR")

    def slot_share(dropout: float) -> float:
        tcfg = LesionTrainConfig(inputs=SLOTTED, contrast_dropout=dropout, p_composite=1.0)
        rng = np.random.default_rng(0)
        ident = lambda d: d  # noqa: E731 (no intensity augmentation)
        told = [
            np.abs(_sample_inputs(items[0], tcfg, rng, ident)[0][k]).sum() > 0 for _ in range(40)
        ]
        return float(np.mean(told))

    assert slot_share(0.0) == 1.0
    assert slot_share(1.0) == 0.0
    assert 0.1 < slot_share(0.5) < 0.9
    with pytest.raises(ClinfuseInputError, match="contrast_dropout"):
        LesionTrainConfig(inputs=SLOTTED, contrast_dropout=1.5).validate()


def test_preprocessing_records_the_sequence_for_the_head():
    from clinfuse.phantom import PhantomConfig, generate_phantom
    from clinfuse.preprocess.pipeline import preprocess_case

    cfg = PhantomConfig(
        shape=(24, 24, 16), spacing=(3.0, 3.0, 3.0), supersample=1, mri_contrast="ADC"
    )
    case = generate_phantom(cfg, 0).case
    assert preprocess_case(case).mri_contrast == "ADC"
    case.meta.pop("mri_contrast")
    assert preprocess_case(case).mri_contrast is None


def test_tilt_turns_image_and_masks_together_and_rigidly():
    """`train-lesion --tilt-deg`: `tilt_volumes` is a rigid turn about the centre (a point keeps
    its distance from it, on an anisotropic box too) with masks nearest-neighbour; 0 degrees
    changes nothing, and a sample's label still covers its lesion after the turn."""
    from clinfuse.training.lesion import tilt_volumes

    shape = (40, 32, 24)
    img = np.zeros((1, *shape), np.float32)
    idx = np.indices(shape).astype(np.float64)
    c = [(s - 1) / 2 for s in shape]
    spot = ((idx[0] - c[0] - 10) ** 2 + (idx[1] - c[1]) ** 2 + (idx[2] - c[2]) ** 2) < 4
    img[0][spot] = 1.0
    stack = np.concatenate([img, spot[None].astype(np.float32)])
    same = tilt_volumes(stack, 0.0, 0.0, nearest_from=1)
    np.testing.assert_allclose(same, stack, atol=1e-5)
    for yaw, roll in ((30.0, 0.0), (0.0, 25.0), (-20.0, 15.0)):
        out = tilt_volumes(stack, yaw, roll, nearest_from=1)
        mask = out[1] > 0.5
        assert set(np.unique(out[1])) <= {0.0, 1.0}  # nearest-neighbour for the mask
        centre = np.array([idx[k][mask].mean() for k in range(3)])
        assert abs(np.linalg.norm(centre - np.array(c)) - 10.0) < 1.0  # rigid
        assert np.linalg.norm(centre - (np.array(c) + [10, 0, 0])) > 3.0  # it did move
        assert out[0][mask].mean() > 0.6 and out[0][~mask].max() < 0.9  # image follows label


def test_tilted_training_samples_keep_label_and_image_aligned(tmp_path):
    from clinfuse.phantom import PhantomConfig, write_phantom_dataset
    from clinfuse.training.lesion import LesionTrainConfig, _sample_inputs, load_items

    cfg = PhantomConfig(shape=(32, 32, 24), spacing=(3.0, 3.0, 3.0), supersample=1)
    data = write_phantom_dataset(tmp_path / "d", 1, cfg, seed=3, contrast="T2", lesion="ischaemic")
    item = load_items(data, ())[0]
    ident = lambda d: d  # noqa: E731 (no intensity augmentation)
    plain = LesionTrainConfig(p_composite=1.0)
    x0, lab0, val0, hard0 = _sample_inputs(item, plain, np.random.default_rng(0), ident)
    np.testing.assert_array_equal(lab0[0], item.label)  # no tilt: the item's own maps
    assert hard0 is None and x0.shape[0] == 7
    tilted = LesionTrainConfig(p_composite=1.0, tilt_deg=10.0)
    hard = (item.brain & (item.label < 0.5)).astype(np.float32)
    x, lab, val, h = _sample_inputs(item, tilted, np.random.default_rng(0), ident, hard)
    assert not np.array_equal(lab[0], item.label) and h is not None and h.shape == lab.shape
    assert abs(lab.sum() - item.label.sum()) < 0.2 * item.label.sum()  # a turn, not a crop
    # the MRI channel inside the turned label still shows the T2 lesion (brighter than brain)
    les, brain = lab[0] > 0.5, (h[0] > 0.5)
    assert x[1][les].mean() > x[1][brain].mean()
    with pytest.raises(ClinfuseInputError, match="tilt_deg"):
        LesionTrainConfig(tilt_deg=90).validate()
