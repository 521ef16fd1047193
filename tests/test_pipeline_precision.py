"""`fuse_prepared(precision=...)`: bf16 autocast for the networks only, recorded in run.json,
close to float32, and a bad value is a user error before any work (issue 11)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _helpers import make_training_case
from clinfuse.errors import ClinfuseInputError
from clinfuse.nn.model import FusionModel, ModelConfig
from clinfuse.nn.precision import resolve_precision
from clinfuse.pipeline import fuse_prepared
from clinfuse.pipeline.fuse import clinfuse_method_factory


@pytest.fixture(scope="module")
def model() -> FusionModel:
    torch.manual_seed(0)  # test-only: random weights of the tiny model
    m = FusionModel(ModelConfig.preset("phantom3d-tiny")).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # MONAI zero-initialises the output conv; make the output depend on x_t
        for p in m.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return m


def test_bf16_and_fp32_fusions_are_close_and_recorded(model: FusionModel) -> None:
    prep = make_training_case("p", shape=(16, 16, 16))
    kw = dict(steps=2, seed=3, window="whole", overrides={"n_inner": 1, "eta": 0.01})
    a = fuse_prepared(prep, model, precision="fp32", **kw)
    b = fuse_prepared(prep, model, precision="bf16", **kw)
    assert a.record["precision"] == "fp32" and b.record["precision"] == "bf16"
    assert a.fused.dtype == np.float32 and b.fused.dtype == np.float32
    diff = np.abs(a.fused - b.fused)
    assert 0 < diff.max() < 0.1, diff.max()  # bf16 really ran, and stays close
    auto = fuse_prepared(prep, model, precision="auto", **kw)
    assert auto.record["precision"] == resolve_precision("auto", "cpu")
    # channels_last_3d: on by default exactly with bf16; same result to bf16 rounding
    assert b.record["channels_last"] is True and a.record["channels_last"] is False
    c = fuse_prepared(prep, model, precision="bf16", channels_last=False, **kw)
    assert c.record["channels_last"] is False
    assert np.abs(c.fused - b.fused).max() < 0.1
    w = next(model.parameters())
    assert w.is_contiguous()  # the caller's model is never converted in place


def test_bad_precision_is_a_user_error(model: FusionModel) -> None:
    prep = make_training_case("p", shape=(16, 16, 16))
    with pytest.raises(ClinfuseInputError, match="precision"):
        fuse_prepared(prep, model, steps=1, window="whole", precision="fp8")
    with pytest.raises(ClinfuseInputError, match="precision"):
        clinfuse_method_factory(precision="half")
