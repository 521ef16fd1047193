"""The training loop: exact resume, checkpoints (weights_only, EMA, architecture check),
non-finite loss, logs, refusing to clobber a run. Tiny 3D model on 16³ patches, CPU."""

from __future__ import annotations

import csv

import pytest
import torch

from _helpers import make_training_case as make_case
from clinfuse.errors import ClinfuseInputError
from clinfuse.training.checkpoint import export_checkpoint, load_checkpoint, read_checkpoint
from clinfuse.training.config import DataConfig, resolve_config
from clinfuse.training.data import TrainData
from clinfuse.training.loop import (
    JITTER_COLUMNS,
    TRAIN_COLUMNS,
    VAL_COLUMNS,
    NonFiniteLossError,
    train,
)

LOSS_COLUMNS = ["loss", "loss_diffusion", "loss_roi", "loss_brain", "loss_bone", "loss_lesion"]


def _cfg(**over):
    sets = ["max_steps=3", "ckpt_every=1", "val_every=100"]
    sets += [f"{k}={v}" for k, v in over.items()]
    return resolve_config("ci-tiny", sets)


def _data(cfg):
    cases = [make_case(f"c{i}", seed=i, lesion=i != 1) for i in range(3)]
    return TrainData(cases[:2], cases[2:], cfg.data)


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    cfg = _cfg()
    full = train(cfg, _data(cfg), tmp_path / "full", device="cpu", progress=False)
    first = train(_cfg(max_steps=1), _data(cfg), tmp_path / "part", device="cpu", progress=False)
    assert first.step == 1
    resumed = train(
        cfg,
        _data(cfg),
        tmp_path / "part",
        resume=tmp_path / "part" / "last.ckpt",
        device="cpu",
        progress=False,
    )
    a = {r["step"]: r for r in _rows(tmp_path / "full" / "metrics.csv")}
    b = {r["step"]: r for r in _rows(tmp_path / "part" / "metrics.csv")}
    assert sorted(a) == sorted(b) == ["0", "1", "2", "3"]  # step 0 = validation before training
    for step in ("1", "2", "3"):
        for col in LOSS_COLUMNS:
            assert a[step][col] == b[step][col], (step, col)
    for (name, p), q in zip(full.model.named_parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q), name
    for p, q in zip(full.ema.parameters(), resumed.ema.parameters(), strict=True):
        assert torch.equal(p, q)


def test_logs_checkpoints_and_weights_only_load(tmp_path):
    cfg = _cfg()
    out = tmp_path / "run"
    result = train(cfg, _data(cfg), out, device="cpu", progress=False)
    names = ("config.yaml", "split.json", "metrics.csv", "jitter.csv", "last.ckpt", "curves.png")
    for name in names:
        assert (out / name).is_file(), name
    assert any((out / "tb").iterdir())  # TensorBoard events
    assert resolve_config(out / "config.yaml") == cfg
    rows = _rows(out / "metrics.csv")
    assert list(rows[0]) == TRAIN_COLUMNS + VAL_COLUMNS
    assert rows[-1]["val_ssim_brain"] != "" and rows[1]["val_ssim_brain"] == ""
    losses = [float(r["loss"]) for r in rows[1:]]
    parts = [
        float(r["loss_diffusion"]) + cfg.roi.lambda_roi * float(r["loss_roi"]) for r in rows[1:]
    ]
    assert losses == pytest.approx(parts, rel=1e-4)  # L_total = L_diff + lambda_roi * L_ROI
    # Every sample's jitter is logged: 3 steps x 4 samples (effective batch), and counted.
    jit = _rows(out / "jitter.csv")
    assert list(jit[0]) == JITTER_COLUMNS and len(jit) == 3 * cfg.effective_batch
    applied = sum(int(float(r["applied"])) for r in jit)
    assert float(rows[-1]["jitter_fraction"]) == pytest.approx(applied / len(jit))

    state = torch.load(out / "last.ckpt", weights_only=True)
    assert state["step"] == 3 and state["config"]["model"] == cfg.model
    loaded = load_checkpoint(out / "last.ckpt")
    assert loaded.step == 3 and loaded.config == cfg and not loaded.model.training
    for p, q in zip(loaded.model.parameters(), result.ema.module.parameters(), strict=True):
        assert torch.equal(p, q)  # the EMA weights, not the raw ones
    assert any(
        not torch.equal(p, q)
        for p, q in zip(loaded.model.parameters(), result.model.parameters(), strict=True)
    )
    # The slim export for shipping loads the same EMA model but cannot be resumed.
    slim = export_checkpoint(out / "last.ckpt", tmp_path / "slim.pt")
    assert slim.stat().st_size < (out / "last.ckpt").stat().st_size / 2
    for p, q in zip(
        load_checkpoint(slim).model.parameters(), loaded.model.parameters(), strict=True
    ):
        assert torch.equal(p, q)
    with pytest.raises(ClinfuseInputError, match="exported for inference"):
        train(cfg, _data(cfg), out, resume=slim, device="cpu", progress=False)


