"""Rigid registration recovers a known 3 mm / 3 degree motion of a small head-like phantom."""

import numpy as np
import pytest

from clinfuse.preprocess.register import RigidResult, register_rigid
from clinfuse.preprocess.resample import resample_to_grid

N, SP = 40, 2.0
AFF = np.diag([SP, SP, SP, 1.0])
AFF[:3, 3] = -SP * (N - 1) / 2


def rot_x(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])


def anatomy(q: np.ndarray, kind: str) -> np.ndarray:
    """Ellipsoid head: brain, skull shell, scalp, plus an off-centre blob and a 'ventricle'
    so that no rotation maps the object onto itself."""
    x, y, z = q[..., 0], q[..., 1], q[..., 2]
    r = np.sqrt((x / 30) ** 2 + (y / 36) ** 2 + (z / 28) ** 2)
    blob = ((x - 8) ** 2 + (y - 10) ** 2 + (z + 4) ** 2 < 64) & (r < 0.85)
    vent = (x + 6) ** 2 / 16 + (y + 2) ** 2 / 100 + (z - 3) ** 2 / 25 < 1
    brain, skull, scalp = r < 0.85, (r >= 0.85) & (r < 0.95), (r >= 0.95) & (r < 1.0)
    if kind == "mri":  # T1-like: dark skull, bright blob
        v = 100.0 * brain + 10.0 * skull + 60.0 * scalp + 60.0 * blob
        return np.where(vent, 30.0, v).astype(np.float32)
    v = np.where(brain, 35.0, -1000.0) + 2200.0 * skull + 1020.0 * scalp + 25.0 * blob
    return np.where(vent, 5.0, v).astype(np.float32)


def test_recovers_3mm_3deg_within_1mm():
    idx = np.stack(np.meshgrid(*[np.arange(N)] * 3, indexing="ij"), -1).astype(float)
    p = idx * SP + AFF[:3, 3]
    rot, t = rot_x(3.0), np.array([3.0, 0.0, 0.0])
    # The CT shows the head moved by G(q) = R q + t, so CT(p) = anatomy(G^-1 p).
    mri = anatomy(p, "mri")
    ct = anatomy((p - t) @ rot, "ct")
    res = register_rigid(mri, AFF, ct, AFF, seed=3)
    assert register_rigid(mri, AFF, ct, AFF, seed=3) == res  # bit-for-bit reproducible
    m = np.asarray(res.matrix_ras)
    head = p[mri > 50]
    err = np.linalg.norm(head @ m[:3, :3].T + m[:3, 3] - (head @ rot.T + t), axis=1)
    assert err.mean() < 1.0 and err.max() < 1.5, (err.mean(), err.max())
    # Replaying the recorded transform puts the CT skull back on the MRI skull.
    replay = RigidResult.from_dict(res.to_dict()).to_sitk()
    back = resample_to_grid(ct, AFF, mri.shape, AFF, transform=replay, default=-1024)
    aligned = anatomy(p, "ct")  # the CT as it would look without the motion
    inside = mri > 0
    before = np.abs(ct - aligned)[inside].mean()
    after = np.abs(back - aligned)[inside].mean()
    assert after < 0.5 * before, (before, after)


@pytest.mark.slow
def test_recovers_phantom_misregistration():
    """A generated stroke phantom (T2-like MRI, CT in HU) whose CT is moved 3 mm / 3 deg:
    the phantom records the true MRI->CT world map, the same map `matrix_ras` estimates."""
    phantom = pytest.importorskip("clinfuse.phantom")
    cfg = phantom.PhantomConfig(shape=(40, 48, 40), mri_contrast="T2", misregistration=(3.0, 3.0))
    ph = phantom.generate_phantom(cfg, seed=7)
    c = ph.case
    truth = np.asarray(ph.truth["misregistration"]["mri_to_ct_world"])
    est = np.asarray(register_rigid(c.mri, c.affine, c.ct, c.affine).matrix_ras)
    idx = np.argwhere(c.brain | c.bone).T.astype(float)
    w = c.affine[:3, :3] @ idx + c.affine[:3, 3:4]
    before = np.linalg.norm((truth[:3, :3] - np.eye(3)) @ w + truth[:3, 3:4], axis=0)
    err = np.linalg.norm(
        (est[:3, :3] - truth[:3, :3]) @ w + (est[:3, 3:4] - truth[:3, 3:4]), axis=0
    )
    assert before.mean() > 2.5  # the motion is really there
    assert err.mean() < 1.0 and err.max() < 1.5, (err.mean(), err.max())
