"""The report's lesion-head line is read from the model card, never written into the code."""

from pathlib import Path

from clinfuse.report.model_card import STATUS_FIELD, card_field, lesion_head_status

CARD = """# Model card: `x.pt`

- **What**: a model.
- **Lesion head status**: good on phantoms (Dice 0.85 held out),
  untested on patients.
- **Limits**: phantoms only.
"""


def test_status_is_read_from_the_card_next_to_the_checkpoint(tmp_path):
    (tmp_path / "x.md").write_text(CARD, encoding="utf-8")
    line = lesion_head_status(tmp_path / "x.pt")
    assert line == (
        "Lesion head status (model card x.md): good on phantoms (Dice 0.85 held out), "
        "untested on patients."
    )
    assert card_field(CARD, "limits") == "phantoms only."
    assert card_field(CARD, "nothing") is None


def test_missing_card_or_line_is_said_not_invented(tmp_path):
    assert "no model card" in lesion_head_status(tmp_path / "y.pt")
    (tmp_path / "z.md").write_text("# card\n\n- **What**: a model.\n", encoding="utf-8")
    assert f"has no '{STATUS_FIELD}'" in lesion_head_status(tmp_path / "z.pt")
    assert "no checkpoint" in lesion_head_status(None)


def test_the_shipped_card_has_a_status_line():
    import clinfuse
    from clinfuse.report.model_card import model_card_path

    card = model_card_path(Path(clinfuse.__file__).parent / "checkpoints" / "phantom3d.pt")
    assert card_field(card.read_text(encoding="utf-8"), STATUS_FIELD)
