"""What a report quotes from a checkpoint's model card (`<checkpoint>.md` beside the weights).

The card is the one place that says how good a shipped model is; reports read its
"**Lesion head status**:" bullet instead of repeating (and then contradicting) it.
"""

from __future__ import annotations

import re
from pathlib import Path

STATUS_FIELD = "Lesion head status"
_FIELD = re.compile(r"^\s*[-*]\s*\*\*(?P<name>[^*]+)\*\*\s*:?\s*(?P<text>.*)$")


def model_card_path(checkpoint: str | Path) -> Path:
    """The model card of a checkpoint: the same name with `.md` (phantom3d.pt -> phantom3d.md)."""
    return Path(checkpoint).with_suffix(".md")


def card_field(card_text: str, name: str) -> str | None:
    """Text of the markdown bullet `- **name**: text` (continuation lines joined), or None."""
    lines = card_text.splitlines()
    for i, line in enumerate(lines):
        m = _FIELD.match(line)
        if not m or m["name"].strip().rstrip(":").lower() != name.lower():
            continue
        parts = [m["text"].strip()]
        for more in lines[i + 1 :]:
            if not more.strip() or _FIELD.match(more) or not more.startswith((" ", "\t")):
                break
            parts.append(more.strip())
        text = " ".join(p for p in parts if p)
        return text or None
    return None


def lesion_head_status(checkpoint: str | Path | None) -> str:
    """One line for a report: the lesion head's status as its model card states it, or why it
    cannot be given (no checkpoint, no card, no status line). Never invented."""
    if checkpoint is None:
        return "Lesion head status: no checkpoint, so no lesion head."
    card = model_card_path(checkpoint)
    try:
        text = card.read_text(encoding="utf-8")
    except OSError:
        return f"Lesion head status unknown: no model card next to the checkpoint ({card.name})."
    status = card_field(text, STATUS_FIELD)
    if status is None:
        return f"Lesion head status unknown: the model card {card.name} has no '{STATUS_FIELD}'."
    return f"Lesion head status (model card {card.name}): {status}"
