"""Bad-row checks: every training row is checked before it can train (`check_row`), up front or as it streams, so a
bad row never stops a run mid-way; `BadRow` records one, `report_bad_rows` / `report_missing_media` say what was
found before training."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any, Sequence

from processing_tarsier import IMAGE_TOKEN, VIDEO_TOKEN, _split_per_sample
from tarsier_hf.training.dataset_spec import DatasetSpec
from tarsier_hf.training.layouts import normalize_row, row_name
from tarsier_hf.training.mixing import row_source
from tarsier_hf.training.prompt_pools import apply_prompt_pool

logger = logging.getLogger(__name__)

# The placeholder of each visual item type in the text the processor reads (what its chat template renders the item
# as): TarsierProcessor's; a mixture for another processor is given that processor's (`placeholders`)
PLACEHOLDERS = {"video": VIDEO_TOKEN, "image": IMAGE_TOKEN}


@dataclass
class BadRow:
    """A row that cannot train: `where` is `file:line` for JSON Lines files, else `dataset row N` (a file, Hub id
    or in-memory dataset and the row's position in it); `reason` says why."""

    where: str
    reason: str

    @property
    def order(self) -> tuple[str, int]:
        """(file, line) for sorting in file order."""
        head, _, number = self.where.replace(" row ", ":").rpartition(":")
        return head, int(number)


class BadRowsError(ValueError):
    """Raised under `fail_fast` when rows are bad; the message lists every one with its place and reason."""


def _has_text(content: list[dict]) -> bool:
    return any(item["type"] == "text" and item["text"].strip() for item in content)


def check_placeholders(messages: list[dict], placeholders: dict[str, str] = PLACEHOLDERS) -> None:
    """Raise `ValueError` when the processor would count more visual placeholders (`placeholders`: the token of
    each visual item type, `<video>` / `<image>` for Tarsier) in a normalised conversation than it has videos /
    images.

    The chat template renders each visual item as its placeholder and each text item as written, so a text that
    spells a placeholder (`"What is <video>?"`) adds one without a video. The count is the processor's own
    (`processing_tarsier._split_per_sample`, which fails such a sample when it is encoded), applied here to the
    text as the template lays it out, one message at a time.
    """
    texts = ["".join(item["text"] if item["type"] == "text" else placeholders.get(item["type"], "")
                     for item in message["content"]) for message in messages]
    for kind, token in placeholders.items():
        visuals = [item for message in messages for item in message["content"] if item["type"] == kind]
        try:
            _split_per_sample(visuals, texts, token, f"{kind}s")
        except ValueError as error:
            raise ValueError(f"{error}: a text spells {token}, which the processor reads as a placeholder") from None


def trainable_row(raw: Any, spec: DatasetSpec, pools: dict[str, list[str]],
                  placeholders: dict[str, str] = PLACEHOLDERS) -> dict:
    """`raw` (a row of any layout) normalised as it will train, with its mixing source; raises when it cannot train.

    It must normalise (`normalize_row`: a known layout, well-typed fields, an assistant turn), its first user turn
    must get a prompt (`apply_prompt_pool`), every role must be system / user / assistant, every assistant turn
    must have text, its texts must not spell a visual placeholder (`check_placeholders`) and its source must be a
    string. The row's `source` is its mixing source (`row_source`).
    """
    if not isinstance(raw, dict):
        raise ValueError(f"the row is a {type(raw).__name__}, not an object")
    messages = raw.get("messages")
    if isinstance(messages, list):
        if not messages:
            raise ValueError("'messages' is empty")
        for number, message in enumerate(messages):
            # Rows read through `datasets` carry every key of the file's schema: a missing role reads as None.
            if not isinstance(message, dict) or message.get("role") is None:
                raise ValueError(f"message {number} has no 'role'")
    row = normalize_row(raw, spec.video_root, origin=spec.label)
    # on a copy of the turns (the prompt is drawn per use): the first user turn must get one
    turns = [{**message, "content": list(message["content"])} for message in row["messages"]]
    apply_prompt_pool({**row, "messages": turns}, pools, random.Random(0), resample=False)
    roles = [m["role"] for m in row["messages"] if m["role"] not in ("system", "user", "assistant")]
    if roles:
        raise ValueError(f"unknown role(s) {roles} (expected system, user, assistant)")
    empty = [i for i, m in enumerate(row["messages"]) if m["role"] == "assistant" and not _has_text(m["content"])]
    if empty:
        raise ValueError(f"empty answer: assistant message {empty[0]} has no text")
    check_placeholders(row["messages"], placeholders)
    row["source"] = row_source(raw, spec)
    if not isinstance(row["source"], str):
        raise ValueError(f"the source is a {type(row['source']).__name__}, not a string: {row['source']!r}")
    return row


def check_row(raw: Any, spec: DatasetSpec, pools: dict[str, list[str]],
              placeholders: dict[str, str] = PLACEHOLDERS) -> tuple[dict | None, str | None]:
    """The one guarded check every training row passes, up front or as it streams: `(row, None)` with the row as
    `trainable_row` gives it, or `(None, reason)` when it cannot train.

    Any exception of the check makes the row bad (a field of an unexpected type fails somewhere inside it, with
    a `TypeError` as often as a `ValueError`), so no row can stop a run: the reason is the message (without the
    row's name, which its place replaces), prefixed with the exception's type unless it is a `ValueError`.
    """
    try:
        return trainable_row(raw, spec, pools, placeholders), None
    except Exception as error:  # noqa: BLE001 - whatever fails, the row is reported and skipped
        reason = str(error)
        if isinstance(raw, dict):
            reason = reason.removeprefix(f"{row_name(raw, spec.label)}: ")
        if not isinstance(error, ValueError):
            reason = f"{type(error).__name__}: {reason}"
        return None, reason


def report_bad_rows(bad: Sequence[BadRow], fail_fast: bool) -> None:
    """Log every bad row (place and reason); raise `BadRowsError` listing them all under `fail_fast`."""
    if not bad:
        return
    lines = "\n".join(f"  {row.where}: {row.reason}" for row in bad)
    if fail_fast:
        raise BadRowsError(f"{len(bad)} bad training row(s) (--fail_fast):\n{lines}")
    logger.warning("skipping %d bad training row(s):\n%s", len(bad), lines)


class MissingMediaError(ValueError):
    """No trainable row of a mixture has its media on disk (wrong `--video_roots`?), found before the model loads."""


def media_paths(row: dict) -> list[str]:
    """The files a normalised row reads: every item's `path` and every frame of its `paths`."""
    paths = []
    for message in row["messages"]:
        for item in message["content"]:
            paths += [item["path"]] if "path" in item else list(item.get("paths", ()))
    return paths


def report_missing_media(missing: Sequence[tuple[str, str]], rows_with_media: int, roots: Sequence[str | None]) -> None:
    """Before training: raise `MissingMediaError` when no row with media has them all on disk, else warn once with
    the count and the first places (those samples are skipped by the collator as they come)."""
    if not missing:
        return
    examples = "\n".join(f"  {place}: {path}" for place, path in missing[:5])
    hint = ("relative paths are resolved against the dataset's video root (--video_roots), "
            + (f"here {sorted({str(r) for r in roots})}" if any(roots) else "and none was given"))
    if len(missing) == rows_with_media:
        raise MissingMediaError(f"none of the {rows_with_media} rows with media has its files on disk ({hint}); "
                                f"the first missing:\n{examples}")
    logger.warning("%d of %d rows name a media file that does not exist (%s); they will be skipped:\n%s",
                   len(missing), rows_with_media, hint, examples)
