"""Run-time precision and thread selection (nn/precision.py): bf16 only where the CPU has it,
the autocast wrapper keeps float32 interfaces and close results, threads are validated."""

from __future__ import annotations

import pytest
import torch

from clinfuse.errors import ClinfuseInputError
from clinfuse.nn import precision
from clinfuse.nn.model import FusionModel, ModelConfig
from clinfuse.nn.precision import AutocastModel, resolve_precision, set_threads


def test_auto_follows_cpu_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert resolve_precision("auto", "cpu") == "fp32"
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512f", "amx_bf16"}))
    assert resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    assert resolve_precision("auto", "cpu") == "bf16"
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"  # explicit: honoured everywhere
    with pytest.raises(ClinfuseInputError, match="precision"):
        resolve_precision("fp16", "cpu")


def test_cpu_flags_read_from_proc() -> None:
    flags = precision.cpu_flags()
    assert isinstance(flags, frozenset)
    if flags:  # Linux x86: every such CPU has sse2
        assert "sse2" in flags or "fp" in flags or "asimd" in flags


def _tiny_model() -> FusionModel:
    torch.manual_seed(0)
    cfg = ModelConfig.preset("phantom3d-tiny")
    model = FusionModel(cfg).eval()
    with torch.no_grad():  # MONAI zero-initialises the output conv: give it weights
        for p in model.parameters():
            if float(p.abs().sum()) == 0.0 and p.ndim > 1:
                p.normal_(0, 0.05)
    return model


def test_autocast_model_bf16_close_to_fp32_and_float32_out() -> None:
    model = _tiny_model()
    g = torch.Generator().manual_seed(0)
    cond = torch.rand(1, 3, 8, 8, 8, generator=g) * 4 - 2
    x = torch.randn(1, 1, 8, 8, 8, generator=g)
    t = torch.tensor([500])
    fp32, bf16 = AutocastModel(model, "fp32"), AutocastModel(model, "bf16")
    assert bf16.precision == "bf16" and bf16.config is model.config
    with torch.no_grad():
        tok32, tok16 = fp32.encode(cond), bf16.encode(cond)
        out32, out16 = fp32(x, t, cond, tok32), bf16(x, t, cond, tok16)
    assert out16.dtype == torch.float32 and tok16.dtype == torch.float32
    assert float(out32.abs().max()) > 0
    rel = float((out16 - out32).norm() / out32.norm())
    assert 0 < rel < 0.05, rel  # bf16 really ran, and stayed close
    # gradients flow through the lesion head under autocast (guidance needs them)
    z = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(bf16.lesion_head(z, cond).sum(), z)
    assert grad.dtype == torch.float32 and bool(torch.isfinite(grad).all())
    assert float(grad.abs().sum()) > 0


def test_set_threads() -> None:
    before = torch.get_num_threads()
    try:
        assert set_threads(1) == 1 and torch.get_num_threads() == 1
        assert set_threads(None) == precision.default_threads()
        with pytest.raises(ClinfuseInputError, match="threads"):
            set_threads(0)
    finally:
        torch.set_num_threads(before)


def test_channels_last_copy_only_for_bf16() -> None:
    from clinfuse.nn.precision import for_sampling, use_channels_last

    model = _tiny_model()
    assert use_channels_last(model, "bf16") and not use_channels_last(model, "fp32")
    assert for_sampling(model, "fp32") is model
    copy = for_sampling(model, "bf16")
    assert copy is not model
    conv = next(p for p in copy.parameters() if p.ndim == 5)
    assert conv.is_contiguous(memory_format=torch.channels_last_3d)
    assert all(p.is_contiguous() for p in model.parameters())  # original untouched
