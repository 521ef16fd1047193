import numpy as np
import pytest

from clinfuse.preprocess.prepared import PreparedCase


def ball(shape, centre, radius):
    grid = np.indices(shape).astype(float)
    d2 = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True))
    return d2 <= radius**2


def make_case(case_id="c0", shape=(16, 16, 16), seed=0, lesion=True, spacing=1.0):
    """A tiny 'head': brain ball inside a bone shell, smooth random textures, model range."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    c = [s / 2 - 0.5 for s in shape]
    r = min(shape) / 2 - 1
    head = ball(shape, c, r)
    brain = ball(shape, c, r - 3)
    bone = head & ~ball(shape, c, r - 2)
    tex = gaussian_filter(rng.normal(size=shape), 1.0)
    mri = np.where(head, np.clip(tex, -1.5, 1.5), -2.0).astype(np.float32)
    ct = np.where(bone, 1.5, np.where(head, -0.5, -2.0)).astype(np.float32)
    ct_bone = np.where(bone, 0.5 + 0.3 * tex, np.where(head, -1.0, -2.0)).astype(np.float32)
    les = ball(shape, [x + 1 for x in c], 2) if lesion else None
    affine = np.diag([spacing] * 3 + [1.0])
    return PreparedCase(case_id, mri, ct, ct_bone, affine, brain, bone, lesion=les)


@pytest.fixture
def case_factory():
    return make_case
