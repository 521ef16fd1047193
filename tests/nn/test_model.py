"""FusionModel / ModelConfig: shapes in 2D and 3D, config round-trip, checkpoints, bad input."""

from __future__ import annotations

import io
import json

import pytest
import torch

from clinfuse.errors import ClinfuseInputError
from clinfuse.nn.model import MODEL_PRESETS, FusionModel, ModelConfig, pad_to_multiple

# Tiny networks: the tests check wiring and contracts, not capacity.
TINY = {
    "channels": (8, 16, 16),
    "attention_levels": (False, False, True),
    "num_head_channels": 8,
    "encoder_widths": (8, 8, 16, 16),
    "lesion_channels": (8, 8, 8),
}


def _model(dims: int, **kw: object) -> FusionModel:
    """A tiny model whose zero-initialised layers are randomised.

    MONAI zero-initialises the UNet's output convolution (and each residual branch's last
    layer), so a fresh model outputs exactly 0 — fine for training, useless for wiring tests.
    """
    torch.manual_seed(0)  # fixed init for tests only; library code never seeds
    model = FusionModel(ModelConfig(spatial_dims=dims, **{**TINY, **kw}))  # type: ignore[arg-type]
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1 and not p.any():
                p.normal_(0.0, 0.1)
    return model.eval()


def test_fresh_denoiser_outputs_zero() -> None:
    """Documented MONAI behaviour we rely on: training starts from x̂0 = 0 (mid-grey)."""
    model = FusionModel(ModelConfig(spatial_dims=2, **TINY)).eval()  # type: ignore[arg-type]
    cond = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        assert not model(torch.randn(1, 1, 8, 8), torch.tensor([3]), cond).any()


@pytest.mark.parametrize(("dims", "size"), [(2, (16, 24)), (3, (8, 12, 16))])
def test_shapes(dims: int, size: tuple[int, ...]) -> None:
    model = _model(dims)
    g = torch.Generator().manual_seed(0)
    cond = torch.randn((2, 3, *size), generator=g)
    x_t = torch.randn((2, 1, *size), generator=g)
    with torch.no_grad():
        tokens = model.encode(cond)
        # grid 2 per axis and two modalities: 2·2^dims tokens of 256
        assert tokens.shape == (2, 2 * 2**dims, 256)
        out = model(x_t, torch.tensor([0, 999]), cond, tokens)
        assert out.shape == (2, 1, *size)
        logits = model.lesion_head(out, cond)
        assert logits.shape == (2, 1, *size)
        # tokens given or recomputed: the same output
        torch.testing.assert_close(model(x_t, torch.tensor([0, 999]), cond), out)
        # a scalar timestep is broadcast over the batch
        torch.testing.assert_close(
            model(x_t, torch.tensor(5), cond, tokens),
            model(x_t, torch.tensor([5, 5]), cond, tokens),
        )


def test_output_depends_on_timestep_tokens_and_pixel_conditioning() -> None:
    model = _model(3)
    g = torch.Generator().manual_seed(1)
    cond = torch.randn((1, 3, 8, 8, 8), generator=g)
    x_t = torch.randn((1, 1, 8, 8, 8), generator=g)
    with torch.no_grad():
        tokens = model.encode(cond)
        base = model(x_t, torch.tensor([10]), cond, tokens)
        assert not torch.allclose(base, model(x_t, torch.tensor([900]), cond, tokens))
        assert not torch.allclose(base, model(x_t, torch.tensor([10]), cond, tokens + 1.0))
        assert not torch.allclose(base, model(x_t, torch.tensor([10]), cond + 1.0, tokens))
    no_concat = _model(3, concat_conditioning=False)
    assert no_concat.denoiser.unet.conv_in.conv.in_channels == 1
    assert model.denoiser.unet.conv_in.conv.in_channels == 4
    with torch.no_grad():
        tok = no_concat.encode(cond)
        # without concatenation the images reach the denoiser only through the tokens
        torch.testing.assert_close(
            no_concat(x_t, torch.tensor([10]), cond, tok),
            no_concat(x_t, torch.tensor([10]), cond + 1.0, tok),
        )


def test_gradients_reach_every_part() -> None:
    model = _model(2).train()
    g = torch.Generator().manual_seed(2)
    cond = torch.randn((2, 3, 16, 16), generator=g)
    x_t = torch.randn((2, 1, 16, 16), generator=g)
    out = model(x_t, torch.tensor([1, 2]), cond, model.encode(cond))
    loss = out.square().mean() + model.lesion_head(out, cond).sigmoid().mean()
    loss.backward()
    for part in (model.encoder.mri, model.encoder.ct, model.denoiser, model.lesion_head):
        grads = [p.grad for p in part.parameters() if p.requires_grad]
        assert all(gr is not None for gr in grads)
        assert any(gr.abs().sum() > 0 for gr in grads)


