"""Model cards (Hub metadata + usage) for Tarsier checkpoints: trained, converted, or of unknown origin.

The renderer lives in the remote code (`model_card_tarsier.render_model_card`), because a checkpoint carries its
card from `TarsierForConditionalGeneration.save_pretrained` on and remote code cannot import this package; this
module is its home for the library: the same functions, plus what publishing needs to read a folder's card.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from model_card_tarsier import (CARD_FILE, PIPELINE_TAG, PLACEHOLDER_CARD_HEADING, TAGS, card_details,
                                is_placeholder_card, render_model_card)
from tarsier_hf.hub.checkpoint import read_json

__all__ = ["CARD_FILE", "PIPELINE_TAG", "PLACEHOLDER_CARD_HEADING", "TAGS", "card_details", "card_details_from_folder",
           "generated_card_title", "is_placeholder_card", "render_model_card"]


def card_details_from_folder(folder: str | os.PathLike) -> dict:
    """Architecture facts for a card, read from a checkpoint's `config.json` (`card_details`)."""
    return card_details(read_json(Path(folder) / "config.json"))


def generated_card_title(text: str, details: dict) -> str | None:
    """The title of `text` when it is exactly the card `save_pretrained` generates (`render_model_card(title,
    details=details)`, unedited), else None: such a card may be re-titled for the repository it goes to."""
    match = re.search(r"^# (.+)$", text, re.M)
    if match and text == render_model_card(match.group(1), details=details):
        return match.group(1)
    return None
