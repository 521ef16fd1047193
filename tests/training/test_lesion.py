"""`clinfuse train-lesion` / `train_lesion_head`: the lesion head that reads [fused, MRI, CT,
CT bone], its calibration (temperature, minimum lesion size) and the `--lesion-head` scorer."""

from __future__ import annotations

import csv
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from clinfuse.cli import app
from clinfuse.errors import ClinfuseInputError
from clinfuse.training.lesion import (
    MIN_COMPONENT_PROB_CHOICES,
    MIN_LESION_PROB_CHOICES,
    MIN_PEAK_PROB_CHOICES,
)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    from clinfuse.phantom import PhantomConfig, write_phantom_dataset

    root = tmp_path_factory.mktemp("data")
    cfg = PhantomConfig(shape=(24, 24, 16), spacing=(3.0, 3.0, 3.0), supersample=1)
    train = write_phantom_dataset(root / "train", 3, cfg, seed=0, contrast="T2")
    val = write_phantom_dataset(root / "val", 2, cfg, seed=50, contrast="T2")
    return train, val


@pytest.fixture(scope="module")
def base_ckpt(phantoms, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    args = ["train", "--config", "ci-tiny", "--data", str(phantoms[0]), "--out", str(run)]
    args += ["--device", "cpu", "--max-steps", "1", "--no-progress", "--threads", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return run / "last.ckpt"


@pytest.fixture(scope="module")
def trained(base_ckpt, phantoms, tmp_path_factory):
    out = tmp_path_factory.mktemp("lesion")
    args = ["train-lesion", "--checkpoint", str(base_ckpt), "--data", str(phantoms[0])]
    args += ["--val-data", str(phantoms[1]), "--out", str(out), "--steps", "30"]
    args += ["--val-every", "10", "--patch", "16", "--device", "cpu", "--threads", "1"]
    # float32: on a CPU with native bf16 the autocast forward of this random head gives a NaN
    # loss now and then (skipped, not applied); a 10-step window of skips made the loss
    # column NaN and `test_train_lesion_learns` flaky (session 9)
    args += ["--amp", "off", "--export", str(out / "slim.pt")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "temperature" in result.output
    return out


def test_head_reads_fused_and_sources_and_applies_its_temperature():
    from clinfuse.nn.lesion_head import LesionHead

    torch.manual_seed(0)  # test-only: random weights
    head = LesionHead(3, (4, 8), 1, inputs="fused+sources").eval()
    x = torch.randn(1, 1, 8, 8, 8)
    cond = torch.randn(1, 3, 8, 8, 8)
    assert head.unet.model[0].conv.unit0.conv.in_channels == 4
    raw = head.raw_logits(x, cond)
    # the sources matter
    assert not torch.allclose(raw, head.raw_logits(x, torch.zeros_like(cond)))
    head.temperature.fill_(2.0)
    torch.testing.assert_close(head(x, cond), raw / 2.0)
    with pytest.raises(ValueError, match="cond"):
        head(x)
    # a state dict from before the calibration buffers existed loads with T = 1
    buffers = ("temperature", "min_lesion_ml", "min_component_prob")
    state = {k: v for k, v in head.state_dict().items() if k not in buffers}
    fresh = LesionHead(3, (4, 8), 1, inputs="fused+sources")
    fresh.load_state_dict(state)
    assert float(fresh.temperature) == 1.0 and float(fresh.min_lesion_ml) == 0.0
    assert float(fresh.min_component_prob) == 0.0


def test_eval_mode_uses_sliding_windows_of_the_training_patch():
    from clinfuse.nn.lesion_head import LesionHead, sliding_logits

    torch.manual_seed(0)  # test-only: random weights
    head = LesionHead(3, (4, 8), 1, inputs="fused+sources", norm="instance").eval()
    x, cond = torch.randn(1, 1, 24, 20, 16), torch.randn(1, 3, 24, 20, 16)
    torch.testing.assert_close(head(x, cond), head.raw_logits(x, cond))  # window 0: whole
    head.window.fill_(16)
    with torch.no_grad():
        torch.testing.assert_close(head(x, cond), sliding_logits(head, x, cond, (16, 16, 16)))
    head.train()
    assert head(x, cond).shape == x.shape  # training: patches as given


def test_mirror_channels_reflect_about_the_heads_mid_sagittal_plane():
    from clinfuse.nn.lesion_head import mid_sagittal_shift, mirror_channels

    x = torch.zeros(2, 4, 48, 12, 10)
    x[0, 1, 10:31] = 1.0  # head from x = 10 to 30: plane at x = 20
    x[1, 1, 4:41] = 1.0  # head from x = 4 to 40: plane at x = 22
    x[0, 0, 12, 3, 4] = 5.0  # fused channel, 8 voxels left of item 0's plane
    x[1, 2, 30, 5, 6] = 7.0  # CT channel, 8 voxels right of item 1's plane
    assert mid_sagittal_shift(x[0, 1]) == 40 - 47 and mid_sagittal_shift(x[1, 1]) == 44 - 47
    y = mirror_channels(x)
    assert y.shape == (2, 7, 48, 12, 10)
    torch.testing.assert_close(y[:, :4], x)  # the originals are kept, then fused/MRI/CT mirrors
    assert float(y[0, 4, 28, 3, 4]) == 5.0 and float(y[0, 4].sum()) == 5.0
    assert float(y[1, 6, 14, 5, 6]) == 7.0
    torch.testing.assert_close(y[0, 5], x[0, 1])  # a symmetric head is its own mirror


def test_mirror_head_takes_mirrors_on_the_whole_volume_before_windows():
    from clinfuse.nn.lesion_head import LesionHead, head_inputs

    torch.manual_seed(0)  # test-only: random weights
    head = LesionHead(3, (4, 8), 1, inputs="fused+sources+mirror", norm="instance").eval()
    assert head.whole_volume_only and not LesionHead(3, (4, 8), 1).whole_volume_only
    x, cond = torch.randn(1, 1, 40, 16, 16), torch.randn(1, 3, 40, 16, 16)
    cond[:, 0, :8] = -2.0  # background on the left: the plane is off the array centre
    full = head_inputs("fused+sources+mirror", x, cond)
    head.window.fill_(16)
    with torch.no_grad():
        windowed = head(x, cond)
        # the same as windows over the whole-volume inputs, and not as mirroring each window
        from monai.inferers import sliding_window_inference

        expect = sliding_window_inference(
            full, (16, 16, 16), 2, head.unet, overlap=0.25, mode="gaussian"
        )
    torch.testing.assert_close(windowed, expect)


def test_context_box_grows_to_a_window_inside_the_volume():
    from clinfuse.nn.lesion_head import context_box

    spatial = (40, 30, 12)
    box = (slice(2, 5), slice(25, 30), slice(3, 9))
    ctx = context_box(box, spatial, window=16, multiple=8, margin=2)
    # axis 0: 0..7 grown to 16 (kept inside); axis 1: 23..30 grown to 16 ending at the edge;
    # axis 2: the whole axis (12 < the window)
    assert ctx == (slice(0, 16), slice(14, 30), slice(0, 12))
    big = context_box((slice(5, 35),), (40,), window=16, multiple=8, margin=2)
    assert big == (slice(0, 40),)  # 30 + 2 x 2 = 34 -> a multiple of 8: the whole axis
    for c, b in zip(ctx, box, strict=True):
        assert c.start <= b.start and b.stop <= c.stop
    with pytest.raises(ValueError, match="empty"):
        context_box((slice(3, 3), slice(0, 1), slice(0, 1)), spatial, 16, 8)


def test_head_on_a_box_matches_the_whole_volume_where_it_sees_all_of_it():
    from clinfuse.nn.lesion_head import LesionHead

    torch.manual_seed(0)  # test-only: random weights
    head = LesionHead(3, (4, 8), 1, inputs="fused+sources+mirror", norm="instance").eval()
    x, cond = torch.randn(1, 1, 24, 16, 16), torch.randn(1, 3, 24, 16, 16)
    box = (slice(3, 9), slice(4, 12), slice(0, 16))
    with torch.no_grad():
        whole = head(x, cond)
        # window 0 and a small volume: the context is the whole volume, so the box is exact
        head.window.fill_(32)
        torch.testing.assert_close(head(x, cond, box=box), whole[(..., *box)])
        # a window smaller than the volume: the net runs on a 16-voxel context, not on all 24
        head.window.fill_(16)
        part = head(x, cond, box=box)
    assert part.shape == (1, 1, 6, 8, 16)
    # the mirror channels still come from the whole volume: changing the far side (x >= 16,
    # outside the context but the mirror twin of the box) changes the box's logits
    x2 = x.clone()
    x2[:, :, 16:] += 3.0
    with torch.no_grad():
        assert not torch.allclose(head(x2, cond, box=box), part)


def test_flip_tta_averages_the_head_over_a_left_right_mirror():
    """`flip_tta`: in eval mode the logits are the mean over the volume and its RAS-x mirror
    (so the prediction of a mirrored head is the mirrored prediction), box and sliding
    windows included; training mode and a head without the flag run one pass."""
    from clinfuse.nn.lesion_head import LesionHead, sliding_logits

    torch.manual_seed(0)  # test-only: random weights
    head = LesionHead(3, (4, 8), 1, inputs="fused+sources+mirror", norm="instance").eval()
    x, cond = torch.randn(1, 1, 24, 16, 16), torch.randn(1, 3, 24, 16, 16)
    with torch.no_grad():
        plain = head(x, cond)
        plain_flipped = head(x.flip(2), cond.flip(2))
        assert not torch.allclose(plain.flip(2), plain_flipped)  # a random head is not symmetric
        head.flip_tta.fill_(1)
        assert head.flip_averaged
        tta = head(x, cond)
        torch.testing.assert_close(tta, 0.5 * (plain + plain_flipped.flip(2)))
        torch.testing.assert_close(head(x.flip(2), cond.flip(2)), tta.flip(2))
        # a box: the mirrored pass runs on the mirrored box, the same voxels come back (a
        # window above the volume's size: the context is the whole volume, the box is exact)
        box = (slice(3, 9), slice(4, 12), slice(0, 16))
        head.window.fill_(32)
        torch.testing.assert_close(head(x, cond, box=box), tta[(..., *box)])
        # sliding windows (training validation, evaluation) average the same way
        head.window.fill_(16)
        slid = sliding_logits(head, x, cond, (16, 16, 16))
        torch.testing.assert_close(head(x, cond), slid)
        torch.testing.assert_close(
            sliding_logits(head, x.flip(2), cond.flip(2), (16, 16, 16)), slid.flip(2)
        )
        head.window.fill_(0)
        head.train()
        assert not head.flip_averaged
        torch.testing.assert_close(head(x, cond), plain, atol=1e-4, rtol=1e-4)
    # checkpoints from before the flag load with it off
    state = {k: v for k, v in head.state_dict().items() if k != "flip_tta"}
    fresh = LesionHead(3, (4, 8), 1, inputs="fused+sources+mirror", norm="instance")
    fresh.flip_tta.fill_(1)
    fresh.load_state_dict(state)
    assert int(fresh.flip_tta) == 0


def test_clean_mask_drops_small_components():
    from clinfuse.nn.lesion_mask import clean_mask

    prob = np.zeros((20, 20, 20), np.float32)
    prob[1:3, 1:3, 1:3] = 0.9  # 8 voxels of 8 mm^3 = 0.064 mL
    prob[10:16, 10:16, 10:16] = 0.8  # 216 voxels = 1.7 mL
    assert clean_mask(prob, (2.0, 2.0, 2.0)).sum() == 224
    kept = clean_mask(prob, (2.0, 2.0, 2.0), min_ml=0.1)
    assert kept.sum() == 216 and not kept[1:3, 1:3, 1:3].any()


def test_clean_mask_drops_doubtful_secondary_components():
    """The confidence filter removes a secondary component whose mean probability is below the
    rule's minimum, keeps confident ones, and never removes the most probable component."""
    from clinfuse.nn.lesion_mask import LesionMaskRule, clean_mask

    sp = (2.0, 2.0, 2.0)
    prob = np.zeros((30, 30, 30), np.float32)
    prob[2:10, 2:10, 2:10] = 0.97  # the lesion: 512 voxels
    prob[20:24, 20:24, 20:24] = 0.6  # a faint far component: 64 voxels
    prob[20:23, 2:5, 2:5] = 0.95  # a small confident one: 27 voxels
    assert clean_mask(prob, sp).sum() == 512 + 64 + 27  # the filter is off by default
    kept = clean_mask(prob, sp, min_component_prob=0.8)
    assert kept.sum() == 512 + 27 and not kept[20:24, 20:24, 20:24].any()
    assert LesionMaskRule(0.0, 0.8).apply(prob, sp).sum() == kept.sum()
    # a single faint component is the most probable one: it stays (the filter never empties)
    faint = np.where(prob == 0.6, prob, 0).astype(np.float32)
    assert clean_mask(faint, sp, min_component_prob=0.99).sum() == 64
    # the most probable component (largest summed probability) stays even below the minimum;
    # a smaller, more confident one stays beside it
    big = np.where(prob == 0.6, 0.7, np.where(prob == 0.95, 0.95, 0)).astype(np.float32)
    big[10:20, 10:20, 10:20] = 0.7  # 1000 voxels at 0.7: mass 700
    out = clean_mask(big, sp, min_component_prob=0.8)
    assert out[10:20, 10:20, 10:20].all() and out[20:23, 2:5, 2:5].all()
    # the size filter acts first: a component it removes cannot be "the most probable"
    assert not clean_mask(big, sp, min_ml=10.0, min_component_prob=0.8).any()
    # 2D maps work the same way (8-connected components)
    flat = prob[5]
    assert clean_mask(flat, sp[:2], min_component_prob=0.8).sum() == 64


def _symmetric_head(shape: tuple[int, int, int] = (40, 32, 32)) -> np.ndarray:
    """An MRI-like volume mirror-symmetric about the plane x = 19.5 (textured ellipsoid)."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    grid = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
    r2 = sum(((g - (n - 1) / 2) / (0.43 * n)) ** 2 for g, n in zip(grid, shape, strict=True))
    tex = ndimage.gaussian_filter(rng.normal(size=shape), 1.5)
    return np.where(r2 <= 1, 1.0 + tex + tex[::-1], 0.0).astype(np.float32)


def _lesion_and_ghost(shape: tuple[int, int, int] = (40, 32, 32)) -> np.ndarray:
    """A probability map: a confident lesion (64 voxels, p 0.95) left, its larger, a little
    fainter mirror twin right (125 voxels, p 0.9; the larger by summed probability), a
    component on the midline (27 voxels, p 0.93) and a far one nowhere near a mirror image
    (27 voxels, p 0.92)."""
    prob = np.zeros(shape, np.float32)
    prob[5:9, 12:16, 12:16] = 0.95  # the lesion; its mirror image is x 31:35
    prob[30:35, 11:16, 12:17] = 0.9  # the ghost
    prob[18:21, 22:25, 22:25] = 0.93  # on the midline: its own mirror image
    prob[28:31, 25:28, 3:6] = 0.92  # far from every mirror image
    return prob


def test_mirror_ghosts_go_the_lesion_and_other_components_stay():
    """`drop_mirror_ghosts`: of a component and its mirror twin about the MRI's mid-sagittal
    plane the more confident (by mean probability) stays although the twin is larger; a
    midline component and a component far from any mirror image stay; a rule with the filter
    needs the MRI; off by default."""
    from clinfuse.nn.lesion_mask import LesionMaskRule, clean_mask
    from clinfuse.nn.symmetry import mri_plane

    mri, prob, sp = _symmetric_head(), _lesion_and_ghost(), (2.0, 2.0, 2.0)
    plane = mri_plane(mri)
    assert plane.offset == pytest.approx(19.5, abs=0.3) and abs(plane.yaw) <= 1.0
    assert clean_mask(prob, sp).sum() == 64 + 125 + 27 + 27  # off by default
    kept = clean_mask(prob, sp, drop_mirror_ghosts=True, mri=mri)
    assert kept.sum() == 64 + 27 + 27 and not kept[30:35, 11:16, 12:17].any()
    assert kept[5:9, 12:16, 12:16].all()
    rule = LesionMaskRule(drop_mirror_ghosts=True)
    assert np.array_equal(rule.apply(prob, sp, mri=mri), kept)
    assert not LesionMaskRule().drop_mirror_ghosts
    with pytest.raises(ValueError, match="MRI"):
        rule.apply(prob, sp)
    ghost_alone = np.where(prob == np.float32(0.9), prob, 0)
    assert clean_mask(ghost_alone, sp, drop_mirror_ghosts=True, mri=mri).sum() == 125  # kept


def test_calibration_chooses_the_ghost_filter_when_validation_has_ghosts(monkeypatch):
    """With `mirror_ghosts` the calibration scores the filter off and on after the other
    parts; a validation case whose lesion has a larger mirror ghost turns it on and the head's
    buffer carries it; without a ghost it stays off (ties: off); not considered by default. A
    state dict from before the buffer loads with the filter off."""
    import clinfuse.metrics.calibration as cal
    from clinfuse.nn.lesion_head import LesionHead
    from clinfuse.training import lesion as tl

    mri = _symmetric_head()
    shape = mri.shape
    label = np.zeros(shape, np.float32)
    label[5:9, 12:16, 12:16] = 1.0
    ghosted = np.full(shape, -8.0, np.float32)
    ghosted[5:9, 12:16, 12:16] = 4.0  # p 0.98 on the lesion
    ghosted[30:35, 11:16, 12:17] = 2.2  # p 0.9: its mirror ghost
    src = np.stack([mri, mri, mri])
    item = tl._Item("c", src, mri, {}, label, np.ones(shape, np.float32), mri > 0, (2.0,) * 3)
    monkeypatch.setattr(cal, "fit_temperature", lambda z, y: 1.0)
    monkeypatch.setattr(tl, "predict_logits", lambda *a, **k: ghosted)
    cfg = tl.LesionTrainConfig(patch_size=(16, 16, 16), channels=(4, 8), rule_dice_tolerance=0.01)
    head = LesionHead(3, (4, 8), 1, inputs=cfg.inputs)
    rule, rec, final = tl._fit_postprocessing(head, [item], cfg)
    assert not rule.drop_mirror_ghosts and "dice_by_mirror_ghosts" not in rec
    assert final["dice"] < 0.6  # the ghost stays: 2 x 64 / (64 + 189)
    on = tl.LesionTrainConfig(**{**cfg.__dict__, "mirror_ghosts": True})
    rule, rec, final = tl._fit_postprocessing(head, [item], on)
    assert rule.drop_mirror_ghosts and int(head.mirror_ghosts) == 1
    by_ghost = rec["dice_by_mirror_ghosts"]
    assert by_ghost["1.0"] == pytest.approx(1.0) and by_ghost["0.0"] < 0.6
    assert rec["hd95_by_mirror_ghosts"]["1.0"] < rec["hd95_by_mirror_ghosts"]["0.0"]
    assert head.mask_rule.drop_mirror_ghosts and final["dice"] == pytest.approx(1.0)
    old = {k: v for k, v in head.state_dict().items() if k != "mirror_ghosts"}
    fresh = LesionHead(3, (4, 8), 1, inputs=cfg.inputs)
    fresh.mirror_ghosts.fill_(1)
    fresh.load_state_dict(old)
    assert not fresh.mask_rule.drop_mirror_ghosts
    clean = np.where(ghosted > 3, ghosted, -8.0).astype(np.float32)  # no ghost: a tie -> off
    monkeypatch.setattr(tl, "predict_logits", lambda *a, **k: clean)
    rule, rec, _ = tl._fit_postprocessing(head, [item], on)
    assert not rule.drop_mirror_ghosts and int(head.mirror_ghosts) == 0


def _fit_on_two_cases(
    monkeypatch: pytest.MonkeyPatch, label: np.ndarray, logit: np.ndarray
) -> tuple:
    """A small head's temperature and mask rule fitted (`_fit_postprocessing`) on two
    validation cases at 2 mm with this `label`, whose predicted logits are `logit`: (head,
    rule, calibration record, final validation scores)."""
    from clinfuse.nn.lesion_head import LesionHead
    from clinfuse.training import lesion as tl

    shape = label.shape
    items = [
        tl._Item(
            f"v{i}",
            np.zeros((3, *shape), np.float32),
            np.zeros(shape, np.float32),
            {},
            label,
            np.ones(shape, np.float32),
            np.ones(shape, bool),
            (2.0, 2.0, 2.0),
        )
        for i in range(2)
    ]
    monkeypatch.setattr(tl, "predict_logits", lambda *a, **k: logit)
    cfg = tl.LesionTrainConfig(patch_size=(16, 16, 16), channels=(4, 8))
    head = LesionHead(3, (4, 8), 1, inputs=cfg.inputs)
    rule, calib, final = tl._fit_postprocessing(head, items, cfg)
    return head, rule, calib, final


def test_calibration_fits_the_component_filter_on_validation(monkeypatch):
    """`_calibrate` picks the minimum component probability by validation Dice: a faint far
    false component on every validation case makes it choose a filter that removes it, and
    the head's buffers then carry it."""
    shape = (24, 24, 24)
    label = np.zeros(shape, np.float32)
    label[3:9, 3:9, 3:9] = 1.0
    logit = np.full(shape, -8.0, np.float32)
    logit[3:9, 3:9, 3:9] = 4.0  # p 0.98 on the lesion
    logit[16:20, 16:20, 16:20] = 0.4  # p 0.6: a far false component of 0.5 mL
    head, rule, calib, final = _fit_on_two_cases(monkeypatch, label, logit)
    by_prob = calib["dice_by_min_component_prob"]
    assert by_prob["0.0"] < 1.0 and max(by_prob.values()) == pytest.approx(1.0)
    chosen = float(head.min_component_prob)  # a float32 buffer
    key = min(by_prob, key=lambda k: abs(float(k) - chosen))
    assert chosen > 0.0 and by_prob[key] == pytest.approx(1.0)
    chosen = float(key)
    # ties go to the weakest filter that reaches the best Dice
    assert all(by_prob[str(q)] < 1.0 for q in MIN_COMPONENT_PROB_CHOICES if q < chosen)
    assert final["dice"] == pytest.approx(1.0) and rule.min_component_prob == chosen


def test_calibration_keeps_a_small_lesion_mask_whatever_validation_dice_prefers(monkeypatch):
    """Session 22: the minimum component size is chosen among sizes of at most a fifth of
    0.5 mL (issue 10's smallest lesion), as a small lesion's mask is often half its size. A
    validation set where every case carries a 0.2 mL false speck beside its lesion would
    prefer a 0.25 mL minimum by Dice; the calibrated rule still keeps a 0.2 mL mask."""
    from clinfuse.nn.lesion_mask import clean_mask
    from clinfuse.training import lesion as tl

    assert max(tl.MIN_ML_CHOICES) <= 0.5 / 5
    shape = (24, 24, 24)
    label = np.zeros(shape, np.float32)
    label[3:9, 3:9, 3:9] = 1.0
    logit = np.full(shape, -8.0, np.float32)
    logit[3:9, 3:9, 3:9] = 4.0
    logit[16:19, 16:19, 16:19] = 4.0  # 27 voxels of 8 uL: a confident 0.216 mL false speck
    _, rule, calib, _ = _fit_on_two_cases(monkeypatch, label, logit)
    assert set(calib["dice_by_min_ml"]) == {str(m) for m in tl.MIN_ML_CHOICES}
    assert rule.min_ml <= 0.1
    prob, sp = 1 / (1 + np.exp(-logit)), (2.0, 2.0, 2.0)
    assert clean_mask(prob, sp, min_ml=0.25).sum() == 216  # a 0.25 mL minimum: perfect Dice
    assert rule.apply(prob, sp).sum() == 216 + 27  # the fitted rule keeps the speck
    small = np.zeros(shape, np.float32)
    small[10:13, 10:13, 10:13] = 0.9  # a small lesion's 0.216 mL mask
    assert rule.apply(small, (2.0, 2.0, 2.0)).sum() == 27


def test_peak_filter_drops_components_that_never_reach_the_peak():
    """`min_peak_prob` (hysteresis): a component whose highest probability is below it goes,
    the most probable one included, so a case whose only component is faint throughout comes
    out empty (the secondary filter never empties a mask); a component with a confident core
    stays whole, faint rim included; off by default."""
    from clinfuse.nn.lesion_mask import LesionMaskRule, clean_mask

    sp = (2.0, 2.0, 2.0)
    prob = np.zeros((24, 24, 24), np.float32)
    prob[2:12, 2:12, 2:12] = 0.85  # a large faint component: the most probable by sum
    prob[16:20, 16:20, 16:20] = 0.7  # the lesion's rim ...
    prob[17:19, 17:19, 17:19] = 0.98  # ... around a confident core
    assert clean_mask(prob, sp).sum() == 1000 + 64  # off by default
    assert clean_mask(prob, sp, min_component_prob=0.9).sum() == 1000  # the primary stays
    kept = clean_mask(prob, sp, min_peak_prob=0.9)
    assert kept.sum() == 64 and kept[16:20, 16:20, 16:20].all()  # rim kept with its core
    rule = LesionMaskRule(min_peak_prob=0.9)
    assert np.array_equal(rule.apply(prob, sp), kept)
    assert "components kept from peak probability 0.90" in rule.describe()
    faint_only = np.where(prob == np.float32(0.85), prob, 0)
    assert not clean_mask(faint_only, sp, min_peak_prob=0.9).any()
    assert clean_mask(faint_only, sp, min_peak_prob=0.85).sum() == 1000  # peak reached
    assert LesionMaskRule().min_peak_prob == 0.0


def test_calibration_chooses_the_peak_filter_when_validation_has_faint_lesions(monkeypatch):
    """With `peak_rule` the calibration scores every `MIN_PEAK_PROB_CHOICES` after the minimum
    size and secondary filter: a far false component faint throughout but the most probable
    by sum (so the secondary filter keeps it) makes it choose the lowest peak that drops it
    and keeps the lesion; the head's buffer carries it; off unless asked. A state dict from
    before the buffer loads with the filter off."""
    from dataclasses import replace

    import clinfuse.metrics.calibration as cal
    from clinfuse.nn.lesion_head import LesionHead
    from clinfuse.training import lesion as tl

    shape = (32, 32, 32)
    label = np.zeros(shape, np.float32)
    label[4:8, 4:8, 4:8] = 1.0
    logit = np.full(shape, -8.0, np.float32)
    logit[4:8, 4:8, 4:8] = 4.0  # p 0.982 on the lesion (64 voxels)
    logit[18:28, 18:28, 18:28] = 1.7  # p 0.85: far, faint and large (1000 voxels)
    src = np.zeros((3, *shape), np.float32)
    brain = np.ones(shape, bool)
    item = tl._Item("c", src, src[0], {}, label, np.ones(shape, np.float32), brain, (2.0,) * 3)
    monkeypatch.setattr(cal, "fit_temperature", lambda z, y: 1.0)
    monkeypatch.setattr(tl, "predict_logits", lambda *a, **k: logit)
    cfg = tl.LesionTrainConfig(patch_size=(16, 16, 16), channels=(4, 8), rule_dice_tolerance=0.01)
    head = LesionHead(3, (4, 8), 1, inputs=cfg.inputs)
    rule, rec, final = tl._fit_postprocessing(head, [item], cfg)
    assert rule.min_peak_prob == 0.0 and "dice_by_min_peak_prob" not in rec
    assert final["dice"] < 0.2  # the faint component stays: 2 x 64 / (64 + 1064)
    rule, rec, final = tl._fit_postprocessing(head, [item], replace(cfg, peak_rule=True))
    by_peak = rec["dice_by_min_peak_prob"]
    assert set(by_peak) == {str(h) for h in tl.MIN_PEAK_PROB_CHOICES}
    assert by_peak["0.0"] < 0.2 and by_peak["0.9"] == pytest.approx(1.0)
    assert by_peak["0.99"] == 0.0  # the lesion's own peak (0.982) is below it
    assert rule.min_peak_prob == 0.9 and float(head.min_peak_prob) == pytest.approx(0.9)
    assert head.mask_rule.min_peak_prob == pytest.approx(0.9) and final["dice"] == 1.0
    assert rec["hd95_by_min_peak_prob"]["0.9"] < rec["hd95_by_min_peak_prob"]["0.0"]
    old = {k: v for k, v in head.state_dict().items() if k != "min_peak_prob"}
    fresh = LesionHead(3, (4, 8), 1, inputs=cfg.inputs)
    fresh.min_peak_prob.fill_(0.9)
    fresh.load_state_dict(old)
    assert fresh.mask_rule.min_peak_prob == 0.0


def test_calibration_fits_a_near_mask_temperature_when_asked():
    """With `near_temperature` the calibration fits a second temperature on the validation
    voxels within 10 mm of the head's own mask (by NLL, after the rule) and stores T / T_near in
    the rule and the head's buffer; the mask is unchanged, the lesion-neighbourhood ECE of the
    reported probability falls, and the brain temperature is the one fitted without it. A state
    dict from before the buffer loads with one temperature (scale 1)."""
    from dataclasses import replace

    from clinfuse.nn.lesion_head import LesionHead
    from clinfuse.training import lesion as tl

    rng = np.random.default_rng(0)
    shape = (32, 32, 32)
    label = np.zeros(shape, np.float32)
    label[8:16, 8:16, 8:16] = 1.0
    logit = np.full(shape, -9.0, np.float32)
    logit[6:18, 6:18, 6:18] = 6.0  # over-confident: a 2-voxel rim of background called lesion
    logit += rng.normal(0, 0.5, shape).astype(np.float32)
    src = np.zeros((3, *shape), np.float32)
    brain = np.ones(shape, bool)
    item = tl._Item("c", src, src[0], {}, label, np.ones(shape, np.float32), brain, (2.0,) * 3)
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(tl, "predict_logits", lambda *a, **k: logit)
    try:
        cfg = tl.LesionTrainConfig(patch_size=(16, 16, 16), channels=(4, 8))
        head = LesionHead(3, (4, 8), 1, inputs=cfg.inputs)
        one, rec1, final1 = tl._fit_postprocessing(head, [item], cfg)
        assert one.near_logit_scale == 1.0 and "near_temperature" not in rec1
        rule, rec, final = tl._fit_postprocessing(head, [item], replace(cfg, near_temperature=True))
    finally:
        monkeypatch.undo()
    t, t_near = rec["temperature"], rec["near_temperature"]
    assert t == pytest.approx(rec1["temperature"]) and t_near > t
    assert rule.near_logit_scale == pytest.approx(t / t_near)
    assert float(head.near_logit_scale) == pytest.approx(t / t_near, rel=1e-6)
    assert replace(head.mask_rule, near_logit_scale=rule.near_logit_scale) == rule  # float32 buffer
    assert final["dice"] == final1["dice"]
    cal = rec["validation_calibration"]
    nb = "lesion neighbourhood"
    assert cal["after_near"][nb]["ece"] < cal["after"][nb]["ece"]
    old = {k: v for k, v in head.state_dict().items() if k != "near_logit_scale"}
    fresh = LesionHead(3, (4, 8), 1, inputs=cfg.inputs)
    fresh.load_state_dict(old)
    assert fresh.mask_rule.near_logit_scale == 1.0


def test_clean_mask_lesion_gate_empties_a_doubtful_case():
    """`min_lesion_prob`: when the most probable component's mean probability is below the
    gate the mask is empty (no lesion reported); a confident lesion keeps its mask and its
    faint secondary components are still judged by `min_component_prob`."""
    from clinfuse.nn.lesion_mask import LesionMaskRule, clean_mask

    sp = (2.0, 2.0, 2.0)
    faint = np.zeros((20, 20, 20), np.float32)
    faint[4:8, 4:8, 4:8] = 0.7  # a single 0.5 mL component of mean p 0.7
    assert clean_mask(faint, sp, min_lesion_prob=0.65).sum() == 64
    assert not clean_mask(faint, sp, min_lesion_prob=0.75).any()
    assert not LesionMaskRule(0.0, 0.0, 0.75).apply(faint, sp).any()
    lesion = faint.copy()
    lesion[10:18, 10:18, 10:18] = 0.95  # the lesion (most probable); the faint one is secondary
    kept = clean_mask(lesion, sp, min_lesion_prob=0.75)
    assert kept.sum() == 512 + 64  # the gate looks at the primary component only
    both = clean_mask(lesion, sp, min_component_prob=0.8, min_lesion_prob=0.75)
    assert both.sum() == 512
    assert LesionMaskRule(0.0, 0.8, 0.75).apply(lesion, sp).sum() == 512
    assert LesionMaskRule().min_lesion_prob == 0.0  # off by default


def test_calibration_fits_the_lesion_gate_by_the_brats_convention(monkeypatch):
    """With `lesion_gate` the calibration fits `min_lesion_prob` by the mean Dice over every
    validation case (lesion-free: 1 when empty): a faint false lesion on the lesion-free cases
    and confident true lesions give a gate between the two, carried by the head's buffer;
    without it (the default) there is no gate."""
    from clinfuse.nn.lesion_head import LesionHead
    from clinfuse.training import lesion as tl

    shape = (24, 24, 24)
    label = np.zeros(shape, np.float32)
    label[3:9, 3:9, 3:9] = 1.0
    with_lesion = np.full(shape, -8.0, np.float32)
    with_lesion[3:9, 3:9, 3:9] = 3.0  # p 0.95
    lesion_free = np.full(shape, -8.0, np.float32)
    lesion_free[14:18, 14:18, 14:18] = 0.4  # p 0.6: a 0.5 mL false lesion
    logits = {"a": with_lesion, "b": with_lesion, "c": lesion_free}

    def item(name: str) -> tl._Item:
        lab = label if name != "c" else np.zeros(shape, np.float32)
        return tl._Item(
            name,
            np.full((3, *shape), ord(name), np.float32),
            np.zeros(shape, np.float32),
            {},
            lab,
            np.ones(shape, np.float32),
            np.ones(shape, bool),
            (2.0, 2.0, 2.0),
        )

    items = [item(n) for n in "abc"]

    def predict(head: object, composite: np.ndarray, sources: np.ndarray, *a, **k) -> np.ndarray:
        return logits[chr(int(sources[0, 0, 0, 0]))]  # each item's sources carry its name

    monkeypatch.setattr(tl, "predict_logits", predict)
    import clinfuse.metrics.calibration as calibration

    monkeypatch.setattr(calibration, "fit_temperature", lambda z, y: 1.0)  # p as written
    cfg = tl.LesionTrainConfig(patch_size=(16, 16, 16), channels=(4, 8))
    head = LesionHead(3, (4, 8), 1, inputs=cfg.inputs)
    rule, calib, final = tl._fit_postprocessing(head, items, cfg)
    assert rule.min_lesion_prob == 0.0 and "gate_by_min_lesion_prob" not in calib
    assert final["lesion_free_cases_with_a_prediction"] == 1
    gated = tl.LesionTrainConfig(patch_size=(16, 16, 16), channels=(4, 8), lesion_gate=True)
    rule, calib, final = tl._fit_postprocessing(head, items, gated)
    table = calib["gate_by_min_lesion_prob"]
    assert table["0.0"]["false_ml"] == pytest.approx(0.512) and table["0.0"]["found"] == 2
    chosen = rule.min_lesion_prob
    assert tl.MIN_LESION_PROB_CHOICES[0] < chosen <= 0.95
    assert float(head.min_lesion_prob) == pytest.approx(chosen)
    assert table[str(chosen)]["dice_all"] == pytest.approx(1.0)
    assert final["lesion_free_cases_with_a_prediction"] == 0 and final["dice"] > 0.9
    # ties go to the lowest gate that reaches the best mean Dice
    assert all(table[str(g)]["dice_all"] < 1.0 for g in tl.MIN_LESION_PROB_CHOICES if g < chosen)


def test_pick_gate_trades_found_lesions_against_false_ones():
    from clinfuse.training.lesion import GateScore, _pick_gate

    table = {
        0.0: GateScore(0.70, 0.75, 46, 3.0),
        0.7: GateScore(0.74, 0.74, 45, 0.9),
        0.8: GateScore(0.74, 0.72, 43, 0.0),  # same over every case: the lower gate wins
        0.9: GateScore(0.60, 0.55, 30, 0.0),
    }
    assert _pick_gate(table) == 0.7


def test_hard_negatives_are_far_false_positives(monkeypatch):
    """`_hard_negatives`: voxels the head calls lesion inside the brain, of known label and at
    least HARD_NEGATIVE_MARGIN voxels from the labelled lesion; None for a clean case."""
    from clinfuse.training import lesion as tl

    shape = (24, 24, 24)
    label = np.zeros(shape, np.float32)
    label[4:8, 4:8, 4:8] = 1.0
    valid = np.ones(shape, np.float32)
    valid[:, :, 20:] = 0.0  # an unlabelled region
    logit = np.full(shape, -8.0, np.float32)
    logit[3:9, 3:9, 3:9] = 8.0  # the lesion and a one-voxel rim: its border, not a hard negative
    logit[15:18, 15:18, 10:13] = 8.0  # a far false component: 27 voxels
    logit[15:18, 15:18, 21:23] = 8.0  # a false component where the label is unknown
    brain = np.ones(shape, bool)
    src = np.zeros((3, *shape), np.float32)
    item = tl._Item("c", src, src[0], {}, label, valid, brain, (2.0, 2.0, 2.0))
    clean = tl._Item("d", src, src[0], {}, label, valid, brain, (2.0, 2.0, 2.0))
    maps = iter([logit, np.where(label > 0, 8.0, -8.0).astype(np.float32)])
    monkeypatch.setattr(tl, "predict_logits", lambda *a, **k: next(maps))
    cfg = tl.LesionTrainConfig(patch_size=(16, 16, 16))
    head = torch.nn.Linear(1, 1).train()
    hard, none = tl._hard_negatives(head, [item, clean], cfg)
    assert none is None and head.training  # the mode is restored
    assert hard.dtype == np.float32 and int(hard.sum()) == 27 and hard[15:18, 15:18, 10:13].all()
    # a hard-negative crop always holds its hard voxels (the 1.5x crop is centred on one)
    tf = tl._transforms(cfg, hard=True)
    tf.set_random_state(seed=0)
    img = np.zeros((7, *shape), np.float32)
    sample = {"img": img, "label": label[None], "valid": valid[None], "hard": hard[None]}
    for _ in range(5):
        for patch in tf(sample):
            assert tuple(patch["img"].shape[1:]) == cfg.patch_size
            assert float(np.asarray(patch["hard"]).sum()) > 0


def test_lesion_free_crops_are_background_patches_without_monai_warnings():
    """A lesion-free sample gives background patches; MONAI's "Num foregrounds 0" warning
    (one per lesion-free case and step in every training log) is silenced, and only that."""
    import warnings

    from clinfuse.training import lesion as tl

    cfg = tl.LesionTrainConfig(patch_size=(16, 16, 16))
    tf = tl._transforms(cfg)
    tf.set_random_state(seed=0)
    shape = (24, 24, 24)
    empty = np.zeros((1, *shape), np.float32)
    sample = {"img": np.ones((7, *shape), np.float32), "label": empty, "valid": empty + 1}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        patches = tl._crop(tf, sample)
        warnings.warn("another warning", UserWarning, stacklevel=1)
    assert len(patches) == cfg.samples_per_case
    assert all(tuple(p["img"].shape[1:]) == cfg.patch_size for p in patches)
    assert not any(float(np.asarray(p["label"]).sum()) for p in patches)
    assert [str(w.message) for w in caught] == ["another warning"]
    with pytest.warns(UserWarning, match="Num foregrounds 0"):  # what MONAI does unwrapped
        tf(sample)


def _count_crops(monkeypatch: pytest.MonkeyPatch, tl: Any) -> tuple[dict[str, int], list[float]]:
    """Wrap `tl._transforms` so a run counts its plain and hard (around a map) crops, and
    records the sum of each hard crop's map: (counts, sums), filled as the run goes."""
    crops = {"hard": 0, "plain": 0}
    hard_sums: list[float] = []
    real = tl._transforms

    def counting(cfg, hard=False):
        inner = real(cfg, hard=hard)

        class Counted:
            def set_random_state(self, seed):
                inner.set_random_state(seed=seed)

            def __call__(self, sample):
                crops["hard" if hard else "plain"] += 1
                if hard:
                    hard_sums.append(float(np.asarray(sample["hard"]).sum()))
                return inner(sample)

        return Counted()

    monkeypatch.setattr(tl, "_transforms", counting)
    return crops, hard_sums


def test_training_samples_hard_negatives_when_asked(base_ckpt, phantoms, tmp_path, monkeypatch):
    """With `hard_negative_fraction` the run finds hard negatives at the start and after every
    validation but the last, and crops about that share of its samples around them."""
    from clinfuse.training import lesion as tl

    calls: list[int] = []

    def far_corner(head, items, cfg):
        calls.append(len(items))
        maps = []
        for it in items:
            m = np.zeros(it.label.shape, np.float32)
            m[:3, :3, :3] = 1.0
            maps.append(m)
        return maps

    crops, _ = _count_crops(monkeypatch, tl)
    monkeypatch.setattr(tl, "_hard_negatives", far_corner)
    cfg = tl.LesionTrainConfig(
        steps=8, val_every=4, patch_size=(16, 16, 16), channels=(4, 8), hard_negative_fraction=0.5
    )
    said: list[str] = []
    tl.train_lesion_head(base_ckpt, phantoms[0], phantoms[1], tmp_path / "h", cfg, log=said.append)
    assert calls == [3, 3]  # the start and after step 4 (not after the last validation)
    assert sum("hard negatives: 3 of 3 training cases" in m for m in said) == 2
    assert crops["hard"] > 0 and crops["plain"] > 0 and crops["hard"] + crops["plain"] == 16
    with pytest.raises(ClinfuseInputError, match="hard_negative_fraction"):
        tl.LesionTrainConfig(hard_negative_fraction=1.0).validate()


def test_ghost_regions_are_the_lesions_mirror_twin():
    """`ghost_regions`: the lesion reflected about the MRI's mid-sagittal plane (with the ghost
    margin), inside the brain and of known label, away from the lesion; None without a lesion
    or when the twin falls on the lesion itself (a midline lesion)."""
    from clinfuse.training import lesion as tl

    mri = _symmetric_head()
    shape = mri.shape
    label = np.zeros(shape, np.float32)
    label[5:9, 12:16, 12:16] = 1.0  # left; its twin is x 31:35
    valid = np.ones(shape, np.float32)
    valid[:, :, 15:] = 0.0  # part of the twin of unknown label
    src = np.stack([mri, mri, mri])
    item = tl._Item("c", src, mri, {}, label, valid, mri > 0, (2.0,) * 3)
    twin = tl.ghost_regions(item)
    assert twin is not None and twin.dtype == np.float32
    on = twin > 0
    assert on[31:35, 12:16, 12:15].all() and not on[:, :, 15:].any()
    assert not on[:20].any() and on.sum() < 4 * 10 * 10  # right side only, near the twin
    assert (
        tl.ghost_regions(tl._Item("d", src, mri, {}, 0 * label, valid, mri > 0, (2.0,) * 3)) is None
    )
    midline = np.zeros(shape, np.float32)
    midline[17:23, 12:16, 12:16] = 1.0
    assert (
        tl.ghost_regions(tl._Item("e", src, mri, {}, midline, valid, mri > 0, (2.0,) * 3)) is None
    )


def test_training_crops_ghost_patches_when_asked(base_ckpt, phantoms, tmp_path, monkeypatch):
    """With `ghost_fraction` the run finds each lesion case's twin region once and crops
    about that share of the lesion cases' samples around it (the hard-negative crop)."""
    from clinfuse.training import lesion as tl

    seen: list[str] = []

    def corner(item):
        seen.append(item.case_id)
        m = np.zeros(item.label.shape, np.float32)
        m[:3, :3, :3] = 1.0
        return m

    crops, hard_sums = _count_crops(monkeypatch, tl)
    monkeypatch.setattr(tl, "ghost_regions", corner)
    cfg = tl.LesionTrainConfig(
        steps=8, val_every=8, patch_size=(16, 16, 16), channels=(4, 8), ghost_fraction=0.5
    )
    said: list[str] = []
    tl.train_lesion_head(base_ckpt, phantoms[0], phantoms[1], tmp_path / "g", cfg, log=said.append)
    assert len(seen) == 3 and sum("ghost patches: 3 lesion cases" in m for m in said) == 1
    assert crops["hard"] > 0 and crops["plain"] > 0 and crops["hard"] + crops["plain"] == 16
    assert hard_sums and all(v == 27 for v in hard_sums)  # every one cut around the twin region
    with pytest.raises(ClinfuseInputError, match="ghost_fraction"):
        tl.LesionTrainConfig(ghost_fraction=1.0).validate()


def test_train_lesion_replaces_only_the_head_and_calibrates(trained, base_ckpt):
    from clinfuse.training.checkpoint import ema_weights, load_checkpoint, read_checkpoint

    new = load_checkpoint(trained / "lesion_head.ckpt")
    assert new.model.config.lesion_inputs == "fused+sources+mirror"  # the default
    assert new.model.lesion_head.unet.model[0].conv.unit0.conv.in_channels == 7
    assert new.model.config.lesion_norm == "instance"
    assert int(new.model.lesion_head.window) == 16  # the training patch
    old_w = ema_weights(read_checkpoint(base_ckpt))
    new_w = ema_weights(new.state)
    for k, v in old_w.items():
        if not k.startswith("lesion_head."):
            assert torch.equal(v, new_w[k]), k
    record = new.state["extra"]["lesion_head"]
    assert record["best_step"] in (10, 20, 30)
    temp = record["calibration"]["temperature"]
    assert 0.05 <= temp <= 20.0
    assert float(new.model.lesion_head.temperature) == pytest.approx(temp)
    assert record["min_lesion_ml"] in (0.0, 0.1, 0.25, 0.5, 1.0)
    assert record["min_component_prob"] in MIN_COMPONENT_PROB_CHOICES
    assert float(new.model.lesion_head.min_component_prob) == pytest.approx(
        record["min_component_prob"]
    )
    by_prob = record["calibration"]["dice_by_min_component_prob"]
    assert set(by_prob) == {str(q) for q in MIN_COMPONENT_PROB_CHOICES}
    assert set(record["calibration"]["validation_calibration"]) == {"before", "after"}
    assert new.state["optimizer"] is None
    slim = load_checkpoint(trained / "slim.pt")
    assert float(slim.model.lesion_head.temperature) == pytest.approx(temp, rel=1e-3)


def test_train_lesion_learns(trained):
    with open(trained / "lesion_metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [10, 20, 30]
    losses = [float(r["loss"]) for r in rows]
    assert losses[-1] < losses[0]  # Dice + BCE goes down from the random head
    assert all(0.0 <= float(r["val_dice"]) <= 1.0 for r in rows)


def test_ignore_mask_removes_unknown_labels(tmp_path):
    import shutil

    from clinfuse.phantom import PhantomConfig, write_phantom_dataset
    from clinfuse.phantom.dataset import nifti_bytes
    from clinfuse.training.lesion import load_items

    cfg = PhantomConfig(shape=(24, 24, 16), spacing=(3.0, 3.0, 3.0), supersample=1)
    ds = write_phantom_dataset(tmp_path / "ds", 1, cfg, seed=0)
    case = ds / "phantom_000"
    import nibabel as nib

    brain = nib.load(case / "brain.nii.gz")
    ign = np.zeros(brain.shape, np.uint8)
    ign[:12] = 1
    (case / "ignore.nii.gz").write_bytes(nifti_bytes(ign, brain.affine))
    text = (ds / "manifest.csv").read_text().splitlines()
    text[0] += ",ignore"
    text[1] += ",phantom_000/ignore.nii.gz"
    (ds / "manifest.csv").write_text("\n".join(text) + "\n")
    item = load_items(ds, ())[0]
    assert item.valid[:12][item.label[:12] < 0.5].max() == 0.0
    assert item.valid[12:].min() == 1.0
    shutil.rmtree(ds)


def test_item_cache_memory_maps_prepared_cases_and_notices_changed_files(tmp_path, monkeypatch):
    """`load_items(cache=...)`: the same arrays as without a cache, memory-mapped from .npy
    files; a second load reads them without preparing anything; a changed input file (or
    other baselines) gives a new entry; writing to a loaded item never changes the cache."""
    import shutil

    from clinfuse.phantom import PhantomConfig, write_phantom_dataset
    from clinfuse.training import lesion as tl

    cfg = PhantomConfig(shape=(24, 24, 16), spacing=(3.0, 3.0, 3.0), supersample=1)
    ds = write_phantom_dataset(tmp_path / "ds", 2, cfg, seed=3)
    cache = tmp_path / "cache"
    plain = tl.load_items(ds, ("average",))
    cached = tl.load_items(ds, ("average",), cache=cache)
    assert len(list(cache.iterdir())) == 2
    for a, b in zip(plain, cached, strict=True):
        assert isinstance(b.sources, np.memmap) and isinstance(b.baselines["average"], np.memmap)
        assert (a.case_id, a.spacing) == (b.case_id, b.spacing)
        for name in ("sources", "composite", "label", "valid", "brain"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        np.testing.assert_array_equal(a.baselines["average"], b.baselines["average"])

    def no_preparing(*args, **kwargs):
        raise AssertionError("prepared again")

    with monkeypatch.context() as m:
        m.setattr("clinfuse.preprocess.pipeline.preprocess_case", no_preparing)
        again = tl.load_items(ds, ("average",), cache=cache)
    again[0].label[...] = 7.0  # copy-on-write: the run's view only
    np.testing.assert_array_equal(
        tl.load_items(ds, ("average",), cache=cache)[0].label, plain[0].label
    )
    # another input file (same name, new content) and other baselines: new entries
    shutil.copy(ds / "phantom_001" / "mri.nii.gz", ds / "phantom_000" / "mri.nii.gz")
    changed = tl.load_items(ds, ("average",), cache=cache)
    assert not np.array_equal(changed[0].sources, plain[0].sources)
    tl.load_items(ds, ("average", "max"), cache=cache)
    assert len(list(cache.iterdir())) == 5
    assert not list(cache.glob(".tmp-*"))


def test_case_sampler_gives_each_data_set_its_share():
    """With shares, a data set is drawn by its share whatever its size, then a case uniformly
    inside it; without, every case is equally likely and the stream is `rng.integers`' own
    (earlier runs sample exactly as before)."""
    from clinfuse.training.lesion import _case_sampler

    sizes = [10, 90]
    draw = _case_sampler(sizes, (0.5, 0.5), np.random.default_rng(0))
    ks = np.array([draw() for _ in range(4000)])
    assert 0.47 < np.mean(ks < 10) < 0.53  # uniform would give 0.10
    assert set(ks[ks < 10]) == set(range(10)) and set(ks[ks >= 10]) == set(range(10, 100))
    plain = _case_sampler(sizes, None, np.random.default_rng(1))
    ref = np.random.default_rng(1)
    assert [plain() for _ in range(50)] == [int(ref.integers(100)) for _ in range(50)]


def test_train_lesion_samples_several_data_sets_by_share(
    base_ckpt, phantoms, tmp_path, monkeypatch
):
    """`--data A --data B --data-share ...`: both data sets are loaded, the run samples them
    by share (here all of B, so A's cases are never cropped) and records both; `--cache`
    keeps the prepared training and validation cases."""
    from clinfuse.training import lesion as tl

    sizes_seen: list[list[int]] = []
    drawn: list[int] = []
    real = tl._case_sampler

    def spy(sizes, shares, rng):
        sizes_seen.append(list(sizes))
        inner = real(sizes, shares, rng)

        def draw():
            drawn.append(inner())
            return drawn[-1]

        return draw

    monkeypatch.setattr(tl, "_case_sampler", spy)
    out = tmp_path / "h"
    args = ["train-lesion", "--checkpoint", str(base_ckpt), "--data", str(phantoms[0])]
    args += ["--data", str(phantoms[1]), "--data-share", "1e-9", "--data-share", "0.999999999"]
    args += ["--val-data", str(phantoms[1]), "--out", str(out), "--steps", "3", "--patch", "16"]
    args += ["--val-every", "3", "--device", "cpu", "--threads", "1", "--amp", "off"]
    args += ["--cache", str(tmp_path / "cache")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "5 training cases" in result.output and "data shares:" in result.output
    # 5 training cases with their baselines, 2 validation cases without: 7 cached items
    assert len(list((tmp_path / "cache").glob("phantom_*"))) == 7
    # items: A's 3 cases, then B's 2 (indices 3, 4); 3 steps of 2 cases, all from B
    assert sizes_seen == [[3, 2]] and len(drawn) == 6 and set(drawn) <= {3, 4}
    rec = torch.load(out / "lesion_head.ckpt", weights_only=False)["extra"]["lesion_head"]
    assert rec["data"] == [str(phantoms[0]), str(phantoms[1])]
    assert rec["config"]["data_shares"] == [1e-9, 0.999999999]
    with pytest.raises(ClinfuseInputError, match="sum to 1"):
        tl.LesionTrainConfig(data_shares=(0.5, 0.6)).validate()
    with pytest.raises(ClinfuseInputError, match="2 training data sets"):
        tl.train_lesion_head(
            base_ckpt,
            [phantoms[0], phantoms[1]],
            phantoms[1],
            tmp_path / "o",
            tl.LesionTrainConfig(steps=1, data_shares=(1.0,)),
            log=None,
        )


def test_dice_per_sample_weighs_a_small_lesion_like_a_large_one(
    base_ckpt, phantoms, tmp_path, monkeypatch
):
    """`--dice-per-sample` builds MONAI's DiceCE with a Dice per patch and records it. Per
    patch, missing a small lesion beside a found large one costs half the Dice term (over the
    batch: almost nothing), and a lesion-free patch adds a near-constant term without gradient."""
    import monai.losses

    big, small = torch.zeros(2, 1, 8, 8, 8), torch.zeros(2, 1, 8, 8, 8)
    big[0, :, :6, :6, :6] = 1  # 216 voxels, predicted
    small[1, :, 0, 0, 0] = 1  # 1 voxel, missed
    y = big + small
    logits = torch.where(big > 0, 20.0, -20.0)
    per = monai.losses.DiceLoss(sigmoid=True, batch=False)(logits, y)
    whole = monai.losses.DiceLoss(sigmoid=True, batch=True)(logits, y)
    assert per.item() == pytest.approx(0.5, abs=1e-3) and whole.item() < 0.01
    empty = torch.full((1, 1, 8, 8, 8), -10.0, requires_grad=True)
    term = monai.losses.DiceLoss(sigmoid=True, batch=False)(empty, torch.zeros(1, 1, 8, 8, 8))
    term.backward()
    assert term.item() > 0.99 and float(empty.grad.abs().max()) < 1e-3

    built: list[bool] = []
    real = monai.losses.DiceCELoss

    def spy(*args, **kwargs):
        built.append(kwargs["batch"])
        return real(*args, **kwargs)

    monkeypatch.setattr(monai.losses, "DiceCELoss", spy)
    out = tmp_path / "h"
    args = ["train-lesion", "--checkpoint", str(base_ckpt), "--data", str(phantoms[0])]
    args += ["--val-data", str(phantoms[1]), "--out", str(out), "--steps", "2", "--patch", "16"]
    args += ["--val-every", "2", "--device", "cpu", "--threads", "1", "--amp", "off"]
    result = CliRunner().invoke(app, [*args, "--dice-per-sample"])
    assert result.exit_code == 0, result.exception
    assert built == [False]
    rec = torch.load(out / "lesion_head.ckpt", weights_only=False)["extra"]["lesion_head"]
    assert rec["config"]["dice_per_sample"] is True


def test_train_lesion_user_errors(base_ckpt, phantoms, trained, tmp_path):
    from clinfuse.training.lesion import LesionTrainConfig, train_lesion_head

    with pytest.raises(ClinfuseInputError, match="overwrite"):
        train_lesion_head(
            base_ckpt, phantoms[0], phantoms[1], trained, LesionTrainConfig(steps=1), log=None
        )
    with pytest.raises(ClinfuseInputError, match="unknown fused input"):
        LesionTrainConfig(fused_inputs=("median",)).validate()
    with pytest.raises(ClinfuseInputError, match="pos_fraction"):
        LesionTrainConfig(pos_fraction=1.5).validate()
    not_ckpt = tmp_path / "x.ckpt"
    not_ckpt.write_text("hello")
    with pytest.raises(ClinfuseInputError):
        train_lesion_head(not_ckpt, phantoms[0], phantoms[1], tmp_path / "o", log=None)


def test_lesion_head_scores_any_fused_image(trained, phantoms, tmp_path):
    from clinfuse.evaluation import evaluate_dataset
    from clinfuse.evaluation.dataset import prepare_cases
    from clinfuse.pipeline import lesion_head_predictor

    predict = lesion_head_predictor(trained / "lesion_head.ckpt")
    item = next(iter(prepare_cases(phantoms[0], limit=1)))
    prep = item.prepared
    prob = predict(prep.mri, prep)
    assert prob.shape == prep.shape
    assert np.all(prob[~prep.brain] == 0.0) and prob.max() <= 1.0
    res = evaluate_dataset(
        "max",
        phantoms[0],
        tmp_path / "ev",
        limit=2,
        lesion_head=predict,
        lesion_head_name="test-head",
    )
    with_lesion = [r for r in res.rows if not np.isnan(r["dice"])]
    assert with_lesion, "a baseline scored with the head gets lesion metrics"
    assert all(0.0 <= r["dice"] <= 1.0 for r in with_lesion)


def test_head_moves_to_another_checkpoint(trained, base_ckpt, tmp_path):
    from clinfuse.training.checkpoint import ema_weights, load_checkpoint, read_checkpoint

    out = tmp_path / "moved"
    args = ["train-lesion", "--checkpoint", str(base_ckpt), "--head-from"]
    args += [str(trained / "lesion_head.ckpt"), "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    moved = load_checkpoint(out / "lesion_head.ckpt")
    src = load_checkpoint(trained / "lesion_head.ckpt")
    assert float(moved.model.lesion_head.temperature) == float(src.model.lesion_head.temperature)
    assert int(moved.model.lesion_head.window) == int(src.model.lesion_head.window)
    w_base, w_moved = ema_weights(read_checkpoint(base_ckpt)), ema_weights(moved.state)
    for k, v in w_base.items():
        if not k.startswith("lesion_head."):
            assert torch.equal(v, w_moved[k]), k
    again = CliRunner().invoke(app, args)  # no overwrite without --overwrite
    assert again.exit_code != 0


def test_head_alone_is_kept_small_and_rebuilds_the_same_export(trained, base_ckpt, tmp_path):
    """`--export-head F`: the head's float16 weights, calibration and record without the
    denoiser; fusion refuses it with an error saying what it is, and `--head-from F` puts it
    back into a checkpoint whose weights equal the `--export` copy's."""
    from clinfuse.training.checkpoint import ema_weights, load_checkpoint, read_checkpoint

    head = tmp_path / "head.pt"
    args = ["train-lesion", "--checkpoint", str(base_ckpt), "--head-from"]
    args += [str(trained / "lesion_head.ckpt"), "--out", str(tmp_path / "a")]
    result = CliRunner().invoke(app, [*args, "--export-head", str(head)])
    assert result.exit_code == 0, result.output
    alone = read_checkpoint(head)
    weights = ema_weights(alone)
    assert weights and all(k.startswith("lesion_head.") for k in weights)
    assert all(v.dtype == torch.float16 for v in weights.values() if v.is_floating_point())
    assert alone["extra"]["lesion_head"]["min_lesion_ml"] == pytest.approx(
        read_checkpoint(trained / "lesion_head.ckpt")["extra"]["lesion_head"]["min_lesion_ml"]
    )
    assert head.stat().st_size < (trained / "slim.pt").stat().st_size / 2
    with pytest.raises(ClinfuseInputError, match="--head-from") as err:
        load_checkpoint(head)
    assert str(head) in str(err.value)
    again = CliRunner().invoke(app, [*args, "--export-head", str(head)])  # no silent overwrite
    assert again.exit_code != 0 and "exists" in str(again.exception)
    # nor is it a model to put a head into (training or --head-from's target)
    into = ["train-lesion", "--checkpoint", str(head), "--head-from"]
    into += [str(trained / "lesion_head.ckpt"), "--out", str(tmp_path / "c")]
    wrong = CliRunner().invoke(app, into)
    assert wrong.exit_code != 0 and "only the lesion_head weights" in str(wrong.exception)
    assert not (tmp_path / "c" / "lesion_head.ckpt").exists()

    rebuilt = tmp_path / "b"
    args = ["train-lesion", "--checkpoint", str(base_ckpt), "--head-from", str(head)]
    result = CliRunner().invoke(app, [*args, "--out", str(rebuilt)])
    assert result.exit_code == 0, result.output
    assert load_checkpoint(rebuilt / "lesion_head.ckpt").model.lesion_head is not None  # fuses
    w_rebuilt = ema_weights(read_checkpoint(rebuilt / "lesion_head.ckpt"))
    w_export = ema_weights(read_checkpoint(trained / "slim.pt"))
    for k, v in w_export.items():
        if k.startswith("lesion_head."):
            assert torch.equal(v.float(), w_rebuilt[k].float()), k


def _assert_same_head_weights(new, src) -> None:
    """The lesion-head network tensors of two loaded checkpoints are identical (EMA)."""
    from clinfuse.training.checkpoint import ema_weights

    w_new, w_src = ema_weights(new.state), ema_weights(src.state)
    keys = [k for k in w_src if k.startswith("lesion_head.unet.")]
    assert keys
    for k in keys:
        assert torch.equal(w_src[k], w_new[k]), k


def test_head_from_recalibrate_refits_only_the_calibration(trained, base_ckpt, phantoms, tmp_path):
    """`--head-from H --recalibrate --val-data V`: the head's weights move unchanged, its
    temperature and mask rule are refitted on V (as the end of training does) and recorded."""
    from clinfuse.training.checkpoint import load_checkpoint

    out = tmp_path / "recal"
    args = ["train-lesion", "--checkpoint", str(base_ckpt), "--head-from"]
    args += [str(trained / "lesion_head.ckpt"), "--out", str(out)]
    refused = CliRunner().invoke(app, [*args, "--recalibrate"])
    assert refused.exit_code != 0 and "--val-data" in str(refused.exception)
    result = CliRunner().invoke(app, [*args, "--recalibrate", "--val-data", str(phantoms[1])])
    assert result.exit_code == 0, result.output
    assert "recalibrated on 2 validation cases" in result.output
    new = load_checkpoint(out / "lesion_head.ckpt")
    src = load_checkpoint(trained / "lesion_head.ckpt")
    _assert_same_head_weights(new, src)
    record = new.state["extra"]["lesion_head"]
    assert record["recalibrated"] and record["val_data"] == str(phantoms[1])
    assert record["min_component_prob"] in MIN_COMPONENT_PROB_CHOICES
    head = new.model.lesion_head
    assert float(head.min_component_prob) == pytest.approx(record["min_component_prob"])
    # same weights, same validation cases: the same temperature as the training run fitted
    assert float(head.temperature) == pytest.approx(float(src.model.lesion_head.temperature))
    assert float(head.min_lesion_prob) == 0.0 and record["min_lesion_prob"] == 0.0  # no gate
    gated = CliRunner().invoke(
        app,
        [*args, "--recalibrate", "--val-data", str(phantoms[1]), "--lesion-gate", "--overwrite"]
        + ["--peak-rule", "--near-temperature", "--rule-max-lesion-free-share", "0.25"],
    )
    assert gated.exit_code == 0, gated.output
    assert "lesion gate" in gated.output and "components kept from peak probability" in gated.output
    record = load_checkpoint(out / "lesion_head.ckpt").state["extra"]["lesion_head"]
    assert "gate_by_min_lesion_prob" in record["calibration"]
    assert record["min_lesion_prob"] in MIN_LESION_PROB_CHOICES
    assert set(record["calibration"]["dice_by_min_peak_prob"]) == {
        str(h) for h in MIN_PEAK_PROB_CHOICES
    }
    assert record["min_peak_prob"] in MIN_PEAK_PROB_CHOICES
    assert record["calibration"]["rule_max_lesion_free_share"] == 0.25
    # the near-mask temperature: fitted (or None when nothing near a mask has both classes)
    assert "near_temperature" in record["calibration"]
    scale = float(load_checkpoint(out / "lesion_head.ckpt").model.lesion_head.near_logit_scale)
    assert record["near_logit_scale"] == pytest.approx(scale, rel=1e-6)
    if record["calibration"]["near_temperature"] is not None:
        t = record["calibration"]["temperature"]
        assert scale == pytest.approx(t / record["calibration"]["near_temperature"], rel=1e-6)
    # a gate without --recalibrate is refused
    refused = CliRunner().invoke(app, [*args, "--lesion-gate", "--overwrite"])
    assert refused.exit_code != 0 and "--recalibrate" in str(refused.exception)
    # --recalibrate belongs to --head-from
    alone = ["train-lesion", "--checkpoint", str(base_ckpt), "--recalibrate", "--out", str(out)]
    assert "--head-from" in str(CliRunner().invoke(app, alone).exception)


def test_head_from_recalibrate_switches_flip_tta(trained, base_ckpt, phantoms, tmp_path):
    """`--head-from H --recalibrate --flip-tta`: same weights, flip averaging on, temperature
    and mask rule fitted to the averaged logits; switching it without a refit is refused."""
    from clinfuse.training.checkpoint import load_checkpoint

    out = tmp_path / "tta"
    args = ["train-lesion", "--checkpoint", str(base_ckpt), "--head-from"]
    args += [str(trained / "lesion_head.ckpt"), "--out", str(out), "--flip-tta"]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code != 0 and "recalibrate" in str(refused.exception)
    result = CliRunner().invoke(app, [*args, "--recalibrate", "--val-data", str(phantoms[1])])
    assert result.exit_code == 0, result.output
    assert "flip-averaged" in result.output
    new = load_checkpoint(out / "lesion_head.ckpt")
    src = load_checkpoint(trained / "lesion_head.ckpt")
    _assert_same_head_weights(new, src)
    assert int(new.model.lesion_head.flip_tta) == 1 and int(src.model.lesion_head.flip_tta) == 0
    assert new.state["extra"]["lesion_head"]["flip_tta"] is True
    # the averaged logits are not the single-pass ones: the fit is redone on them
    assert float(new.model.lesion_head.temperature) != pytest.approx(
        float(src.model.lesion_head.temperature), abs=1e-6
    )


def test_training_with_flip_tta_validates_and_exports_the_averaged_head(
    base_ckpt, phantoms, tmp_path, monkeypatch
):
    """`--flip-tta` in training: validation and calibration run the flip-averaged head, and the
    written head keeps the flag (with its calibration fitted that way)."""
    import clinfuse.nn.lesion_head as lh
    from clinfuse.training.checkpoint import load_checkpoint
    from clinfuse.training.lesion import LesionTrainConfig, train_lesion_head

    calls = {"n": 0}
    real = lh.flip_mean

    def counting(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(lh, "flip_mean", counting)
    cfg = LesionTrainConfig(
        steps=2, val_every=2, patch_size=(16, 16, 16), channels=(4, 8), amp="off", flip_tta=True
    )
    res = train_lesion_head(base_ckpt, phantoms[0], phantoms[1], tmp_path, cfg, log=None)
    # 2 validation cases: the step's validation, calibration, final validation
    assert calls["n"] == 3 * 2
    new = load_checkpoint(res.checkpoint)
    assert int(new.model.lesion_head.flip_tta) == 1
    assert new.state["extra"]["lesion_head"]["config"]["flip_tta"] is True


def test_flip_tta_is_for_3d_heads():
    from clinfuse.training.lesion import LesionTrainConfig

    with pytest.raises(ClinfuseInputError, match="3D"):
        LesionTrainConfig(patch_size=(32, 32), flip_tta=True).validate()
    LesionTrainConfig(patch_size=(32, 32, 32), flip_tta=True).validate()


def test_train_lesion_resumes_an_interrupted_run(base_ckpt, phantoms, tmp_path):
    from clinfuse.training.lesion import LesionTrainConfig, train_lesion_head

    cfg = LesionTrainConfig(steps=4, val_every=2, patch_size=(16, 16, 16), channels=(4, 8))

    class Interrupted(Exception):
        pass

    def stop_after_step_2(msg: str) -> None:
        if msg.startswith("step 2:"):
            raise Interrupted  # after step 2's state was saved: a killed job

    out = tmp_path / "run"
    with pytest.raises(Interrupted):
        train_lesion_head(base_ckpt, phantoms[0], phantoms[1], out, cfg, log=stop_after_step_2)
    assert (out / "lesion_last.pt").is_file() and not (out / "lesion_head.ckpt").exists()
    said: list[str] = []
    res = train_lesion_head(
        base_ckpt, phantoms[0], phantoms[1], out, cfg, resume=True, log=said.append
    )
    assert any("resumed from step 2" in m for m in said)
    assert [m.split(":")[0] for m in said if m.startswith("step ")] == ["step 4"]
    with open(res.metrics_csv, newline="") as fh:
        assert [int(r["step"]) for r in csv.DictReader(fh)] == [2, 4]
    assert res.checkpoint.is_file()
    # other options cannot resume this run; nothing to resume is an error too
    with pytest.raises(ClinfuseInputError, match="different options"):
        train_lesion_head(
            base_ckpt, phantoms[0], phantoms[1], out,
            LesionTrainConfig(steps=6, val_every=2, patch_size=(16, 16, 16), channels=(4, 8)),
            overwrite=True, resume=True, log=None,
        )  # fmt: skip
    # a run saved before --amp existed trained in float32: it resumes with amp="off" only
    last = torch.load(out / "lesion_last.pt", weights_only=False)
    del last["config"]["amp"]
    torch.save(last, out / "lesion_last.pt")
    with pytest.raises(ClinfuseInputError, match=r"different options \(amp\)"):
        train_lesion_head(
            base_ckpt, phantoms[0], phantoms[1], out, cfg, overwrite=True, resume=True, log=None
        )
    off = LesionTrainConfig(**{**cfg.__dict__, "amp": "off"})
    train_lesion_head(
        base_ckpt, phantoms[0], phantoms[1], out, off, overwrite=True, resume=True, log=None
    )
    with pytest.raises(ClinfuseInputError, match="nothing to resume"):
        train_lesion_head(
            base_ckpt, phantoms[0], phantoms[1], tmp_path / "new", cfg, resume=True, log=None
        )


def test_train_lesion_warm_starts_from_a_trained_head(base_ckpt, phantoms, trained, tmp_path):
    from clinfuse.nn.lesion_head import LesionHead
    from clinfuse.training.checkpoint import ema_weights, read_checkpoint
    from clinfuse.training.lesion import LesionTrainConfig, _warm_start

    src = trained / "lesion_head.ckpt"
    cfg = LesionTrainConfig(init_head=str(src))
    head = LesionHead(3, cfg.channels, cfg.res_units, inputs=cfg.inputs, norm=cfg.norm)
    _warm_start(head, cfg, 3)
    saved = {
        k[len("lesion_head.") :]: v
        for k, v in ema_weights(read_checkpoint(src)).items()
        if k.startswith("lesion_head.")
    }
    assert float(saved["temperature"]) != 1.0  # the source was calibrated ...
    got = head.state_dict()
    for k, v in saved.items():
        if k.startswith("unet."):
            torch.testing.assert_close(got[k], v.float())
    assert float(head.temperature) == 1.0 and float(head.min_lesion_ml) == 0.0  # ... reset here
    assert float(head.min_component_prob) == 0.0
    # a head of another architecture is refused, naming the file
    other = LesionTrainConfig(init_head=str(src), inputs="fused+sources")
    with pytest.raises(ClinfuseInputError, match="lesion head") as err:
        _warm_start(LesionHead(3, other.channels, other.res_units, inputs=other.inputs), other, 3)
    assert str(src) in str(err.value)
    # through the CLI: a short warm-started run trains and records where it started
    out = tmp_path / "warm"
    args = ["train-lesion", "--checkpoint", str(base_ckpt), "--data", str(phantoms[0])]
    args += ["--val-data", str(phantoms[1]), "--out", str(out), "--steps", "2"]
    args += ["--val-every", "1", "--patch", "16", "--device", "cpu", "--threads", "1"]
    args += ["--init-head", str(src)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    record = read_checkpoint(out / "lesion_head.ckpt")
    assert str(src) in str(record)


@pytest.mark.parametrize(("amp", "said"), [("bf16", "bf16 autocast"), ("off", "float32")])
def test_train_lesion_precision_is_chosen_and_reported(base_ckpt, phantoms, tmp_path, amp, said):
    from clinfuse.training.checkpoint import read_checkpoint
    from clinfuse.training.lesion import LesionTrainConfig, train_lesion_head

    cfg = LesionTrainConfig(steps=2, val_every=2, patch_size=(16, 16, 16), channels=(4, 8), amp=amp)
    log: list[str] = []
    res = train_lesion_head(base_ckpt, phantoms[0], phantoms[1], tmp_path, cfg, log=log.append)
    assert any(m.startswith(f"training precision: {said}") for m in log)
    with open(res.metrics_csv, newline="") as fh:
        assert np.isfinite(float(next(csv.DictReader(fh))["loss"]))
    state = read_checkpoint(res.checkpoint)
    head = {k: v for k, v in state["model"].items() if k.startswith("lesion_head.")}
    assert head and all(v.dtype != torch.bfloat16 for v in head.values())
    with pytest.raises(ClinfuseInputError, match="amp must be one of"):
        LesionTrainConfig(amp="fp16").validate()


def test_validation_and_calibration_do_not_score_unknown_labels(monkeypatch):
    # C-STAR-like validation case: a labelled inserted lesion, and a real unlabelled one in an
    # `ignore` region. Finding both is a perfect prediction, not a false positive.
    from clinfuse.training import lesion as tl

    shape = (20, 20, 20)
    label = np.zeros(shape, np.float32)
    label[12:16, 4:8, 4:8] = 1
    valid = np.ones(shape, np.float32)
    valid[:10] = 0  # the unlabelled hemisphere
    found = label > 0
    found[2:6, 4:8, 4:8] = True  # the real lesion, inside the ignore region
    logits = np.where(found, 8.0, -8.0).astype(np.float32)
    brain = np.ones(shape, bool)

    def item(lab: np.ndarray, val: np.ndarray) -> tl._Item:
        src = np.zeros((3, *shape), np.float32)
        return tl._Item("c", src, src[0], {}, lab, val, brain, (2.0, 2.0, 2.0))

    monkeypatch.setattr(tl, "predict_logits", lambda *a, **k: logits)
    cfg = tl.LesionTrainConfig(patch_size=(16, 16, 16))
    head = torch.nn.Linear(1, 1)
    with_lesion, lesion_free = item(label, valid), item(np.zeros(shape, np.float32), valid)
    keep_all = tl.LesionMaskRule()
    scores = tl._validate(head, [with_lesion, lesion_free], cfg, keep_all)
    assert scores["dice"] == pytest.approx(1.0)
    assert scores["fp_voxels_lesion_free"] == 64.0  # the inserted-lesion blob: label 0, known
    _, _, record = tl._calibrate(head, [with_lesion], cfg)
    assert all(v == pytest.approx(1.0) for v in record["dice_by_min_ml"].values())
    everything_known = item(label, np.ones(shape, np.float32))
    assert tl._validate(head, [everything_known], cfg, keep_all)["dice"] < 0.7


def test_non_finite_updates_are_skipped_not_applied(base_ckpt, phantoms, tmp_path, monkeypatch):
    # a bf16 overflow gives a NaN loss now and then: that update is skipped and counted, and
    # the weights stay finite (one NaN step used to poison the whole head)
    import monai.losses

    from clinfuse.training.checkpoint import read_checkpoint
    from clinfuse.training.lesion import LesionTrainConfig, train_lesion_head

    real = monai.losses.DiceCELoss
    calls = [0]

    class EveryOtherNaN(real):
        def forward(self, x, y):
            calls[0] += 1
            out = super().forward(x, y)
            return out * float("nan") if calls[0] % 2 else out

    monkeypatch.setattr(monai.losses, "DiceCELoss", EveryOtherNaN)
    cfg = LesionTrainConfig(steps=4, val_every=4, patch_size=(16, 16, 16), channels=(4, 8))
    log: list[str] = []
    res = train_lesion_head(base_ckpt, phantoms[0], phantoms[1], tmp_path, cfg, log=log.append)
    assert any("2 non-finite updates skipped" in m for m in log)
    with open(res.metrics_csv, newline="") as fh:
        assert np.isfinite(float(next(csv.DictReader(fh))["loss"]))
    weights = read_checkpoint(res.checkpoint)["model"]
    assert all(torch.isfinite(v).all() for k, v in weights.items() if "lesion_head" in k)


def test_pick_rule_by_dice_or_by_hd95_among_the_near_best():
    from clinfuse.training.lesion import RuleScore, _pick_rule

    # session 14's per-patch head, roughly: a loose filter wins Dice by 0.001 with far components
    table = {
        0.0: RuleScore(0.700, 20.0, 48),
        0.65: RuleScore(0.711, 16.5, 48),
        0.9: RuleScore(0.710, 12.7, 48),
        0.95: RuleScore(0.709, 9.0, 46),  # near in Dice, but drops two lesions
    }
    assert _pick_rule(table, 0.0) == 0.65
    assert _pick_rule(table, 0.003) == 0.9
    assert _pick_rule(table, 0.05) == 0.9  # never at the cost of a lesion found
    ties = {0.0: RuleScore(0.5, 3.0, 2), 0.5: RuleScore(0.5, 3.0, 2)}
    assert _pick_rule(ties, 0.0) == 0.0 and _pick_rule(ties, 0.01) == 0.0
    no_lesion = {0.0: RuleScore(float("nan"), float("nan"), 0), 0.5: RuleScore(0.1, 1.0, 1)}
    assert _pick_rule(no_lesion, 0.0) == 0.0 and _pick_rule(no_lesion, 0.01) == 0.0


def test_pick_rule_may_lose_a_share_of_the_lesions_found():
    """`found_tolerance`: a near-best rule that overlaps one lesion fewer of 110 (within 1 %)
    may win on HD95; with 0 (the default) it may not; two fewer (1.8 %) never."""
    from clinfuse.training.lesion import RuleScore, _pick_rule

    table = {
        0.0: RuleScore(0.7634, 7.96, 110),  # best Dice, keeps far specks
        0.05: RuleScore(0.7626, 7.98, 109),
        0.1: RuleScore(0.7626, 7.37, 109),
        0.2: RuleScore(0.7630, 5.00, 108),
    }
    assert _pick_rule(table, 0.01) == 0.0
    assert _pick_rule(table, 0.01, 0.01) == 0.1
    assert _pick_rule(table, 0.0, 0.01) == 0.0  # by Dice alone: the guard is not used


def test_calibration_records_hd95_and_picks_by_it(monkeypatch):
    from dataclasses import replace

    import clinfuse.metrics.calibration as cal
    import clinfuse.training.lesion as tl

    shape = (32, 32, 32)
    label = np.zeros(shape, np.float32)
    label[4:10, 4:10, 4:10] = 1
    logits = np.full(shape, -8.0, np.float32)
    logits[5:10, 4:10, 4:10] = 8.0  # the lesion, a little under-segmented
    logits[26:29, 26:28, 26:28] = 0.3  # far, faint false component (12 voxels of 8 mm^3)
    brain = np.ones(shape, bool)
    src = np.zeros((3, *shape), np.float32)
    items = [tl._Item("c", src, src[0], {}, label, np.ones(shape, np.float32), brain, (2.0,) * 3)]
    monkeypatch.setattr(tl, "predict_logits", lambda *a, **k: logits)
    monkeypatch.setattr(cal, "fit_temperature", lambda z, y: 1.0)
    head = torch.nn.Linear(1, 1)
    cfg = tl.LesionTrainConfig(patch_size=(16, 16, 16))
    _, _, plain = tl._calibrate(head, items, cfg)
    assert "hd95_by_min_ml" not in plain and plain["rule_dice_tolerance"] == 0.0
    _, rule, rec = tl._calibrate(head, items, replace(cfg, rule_dice_tolerance=0.01))
    hd, found = rec["hd95_by_min_ml"], rec["found_by_min_ml"]
    assert hd["0.0"] > 20.0 > hd["0.1"] and found["0.0"] == found["0.1"] == 1
    table = {float(k): tl.RuleScore(rec["dice_by_min_ml"][k], hd[k], found[k]) for k in hd}
    assert rule.min_ml == tl._pick_rule(table, 0.01) > 0.0
    pred = rule.apply(1 / (1 + np.exp(-logits)), (2.0, 2.0, 2.0), 0.5)
    assert not pred[20:, 20:, 20:].any() and pred[6:9, 6:9, 6:9].all()


def test_calibration_guard_counts_lesions_found_not_specks_in_missed_cases(monkeypatch):
    """A far speck in a case whose lesion is missed is not a find: the guard that keeps the
    rule criterion from losing lesions must not keep the minimum size that leaves the speck."""
    import clinfuse.metrics.calibration as cal
    import clinfuse.training.lesion as tl

    shape = (32, 32, 32)
    label = np.zeros(shape, np.float32)
    label[4:10, 4:10, 4:10] = 1
    found = np.full(shape, -8.0, np.float32)
    found[4:10, 4:10, 4:10] = 8.0  # case a: the lesion, exactly
    missed = np.full(shape, -8.0, np.float32)
    missed[28, 28, 28] = 8.0  # case b: the lesion missed, one confident voxel (0.008 mL) far off
    brain, src = np.ones(shape, bool), np.zeros((3, *shape), np.float32)

    def item(name: str) -> tl._Item:
        return tl._Item(name, src, src[0], {}, label, np.ones(shape, np.float32), brain, (2.0,) * 3)

    items = [item("a"), item("b")]
    calls = iter([found, missed])  # the head's logits on a, then b
    monkeypatch.setattr(tl, "predict_logits", lambda *a, **k: next(calls))
    monkeypatch.setattr(cal, "fit_temperature", lambda z, y: 1.0)
    cfg = tl.LesionTrainConfig(patch_size=(16, 16, 16), rule_dice_tolerance=0.01)
    _, rule, rec = tl._calibrate(torch.nn.Linear(1, 1), items, cfg)
    assert rec["found_by_min_ml"] == {"0.0": 1, "0.05": 1, "0.1": 1}
    assert rec["hd95_by_min_ml"]["0.0"] > 30.0 > rec["hd95_by_min_ml"]["0.05"]
    assert rule.min_ml == 0.05  # the speck goes; with the old count (2 against 1) 0.0 stayed


def _named_calibration_cases(
    monkeypatch: pytest.MonkeyPatch,
    logits: dict[str, np.ndarray],
    labels: np.ndarray | dict[str, np.ndarray],
) -> list:
    """Validation items named by `logits`' keys (one label for all, or one per name), each
    with its sources filled with its name's code so the patched `predict_logits` returns that
    name's logits; the temperature fit is patched to 1."""
    import clinfuse.metrics.calibration as cal
    import clinfuse.training.lesion as tl

    def item(name: str) -> tl._Item:
        shape = logits[name].shape
        label = labels[name] if isinstance(labels, dict) else labels
        src = np.full((3, *shape), ord(name), np.float32)
        known, brain = np.ones(shape, np.float32), np.ones(shape, bool)
        return tl._Item(name, src, src[0], {}, label, known, brain, (2.0,) * 3)

    def predict(head: object, composite: np.ndarray, sources: np.ndarray, *a, **k) -> np.ndarray:
        return logits[chr(int(sources[0, 0, 0, 0]))]

    monkeypatch.setattr(tl, "predict_logits", predict)
    monkeypatch.setattr(cal, "fit_temperature", lambda z, y: 1.0)
    return [item(n) for n in logits]


def test_joint_rule_does_not_keep_specks_for_a_find_the_filter_discards(monkeypatch):
    """Greedy calibration keeps a 0 mL minimum for the one lesion only a speck overlaps (case
    b), then picks a secondary filter that drops that speck anyway (case c's faint false
    component), leaving case a's far speck and its HD95. The joint choice over every (minimum
    size, filter) pair keeps a minimum that removes it; the pair table is recorded."""
    import clinfuse.training.lesion as tl

    shape = (32, 32, 32)
    label = np.zeros(shape, np.float32)
    label[4:10, 4:10, 4:10] = 1
    a = np.full(shape, -8.0, np.float32)
    a[4:10, 4:10, 4:10] = 4.0  # found exactly (p 0.98)
    a[26:28, 24:29, 28] = 4.0  # and a confident far speck of 10 voxels, 0.08 mL
    b = np.full(shape, -8.0, np.float32)
    b[5:10, 6, 6] = 0.85  # missed but for a faint 0.04 mL island inside the lesion (p 0.7)
    b[20:24, 20:24, 20:24] = 4.0  # and a confident false component elsewhere
    c = np.full(shape, -8.0, np.float32)
    c[4:10, 4:10, 4:10] = 4.0  # found exactly
    c[18:24, 18:24, 18:24] = 0.85  # and a faint false component of the same size
    items = _named_calibration_cases(monkeypatch, {"a": a, "b": b, "c": c}, label)
    cfg = tl.LesionTrainConfig(patch_size=(16, 16, 16), rule_dice_tolerance=0.01)
    _, greedy, rec = tl._calibrate(torch.nn.Linear(1, 1), items, cfg)
    assert (greedy.min_ml, greedy.min_component_prob) == (0.0, 0.75)
    assert rec["found_by_min_ml"]["0.0"] == 3 > rec["found_by_min_ml"]["0.1"]
    assert "dice_by_min_ml_and_component_prob" not in rec
    joint_cfg = tl.LesionTrainConfig(**{**cfg.__dict__, "joint_rule": True})
    _, joint, rec = tl._calibrate(torch.nn.Linear(1, 1), items, joint_cfg)
    assert (joint.min_ml, joint.min_component_prob) == (0.1, 0.75)
    pairs = rec["dice_by_min_ml_and_component_prob"]
    assert len(pairs) == len(tl.MIN_ML_CHOICES) * len(tl.MIN_COMPONENT_PROB_CHOICES)
    assert pairs["0.1/0.75"] > pairs["0.0/0.75"] > pairs["0.1/0.75"] - 0.01
    hd = rec["hd95_by_min_ml_and_component_prob"]
    assert hd["0.1/0.75"] < hd["0.0/0.75"] == hd["0.05/0.75"]
    assert rec["found_by_min_ml_and_component_prob"]["0.1/0.75"] == 2


def test_pick_rule_caps_the_lesion_free_cases_marked():
    """`max_marked`: the criterion only sees the choices marking at most that many lesion-free
    cases, or, when none does, those marking fewest; None (the default) reads no count."""
    from clinfuse.training.lesion import RuleScore, _pick_rule

    # lesion28r on val29b, roughly: no peak filter finds small infarcts and marks healthy heads
    table = {
        0.0: RuleScore(0.661, 8.0, 150, 22),
        0.9: RuleScore(0.655, 7.0, 146, 9),
        0.95: RuleScore(0.650, 6.5, 142, 4),
        0.98: RuleScore(0.640, 6.0, 138, 2),
    }
    assert _pick_rule(table, 0.0) == 0.0
    assert _pick_rule(table, 0.0, max_marked=22) == 0.0
    assert _pick_rule(table, 0.0, max_marked=10) == 0.9
    assert _pick_rule(table, 0.0, max_marked=4) == 0.95
    assert _pick_rule(table, 0.0, max_marked=0) == 0.98  # none meets it: the fewest marked
    assert _pick_rule(table, 0.02, max_marked=10) == 0.9  # found guard within the capped set
    assert _pick_rule(table, 0.02, 0.05, max_marked=10) == 0.95  # ... or by HD95 among them
    assert RuleScore(0.5, 1.0, 1).marked == 0


def test_calibration_caps_the_lesion_free_cases_a_rule_marks(monkeypatch):
    """`rule_max_lesion_free_share`: a faint true lesion (case b, peak 0.85) and a false one on a
    lesion-free head (case c, peak 0.90) separate no peak filter from 0.95. By the Dice over the
    lesion cases alone the calibration keeps every component (and marks c); capped at no marked
    lesion-free case it picks the lowest peak that leaves c empty. The pair step, where no
    choice meets the cap, keeps its own criterion; the per-choice counts are recorded; 1 (the
    default) is no cap."""
    from dataclasses import replace

    import clinfuse.training.lesion as tl

    shape = (32, 32, 32)
    lesion = np.zeros(shape, np.float32)
    lesion[4:10, 4:10, 4:10] = 1
    a = np.full(shape, -8.0, np.float32)
    a[4:10, 4:10, 4:10] = 4.0  # found, p 0.982
    b = np.full(shape, -8.0, np.float32)
    b[4:10, 4:10, 4:10] = 1.7  # found only without a peak filter, p 0.85
    c = np.full(shape, -8.0, np.float32)
    c[20:24, 20:24, 20:24] = 2.2  # a lesion-free head's false lesion, p 0.900 (0.51 mL)
    logits = {"a": a, "b": b, "c": c}
    labels = {"a": lesion, "b": lesion, "c": np.zeros(shape, np.float32)}
    items = _named_calibration_cases(monkeypatch, logits, labels)
    cfg = tl.LesionTrainConfig(patch_size=(16, 16, 16), peak_rule=True, joint_rule=True)
    _, free, rec = tl._calibrate(torch.nn.Linear(1, 1), items, cfg)
    assert free.min_peak_prob == 0.0 and "rule_max_lesion_free_marked" not in rec
    assert rec["lesion_free_validation_cases"] == 1
    marked = rec["lesion_free_marked_by_min_peak_prob"]
    assert marked == {"0.0": 1, "0.9": 1, "0.95": 0, "0.98": 0, "0.99": 0}
    assert set(rec["lesion_free_marked_by_min_ml_and_component_prob"].values()) == {1}
    _, same, _ = tl._calibrate(
        torch.nn.Linear(1, 1), items, replace(cfg, rule_max_lesion_free_share=1.0)
    )
    assert same == free
    _, capped, rec = tl._calibrate(
        torch.nn.Linear(1, 1), items, replace(cfg, rule_max_lesion_free_share=0.5)
    )
    assert capped.min_peak_prob == 0.95
    assert (capped.min_ml, capped.min_component_prob) == (free.min_ml, free.min_component_prob)
    assert rec["rule_max_lesion_free_share"] == 0.5 and rec["rule_max_lesion_free_marked"] == 0
    assert rec["dice_by_min_peak_prob"]["0.95"] == pytest.approx(0.5)
    probs = {n: 1 / (1 + np.exp(-lg)) for n, lg in logits.items()}
    assert not capped.apply(probs["c"], (2.0,) * 3, 0.5).any()
    assert capped.apply(probs["a"], (2.0,) * 3, 0.5).sum() == 216
    with pytest.raises(ClinfuseInputError, match="rule_max_lesion_free_share"):
        replace(cfg, rule_max_lesion_free_share=1.5).validate()


@pytest.mark.parametrize(
    "option",
    [
        {"rule_dice_tolerance": 0.003},
        {"rule_found_tolerance": 0.01},
        {"rule_max_lesion_free_share": 0.05},
        {"mirror_ghosts": True},
        {"joint_rule": True},
        {"peak_rule": True},
        {"near_temperature": True},
    ],
)
def test_rule_criterion_needs_a_recalibration(tmp_path, option):
    from clinfuse.training.lesion import transplant_lesion_head

    with pytest.raises(ClinfuseInputError, match="recalibrat"):
        transplant_lesion_head(
            tmp_path / "head.ckpt", tmp_path / "base.ckpt", tmp_path / "out.ckpt", **option
        )