def test_config_round_trip_json_and_weights_only_checkpoint() -> None:
    cfg = ModelConfig(spatial_dims=3, prediction="v", schedule="cosine", **TINY)  # type: ignore[arg-type]
    d = json.loads(json.dumps(cfg.to_dict()))
    assert ModelConfig.from_dict(d) == cfg
    model = FusionModel(cfg).eval()
    buf = io.BytesIO()
    torch.save({"model_config": model.config_dict(), "state_dict": model.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    clone = FusionModel.from_config(ckpt["model_config"]).eval()
    clone.load_state_dict(ckpt["state_dict"])
    cond = torch.randn((1, 3, 8, 8, 8), generator=torch.Generator().manual_seed(3))
    x = torch.randn((1, 1, 8, 8, 8), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(
            clone(x, torch.tensor([7]), cond), model(x, torch.tensor([7]), cond)
        )


def test_presets_build_and_are_valid() -> None:
    for name in MODEL_PRESETS:
        cfg = ModelConfig.preset(name)
        assert cfg.extra == {"preset": name}
        assert cfg.prediction == "x0"
    default = FusionModel(ModelConfig.preset("phantom3d-small"))
    assert default.size_multiple == 8
    with pytest.raises(ClinfuseInputError, match="unknown model preset"):
        ModelConfig.preset("huge")


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"spatial_dims": 4}, "spatial_dims"),
        ({"prediction": "score"}, "prediction"),
        ({"schedule": "quadratic"}, "schedule"),
        ({"attention_levels": (False, False)}, "attention_levels"),
        ({"attention_levels": (False, False, False)}, "at least one attention"),
        ({"channels": (8, 12, 16)}, "divisible by 8"),
        ({"colour": "red"}, "unknown model config key"),
        ({"token_dim": "big"}, "invalid model config"),
    ],
)
def test_bad_config_is_a_user_error(bad: dict[str, object], match: str) -> None:
    with pytest.raises(ClinfuseInputError, match=match):
        ModelConfig.from_dict({**TINY, **bad})


def test_bad_shapes_are_explained() -> None:
    model = _model(3)
    cond = torch.zeros(1, 3, 8, 8, 8)
    with pytest.raises(ValueError, match="multiple of 4"):
        model(torch.zeros(1, 1, 8, 8, 6), torch.tensor([1]), torch.zeros(1, 3, 8, 8, 6))
    with pytest.raises(ValueError, match="3 channels|spatial dims"):
        model.encode(torch.zeros(1, 2, 8, 8, 8))
    with pytest.raises(ValueError, match="spatial dims"):
        model.encode(torch.zeros(1, 3, 8, 8))  # 2D input to a 3D model
    with pytest.raises(ValueError, match="matching cond"):
        model(torch.zeros(1, 1, 8, 8, 4), torch.tensor([1]), cond)


def test_pad_to_multiple_and_crop() -> None:
    x = torch.arange(2 * 5 * 6 * 7, dtype=torch.float32).reshape(1, 2, 5, 6, 7)
    y, crop = pad_to_multiple(x, 4)
    assert y.shape == (1, 2, 8, 8, 8)
    torch.testing.assert_close(y[crop], x)
    # replicate padding: the padded border repeats the last slice
    torch.testing.assert_close(y[:, :, 7, :6, :7], x[:, :, 4])
    z, crop2 = pad_to_multiple(torch.zeros(1, 1, 8, 16), 8)
    assert z.shape == (1, 1, 8, 16) and z[crop2].shape == (1, 1, 8, 16)
    # odd, non-power-of-two sizes run once padded
    model = _model(3)
    cond, crop3 = pad_to_multiple(torch.randn(1, 3, 7, 9, 13), model.size_multiple)
    with torch.no_grad():
        out = model(torch.zeros(1, 1, *cond.shape[2:]), torch.tensor([3]), cond)
    assert out[crop3].shape == (1, 1, 7, 9, 13)


def test_prediction_is_an_enum_parsed_where_the_config_is_built() -> None:
    from clinfuse.nn.model import Prediction

    cfg = ModelConfig(prediction="eps", **TINY)  # type: ignore[arg-type]
    assert cfg.prediction is Prediction.eps and cfg.prediction == "eps"
    d = cfg.to_dict()
    assert type(d["prediction"]) is str and d["prediction"] == "eps"
    with pytest.raises(ClinfuseInputError, match="prediction must be one of 'x0', 'eps', 'v'"):
        ModelConfig(prediction="score", **TINY)  # type: ignore[arg-type]
