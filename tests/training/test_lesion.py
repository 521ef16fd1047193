"""`clinfuse train-lesion` / `train_lesion_head`, the fused-only lesion head, and the
`--lesion-head` scorer that applies one head to every method's fused image."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from clinfuse.cli import app
from clinfuse.errors import ClinfuseInputError


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    from clinfuse.phantom import PhantomConfig, write_phantom_dataset

    out = tmp_path_factory.mktemp("data") / "phantoms"
    cfg = PhantomConfig(shape=(24, 24, 16), spacing=(3.0, 3.0, 3.0), supersample=1)
    return write_phantom_dataset(out, 3, cfg, seed=0)


@pytest.fixture(scope="module")
def base_ckpt(phantoms, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    args = ["train", "--config", "ci-tiny", "--data", str(phantoms), "--out", str(run)]
    args += ["--device", "cpu", "--max-steps", "1", "--no-progress", "--threads", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return run / "last.ckpt"


@pytest.fixture(scope="module")
def trained(base_ckpt, phantoms, tmp_path_factory):
    out = tmp_path_factory.mktemp("lesion")
    args = ["train-lesion", "--checkpoint", str(base_ckpt), "--data", str(phantoms)]
    args += ["--out", str(out), "--steps", "40", "--val-every", "10", "--batch-size", "2"]
    args += ["--device", "cpu", "--threads", "1", "--export", str(out / "slim.pt")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return out


def test_head_reads_only_the_fused_image():
    from clinfuse.nn.lesion_head import LesionHead

    torch.manual_seed(0)  # test-only: random weights
    head = LesionHead(3, (4, 8), 1, inputs="fused").eval()
    x = torch.randn(1, 1, 8, 8, 8)
    a = head(x, torch.zeros(1, 3, 8, 8, 8))
    b = head(x, torch.randn(1, 3, 8, 8, 8))
    assert torch.equal(a, b) and torch.equal(a, head(x))
    assert head.unet.model[0].conv.unit0.conv.in_channels == 1
    old = LesionHead(3, (4, 8), 1, inputs="fused+sources")
    with pytest.raises(ValueError, match="cond"):
        old(x)
    with pytest.raises(ValueError, match="inputs"):
        LesionHead(3, (4, 8), 1, inputs="sources")


def test_model_config_rejects_unknown_lesion_inputs():
    from clinfuse.nn.model import ModelConfig

    with pytest.raises(ClinfuseInputError, match="lesion_inputs"):
        ModelConfig(lesion_inputs="mri")


def test_train_lesion_replaces_only_the_head(trained, base_ckpt):
    from clinfuse.training.checkpoint import ema_weights, load_checkpoint, read_checkpoint

    new = load_checkpoint(trained / "lesion_head.ckpt")
    assert new.model.config.lesion_inputs == "fused"
    assert new.model.lesion_head.inputs == "fused"
    assert new.model.config.lesion_norm == "batch"
    assert not new.model.lesion_head.training  # batch norm uses its running statistics
    old_w = ema_weights(read_checkpoint(base_ckpt))
    new_w = ema_weights(new.state)
    # the frozen denoiser and encoders are bit-identical; the head is new
    for k, v in old_w.items():
        if not k.startswith("lesion_head."):
            assert torch.equal(v, new_w[k]), k
    assert any(k.startswith("lesion_head.") for k in new_w)
    record = new.state["extra"]["lesion_head"]
    assert record["source_step"] == 1 and record["best_step"] in (10, 20, 30, 40)
    assert new.state["optimizer"] is None
    slim = load_checkpoint(trained / "slim.pt")
    assert slim.model.config.lesion_inputs == "fused"


def test_train_lesion_learns(trained):
    with open(trained / "lesion_metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [10, 20, 30, 40]
    losses = [float(r["loss"]) for r in rows]
    assert losses[-1] < losses[0]  # Dice + BCE goes down from the random head
    assert all(0.0 <= float(r["val_dice_composite"]) <= 1.0 for r in rows)


def test_train_lesion_user_errors(base_ckpt, phantoms, trained):
    from clinfuse.training.lesion import LesionTrainConfig, train_lesion_head

    with pytest.raises(ClinfuseInputError, match="overwrite"):
        train_lesion_head(base_ckpt, phantoms, trained, LesionTrainConfig(steps=1), log=None)
    with pytest.raises(ClinfuseInputError, match="unknown fused input"):
        LesionTrainConfig(fused_inputs=("median",)).validate()
    with pytest.raises(ClinfuseInputError, match="p_x0"):
        LesionTrainConfig(p_x0=1.5).validate()


def test_lesion_head_scores_any_fused_image(trained, phantoms, tmp_path):
    from clinfuse.evaluation import evaluate_dataset
    from clinfuse.evaluation.dataset import prepare_cases
    from clinfuse.pipeline import lesion_head_predictor

    predict = lesion_head_predictor(trained / "lesion_head.ckpt")
    item = next(iter(prepare_cases(phantoms, limit=1)))
    prep = item.prepared
    prob = predict(prep.mri, prep)
    assert prob.shape == prep.shape
    assert np.all(prob[~prep.brain] == 0.0) and prob.max() <= 1.0
    res = evaluate_dataset(
        "max",
        phantoms,
        tmp_path / "ev",
        limit=2,
        lesion_head=predict,
        lesion_head_name="test-head",
    )
    with_lesion = [r for r in res.rows if not np.isnan(r["dice"])]
    assert with_lesion, "a baseline scored with the head gets lesion metrics"
    assert all(0.0 <= r["dice"] <= 1.0 for r in with_lesion)


def test_train_lesion_on_whole_volumes(base_ckpt, phantoms, tmp_path):
    from clinfuse.training.checkpoint import load_checkpoint
    from clinfuse.training.lesion import LesionTrainConfig, train_lesion_head

    cfg = LesionTrainConfig(
        steps=2, val_every=1, batch_size=2, patch_size=None, x0_per_case=1, norm="instance"
    )
    res = train_lesion_head(base_ckpt, phantoms, tmp_path, cfg, log=None)
    assert res.best_step in (1, 2)
    record = load_checkpoint(res.checkpoint).state["extra"]["lesion_head"]
    assert record["config"]["patch_size"] is None
    assert load_checkpoint(res.checkpoint).model.config.lesion_norm == "instance"
