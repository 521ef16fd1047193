"""The rigid mid-sagittal plane (`clinfuse.nn.symmetry`) and the lesion head mode that uses it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.transforms import Rotate

from clinfuse.nn import symmetry
from clinfuse.nn.lesion_head import (
    IN_CHANNELS,
    LesionHead,
    head_inputs,
    mid_sagittal_shift,
    mirror,
    mirror_channels,
)
from clinfuse.nn.symmetry import MirrorPlane, estimate_plane, plane_of, reflect


def symmetric_head(
    shape: tuple[int, int, int] = (64, 72, 56), centre_x: float = 30.0
) -> np.ndarray:
    """An ellipsoid "head" symmetric about the plane x = `centre_x`, with paired blobs of
    different sizes and brightness along y and z (so only the left-right axis is a symmetry)."""
    x, y, z = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    dx = x - centre_x
    head = ((dx / 22) ** 2 + ((y - 36) / 30) ** 2 + ((z - 28) / 22) ** 2 <= 1).astype(np.float32)
    img = 0.3 * head
    for ax, ay, az, r, v in ((8, 20, 20, 4, 0.5), (12, 40, 30, 6, 0.9), (5, 52, 18, 3, 0.7)):
        for side in (-1, 1):
            blob = (dx - side * ax) ** 2 + (y - ay) ** 2 + (z - az) ** 2 <= r * r
            img = np.where(blob & (head > 0), v, img)
    img += 0.2 * np.exp(-(((y - 30) / 8) ** 2)) * head  # an anterior-posterior band
    return img.astype(np.float32)


def turned(img: np.ndarray, yaw: float, roll: float) -> np.ndarray:
    """`img` turned by `yaw` (in the x-y plane) and `roll` (x-z plane) degrees about its centre."""
    rot = Rotate((0.0, math.radians(roll), math.radians(yaw)), keep_size=True, mode="bilinear")
    return np.asarray(rot(img[None]), np.float32)[0]


def inside_difference(img: torch.Tensor, twin: torch.Tensor) -> float:
    head = img > 0.1
    return float((img - twin).abs()[head].mean())


def test_an_upright_symmetric_head_gets_the_plane_of_the_shift_mirror():
    img = torch.from_numpy(symmetric_head(centre_x=30.0))
    plane = estimate_plane(img)
    assert abs(plane.yaw) <= 0.5 and abs(plane.roll) <= 0.5
    assert abs(plane.offset - 30.0) <= 0.5
    shift = mid_sagittal_shift(img)
    assert MirrorPlane.from_shift(shift, img.shape[0]).offset == pytest.approx(30.0, abs=0.5)
    # reflecting about the shift plane with grid_sample is the integer mirror
    exact = reflect(img[None], MirrorPlane.from_shift(shift, img.shape[0]))[0]
    torch.testing.assert_close(exact, mirror(img[None], shift, axis=1)[0])
    assert inside_difference(img, reflect(img[None], plane)[0]) < 0.02


def test_a_turned_head_gets_its_tilted_plane_and_a_far_better_twin_than_the_shift_mirror():
    img = torch.from_numpy(turned(symmetric_head(), yaw=7.0, roll=-5.0))
    plane = estimate_plane(img)
    assert abs(abs(plane.yaw) - 7.0) <= 1.0 and abs(abs(plane.roll) - 5.0) <= 1.0
    rigid = inside_difference(img, reflect(img[None], plane)[0])
    shifted = inside_difference(img, mirror(img[None], mid_sagittal_shift(img), axis=1)[0])
    assert rigid < 0.35 * shifted, (rigid, shifted)


def test_reflect_is_its_own_inverse_and_passes_gradients():
    img = torch.from_numpy(turned(symmetric_head(), yaw=-4.0, roll=3.0)).requires_grad_(True)
    plane = MirrorPlane(-4.0, 3.0, 31.0)
    twice = reflect(reflect(img[None], plane), plane)[0]
    core = (slice(16, 48), slice(16, 56), slice(12, 44))  # away from the border padding
    # twice linear interpolation blurs the blobs' hard edges a little, nothing more
    assert float((twice[core] - img[core]).detach().abs().mean()) < 0.01
    reflect(img[None], plane).sum().backward()
    assert img.grad is not None and float(img.grad.abs().sum()) > 0


def test_the_plane_of_a_flipped_volume_is_the_flipped_plane():
    img = torch.from_numpy(turned(symmetric_head(), yaw=5.0, roll=4.0))
    plane = MirrorPlane(5.0, 4.0, 30.5)
    direct = reflect(img[None], plane)[0]
    flipped = reflect(img.flip(0)[None], plane.flipped(img.shape[0]))[0].flip(0)
    torch.testing.assert_close(flipped, direct, atol=1e-4, rtol=0)


def test_a_2d_plane_has_yaw_only():
    img = torch.from_numpy(symmetric_head()[:, :, 28])
    plane = estimate_plane(img)
    assert plane.roll == 0.0 and abs(plane.yaw) <= 0.5 and abs(plane.offset - 30.0) <= 0.5
    with pytest.raises(ValueError, match="no roll"):
        MirrorPlane(0.0, 2.0, 1.0).normal(2)


def test_plane_of_remembers_each_volume_by_content(monkeypatch: pytest.MonkeyPatch):
    calls = []
    real = symmetry.estimate_plane
    monkeypatch.setattr(symmetry, "estimate_plane", lambda m: calls.append(1) or real(m))
    img = torch.from_numpy(symmetric_head(centre_x=29.0))
    first = plane_of(img)
    assert plane_of(img.clone()) == first and len(calls) == 1  # same content: remembered
    other = img.clone()
    other[30, 30, 30] += 1.0
    plane_of(other)
    assert len(calls) == 2  # different content: estimated
    flipped = plane_of(img.flip(0))  # remembered with the first: the flipped plane, no search
    assert len(calls) == 2 and flipped == first.flipped(img.shape[0])


def test_rigid_mirror_mode_has_the_shift_modes_channels_about_each_items_plane():
    assert IN_CHANNELS["fused+sources+rigid-mirror"] == IN_CHANNELS["fused+sources+mirror"] == 7
    mri = torch.from_numpy(turned(symmetric_head(), yaw=6.0, roll=0.0))
    x = torch.stack([mri, mri.flip(0)])[:, None]  # two items, two different planes
    cond = torch.cat([x, torch.zeros_like(x), torch.zeros_like(x)], dim=1)
    got = head_inputs("fused+sources+rigid-mirror", x, cond)
    assert got.shape == (2, 7, *mri.shape)
    p0, p1 = plane_of(mri), plane_of(mri.flip(0))
    assert p1 == p0.flipped(mri.shape[0])  # the flipped head's plane, turned the other way
    for b, p in enumerate((p0, p1)):
        torch.testing.assert_close(got[b, 4], reflect(x[b], p)[0])  # mirrored fused channel
    given = mirror_channels(torch.cat([x, cond], 1)[:, :4], rigid=True, planes=[p0, p0])
    torch.testing.assert_close(given[0], got[0])
    head = LesionHead(3, (4, 8), 1, inputs="fused+sources+rigid-mirror").eval()
    assert head.whole_volume_only
    with torch.no_grad():
        assert head(x[:1], cond[:1]).shape == (1, 1, *mri.shape)


def test_a_shift_mirror_head_warm_starts_the_rigid_mode_and_samples_use_the_items_plane(
    monkeypatch: pytest.MonkeyPatch, tmp_path
):
    from clinfuse.errors import ClinfuseInputError
    from clinfuse.phantom import PhantomConfig, write_phantom_dataset
    from clinfuse.training import lesion as lesion_mod
    from clinfuse.training.lesion import (
        LesionTrainConfig,
        _sample_inputs,
        _warm_start,
        load_items,
    )

    rigid = "fused+sources+rigid-mirror"
    torch.manual_seed(3)  # test-only: random weights
    old = LesionHead(3, (4, 8), 1, inputs="fused+sources+mirror")
    arch = (3, "fused+sources+mirror", (4, 8), 1, "instance")
    monkeypatch.setattr(lesion_mod, "_head_of", lambda _state: (arch, old.state_dict()))
    monkeypatch.setattr("clinfuse.training.checkpoint.read_checkpoint", lambda _p: {})
    got = LesionHead(3, (4, 8), 1, inputs=rigid)
    _warm_start(
        got, LesionTrainConfig(inputs=rigid, channels=(4, 8), res_units=1, init_head="x.ckpt"), 3
    )
    for k, v in old.unet.state_dict().items():
        torch.testing.assert_close(got.unet.state_dict()[k], v)  # the same weights
    with pytest.raises(ClinfuseInputError, match="lesion head"):  # other widths: refused
        _warm_start(
            LesionHead(3, (8, 16), 1, inputs=rigid),
            LesionTrainConfig(inputs=rigid, channels=(8, 16), res_units=1, init_head="x.ckpt"),
            3,
        )

    cfg = PhantomConfig(shape=(32, 32, 24), spacing=(3.0, 3.0, 3.0), supersample=1)
    data = write_phantom_dataset(tmp_path / "d", 1, cfg, seed=3, contrast="T1", lesion="ischaemic")
    item = load_items(data, ())[0]
    scale = lambda d: {"img": d["img"] * 2.0 + 0.5}  # noqa: E731 (a fixed intensity change)
    x, *_ = _sample_inputs(
        item, LesionTrainConfig(inputs=rigid, p_composite=1.0), np.random.default_rng(0), scale
    )
    plane = plane_of(torch.from_numpy(item.sources[0]))  # of the item's own MRI
    mri = torch.from_numpy(x[1:2])
    torch.testing.assert_close(torch.from_numpy(x[5:6]), reflect(mri, plane))