def test_architecture_mismatch_is_named(tmp_path):
    cfg = _cfg(max_steps=1)
    train(cfg, _data(cfg), tmp_path / "run", device="cpu", progress=False)
    state = read_checkpoint(tmp_path / "run" / "last.ckpt")
    state["config"]["model"]["channels"] = [2 * c for c in cfg.model["channels"]]
    torch.save(state, tmp_path / "other.ckpt")
    with pytest.raises(ClinfuseInputError, match="another model architecture"):
        load_checkpoint(tmp_path / "other.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ClinfuseInputError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "junk.ckpt")


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = _cfg()
    data = _data(cfg)
    calls = {"n": 0}
    original = data.sample_batch

    def poisoned(rng, batch_size, jitter_cfg):
        batch = original(rng, batch_size, jitter_cfg)
        calls["n"] += 1
        if calls["n"] > 2:  # step 1 = calls 1-2 (accumulation 2); step 2 gets a NaN target
            batch.target[:] = float("nan")
        return batch

    monkeypatch.setattr(data, "sample_batch", poisoned)
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step 2") as err:
        train(cfg, data, tmp_path / "run", device="cpu", progress=False)
    assert "last.ckpt" in str(err.value)
    assert read_checkpoint(tmp_path / "run" / "last.ckpt")["step"] == 1
    steps = [r["step"] for r in _rows(tmp_path / "run" / "metrics.csv")]
    assert steps == ["0", "1"]


def test_refuses_to_clobber_or_resume_with_another_config(tmp_path):
    cfg = _cfg(max_steps=1)
    train(cfg, _data(cfg), tmp_path / "run", device="cpu", progress=False)
    with pytest.raises(ClinfuseInputError, match="--resume"):
        train(cfg, _data(cfg), tmp_path / "run", device="cpu", progress=False)
    other = _cfg(max_steps=2, **{"optim.lr": 0.5})
    with pytest.raises(ClinfuseInputError, match="optim.lr"):
        train(
            other,
            _data(cfg),
            tmp_path / "run",
            resume=tmp_path / "run" / "last.ckpt",
            device="cpu",
            progress=False,
        )


def test_data_dimension_must_match_the_model(tmp_path):
    cfg = _cfg()
    flat = [make_case(f"f{i}", shape=(16, 16), spacing=(1.0, 1.0)) for i in range(2)]
    data2d = TrainData(flat, [], DataConfig(patch_size=(16, 16)))
    with pytest.raises(ClinfuseInputError, match="data is 2D but the model is 3D"):
        train(cfg, data2d, tmp_path / "run", device="cpu", progress=False)


def test_non_finite_gradient_with_finite_loss_skips_one_update(tmp_path, monkeypatch):
    import clinfuse.training.loop as loop

    original = loop.build_model
    calls = {"n": 0}

    def with_bad_hook(model_config):
        model = original(model_config)
        param = next(model.lesion_head.parameters())

        def hook(grad):
            calls["n"] += 1
            # Accumulation 2: backward calls 3 and 4 belong to step 2.
            return grad * float("nan") if calls["n"] in (3, 4) else grad

        param.register_hook(hook)
        return model

    monkeypatch.setattr(loop, "build_model", with_bad_hook)
    cfg = _cfg()
    train(cfg, _data(cfg), tmp_path / "run", device="cpu", progress=False)
    state = read_checkpoint(tmp_path / "run" / "last.ckpt")
    assert state["step"] == 3 and state["extra"]["skipped_updates"] == 1
    rows = {r["step"]: r for r in _rows(tmp_path / "run" / "metrics.csv")}
    assert rows["2"]["grad_norm_lesion"] == "" and rows["3"]["grad_norm_lesion"] != ""


def test_init_fine_tunes_from_a_checkpoints_ema_weights(tmp_path):
    """`init`: a fresh run starts from the checkpoint's EMA weights, so its step-0 validation
    is the source run's validation at the step it was saved (same seeded validation)."""
    cfg = _cfg(max_steps=1)
    source = train(cfg, _data(cfg), tmp_path / "src", device="cpu", progress=False)
    assert source.last_checkpoint is not None
    tuned_cfg = _cfg(max_steps=1, init=str(source.last_checkpoint))
    tuned = train(tuned_cfg, _data(cfg), tmp_path / "tuned", device="cpu", progress=False)
    src = {r["step"]: r for r in _rows(tmp_path / "src" / "metrics.csv")}
    new = {r["step"]: r for r in _rows(tmp_path / "tuned" / "metrics.csv")}
    for col in ("val_loss_diffusion", "val_roi_ssim"):
        assert new["0"][col] == src["1"][col]
        assert new["0"][col] != src["0"][col]  # not the seed's random init
    assert tuned.step == 1 and (tmp_path / "tuned" / "last.ckpt").is_file()
