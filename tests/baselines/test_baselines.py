import numpy as np
import pytest

from clinfuse.baselines import BASELINES
from clinfuse.baselines.average import average_fusion
from clinfuse.baselines.composite import composite_fusion
from clinfuse.baselines.laplacian import (
    laplacian_fusion,
    laplacian_pyramid,
    reconstruct_laplacian,
)
from clinfuse.baselines.maximum import max_fusion
from clinfuse.baselines.wavelet import wavelet_fuse_arrays, wavelet_fusion
from clinfuse.baselines.weighted import weighted_fusion


def _smooth_random(shape, seed):
    # Band-limited values well inside [-2, 2] so no clipping hides errors.
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    return np.clip(gaussian_filter(rng.normal(size=shape), 1.0) * 2.0, -1.5, 1.5)


def test_registry_names():
    assert list(BASELINES) == ["average", "weighted", "max", "laplacian", "wavelet", "composite"]


def test_pointwise_baselines_hand_values(prepared_factory):
    p = prepared_factory([[1.0, -2.0], [0.5, 2.0]], [[0.0, 1.0], [-1.0, 2.0]])
    np.testing.assert_allclose(average_fusion(p), [[0.5, -0.5], [-0.25, 2.0]])
    np.testing.assert_allclose(weighted_fusion(p), [[0.7, -1.1], [0.05, 2.0]], atol=1e-6)
    np.testing.assert_allclose(max_fusion(p), [[1.0, 1.0], [0.5, 2.0]])


def test_ct_channel_choice(prepared_factory):
    mri = np.zeros((4, 4))
    p = prepared_factory(mri, np.full((4, 4), 1.0), ct=np.full((4, 4), -1.0))
    assert np.all(average_fusion(p) == 0.5)  # default: bone window
    assert np.all(average_fusion(p, ct_channel="clinical") == -0.5)
    with pytest.raises(ValueError):
        average_fusion(p, ct_channel="soft")


@pytest.mark.parametrize("shape", [(33, 30), (17, 20, 18)])
def test_laplacian_pyramid_reconstructs_exactly(shape):
    x = _smooth_random(shape, 0)
    pyr = laplacian_pyramid(x, 4)
    assert pyr[-1].shape[0] < shape[0]
    np.testing.assert_allclose(reconstruct_laplacian(pyr), x, atol=1e-12)


@pytest.mark.parametrize("shape", [(32, 30), (16, 17, 18)])
@pytest.mark.parametrize("fn", [laplacian_fusion, wavelet_fusion])
def test_multiscale_fusion_of_identical_inputs_is_identity(prepared_factory, fn, shape):
    x = _smooth_random(shape, 1)
    out = fn(prepared_factory(x, x))
    assert out.shape == shape and out.dtype == np.float32
    np.testing.assert_allclose(out, x, atol=1e-5)


def test_laplacian_keeps_the_stronger_detail(prepared_factory):
    # MRI: a flat image; CT: a sharp bright square. Max-abs selection takes the square's edges
    # from CT; the averaged base halves its low-frequency part.
    mri = np.zeros((32, 32))
    ct = np.zeros((32, 32))
    ct[12:20, 12:20] = 1.0
    fused = laplacian_fusion(prepared_factory(mri, ct))
    pa = laplacian_pyramid(ct, 4)
    manual = reconstruct_laplacian(pa[:-1] + [0.5 * pa[-1]])
    np.testing.assert_allclose(fused, np.clip(manual, -2, 2), atol=1e-6)
    assert fused[16, 16] > 0.5 > fused[0, 0] + 0.4


def test_wavelet_matches_a_2d_pywt_oracle():
    # Oracle written with the 2D API (wavedec2/waverec2), independent of our wavedecn code.
    import pywt

    a = _smooth_random((20, 24), 2)
    b = _smooth_random((20, 24), 3)
    ca = pywt.wavedec2(a, "db2", level=2)
    cb = pywt.wavedec2(b, "db2", level=2)
    coeffs = [0.5 * (ca[0] + cb[0])]
    for da, db in zip(ca[1:], cb[1:], strict=True):
        coeffs.append(
            tuple(np.where(np.abs(x) >= np.abs(y), x, y) for x, y in zip(da, db, strict=True))
        )
    want = pywt.waverec2(coeffs, "db2")[:20, :24]
    np.testing.assert_allclose(wavelet_fuse_arrays(a, b, levels=2), want, atol=1e-10)


def test_wavelet_odd_shapes_kept():
    a = _smooth_random((9, 10, 11), 4)
    assert wavelet_fuse_arrays(a, a).shape == (9, 10, 11)


def test_composite_copies_sources_inside_rois(prepared_factory):
    mri = np.full((6, 6), 1.0)
    ct = np.full((6, 6), -1.0)
    brain = np.zeros((6, 6), bool)
    bone = np.zeros((6, 6), bool)
    brain[2:4, 2:4] = True
    bone[0, :] = True
    out = composite_fusion(prepared_factory(mri, ct, ct=np.zeros((6, 6)), brain=brain, bone=bone))
    assert np.all(out[brain] == 1.0)
    assert np.all(out[bone] == -1.0)  # bone-window CT, not the clinical channel
    assert np.all(out[~brain & ~bone] == 0.0)


@pytest.mark.parametrize("shape", [(24, 20), (12, 14, 10)])
def test_every_baseline_model_range_same_shape(prepared_factory, shape):
    rng = np.random.default_rng(5)
    mri = rng.uniform(-2, 2, shape)
    ct = rng.uniform(-2, 2, shape)
    brain = np.zeros(shape, bool)
    brain[tuple(slice(3, 6) for _ in shape)] = True
    p = prepared_factory(mri, ct, brain=brain, bone=~brain)
    for name, fn in BASELINES.items():
        out = fn(p)
        assert out.shape == shape and out.dtype == np.float32, name
        assert out.min() >= -2.0 and out.max() <= 2.0, name
