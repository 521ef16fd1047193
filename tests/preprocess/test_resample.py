import numpy as np
import SimpleITK as sitk

from clinfuse.preprocess.resample import from_sitk, grid_with_spacing, resample_to_grid, to_sitk

# A flipped, anisotropic, shifted grid: axis 0 runs right-to-left.
AFF = np.array([[-2.0, 0, 0, 20], [0, 1.5, 0, -7], [0, 0, 3.0, 4], [0, 0, 0, 1]])


def world(shape, aff):
    idx = np.indices(shape).reshape(len(shape), -1).astype(float)
    return (aff[:3, : len(shape)] @ idx + aff[:3, 3:4]).T.reshape(*shape, 3)


def ramp(p):
    return 3.0 * p[..., 0] + 2.0 * p[..., 1] - p[..., 2]


def test_sitk_round_trip_and_lps_convention():
    a = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    img = to_sitk(a, AFF)
    # ITK physical point of index (1, 2, 3) is LPS: RAS x and y negated.
    ras = AFF @ np.array([1, 2, 3, 1.0])
    np.testing.assert_allclose(
        img.TransformIndexToPhysicalPoint((1, 2, 3)), [-ras[0], -ras[1], ras[2]]
    )
    assert img.GetPixel(1, 2, 3) == a[1, 2, 3]
    b, aff = from_sitk(img)
    np.testing.assert_array_equal(b, a)
    np.testing.assert_allclose(aff, AFF)


def test_grid_with_spacing_keeps_field_of_view():
    shape, aff = grid_with_spacing((10, 8, 6), AFF, 1.0)
    assert shape == (20, 12, 18)
    # Outer voxel edges unchanged: the first centre moves inward by half
    # the spacing change (axis 0 points to -x, so inward is +x).
    np.testing.assert_allclose(aff[:3, 3], [20 + 0.5, -7 - 0.25, 4 - 1.0])
    np.testing.assert_allclose(np.abs(np.diag(aff)[:3]), [1, 1, 1])


def test_linear_resampling_is_exact_on_a_ramp():
    src_shape = (10, 8, 6)
    vals = ramp(world(src_shape, AFF)).astype(np.float32)
    shape, aff = grid_with_spacing(src_shape, AFF, (1.0, 1.0, 1.5))
    out = resample_to_grid(vals, AFF, shape, aff)
    expect = ramp(world(shape, aff))
    inner = (slice(2, -2),) * 3  # away from the edge, where linear interpolation is exact
    np.testing.assert_allclose(out[inner], expect[inner], atol=1e-3)
    assert resample_to_grid(vals, AFF, src_shape, AFF).tolist() == vals.tolist()


def test_masks_nearest_and_default_value():
    m = np.zeros((10, 8, 6), bool)
    m[3:7, 2:6, 1:5] = True
    shape, aff = grid_with_spacing(m.shape, AFF, 1.0)
    out = resample_to_grid(m, AFF, shape, aff)
    assert out.dtype == bool and out.sum() == m.sum() * 2 * 1.5 * 3  # exact 2x/1.5x/3x upsampling
    shifted = AFF.copy()
    shifted[:3, 3] += [100, 0, 0]
    ct = resample_to_grid(np.zeros(m.shape, np.float32), AFF, m.shape, shifted, default=-1024)
    assert np.all(ct == -1024)
    tx = sitk.TranslationTransform(3, (0.0, 0.0, 3.0))  # fixed -> moving: +1 slice in z
    moved = resample_to_grid(m.astype(np.float32), AFF, m.shape, AFF, transform=tx)
    np.testing.assert_array_equal(moved[:, :, :-1], m[:, :, 1:].astype(np.float32))


def test_2d_resampling():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    aff = np.diag([2.0, 2.0, 1.0, 1.0])
    shape, new = grid_with_spacing(a.shape, aff, 1.0)
    out = resample_to_grid(a, aff, shape, new)
    assert shape == (6, 8)
    # new pixel 1 lies at 0.25 of the way from old pixel 0 to 1 along axis 0 (and axis 1).
    np.testing.assert_allclose(out[1, 1], a[0, 0] + 0.25 * 4 + 0.25 * 1)
