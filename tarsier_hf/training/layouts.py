"""Training rows of every layout in one conversation format: the format, the released layouts read, `normalize_row`.

## The format (JSONL, one object per line, loadable with `datasets`)

```json
{"messages": [
   {"role": "user", "content": [{"type": "video", "path": "videos/x.mp4"},
                                {"type": "text", "text": "Describe the video in detail."}]},
   {"role": "assistant", "content": [{"type": "text", "text": "A man opens a door, then ..."}]}],
 "task": "caption_detailed", "source": "dream_s", "idx": 17}
```

- `content` items: `{"type": "video", "path": ...}` (a video file), `{"type": "image", "path": ...}` (a still image),
  `{"type": "text", "text": ...}`. Several images in one turn make a multi-image sample; a row without visual items
  is text-only. `content` may also be a plain string (text only).
- Paths are relative to the `video_root` given with the dataset (absolute paths are kept).
- `task` names the task (it selects the prompt pool, `tarsier_hf.training.prompt_pools`); `source` names the
  source dataset (it selects the mixing weight, `tarsier_hf.training.mixing`). `idx` is any identifier, used in log
  messages.
- A user turn with no text item gets a prompt drawn from the pool of its `task` (paper section 3.2.1: the prompt
  defines the output format); `resample_prompts=True` also replaces existing user prompts of pooled tasks.

## Layouts read unchanged (recipes/README.md shows one example row of each)

- Released Tarsier / Tarsier2 data on the Hub (Tarsier2-Recap-585K `metadata.json`, Tarsier2's annotation files):
  content items `{"type": "video", "video": {"video_file": "x.mp4"}}` (a list of frame image files also works) or
  `{"type": "image", "image": {"image_file": ...}}`, with `null` for the unused keys of each item; an assistant
  text item may keep its text in `reference`; plus `dataset` (read as `source`), `task` and `idx`. `messages`
  given as a JSON string is parsed.
- DREAM-1K (`DREAM-1K.jsonl`): `{"text": {"prompt": "<video>\\n...", "response": "..."}, "video_file": ...,
  "dataset": ..., "idx": ...}`; `<video>` / `<image>` in the prompt mark where the visual items go.
- ShareGPT / LLaVA (LLaVA-Video-178K and most video-instruction sets): `{"id", "video" (or "image"),
  "conversations": [{"from": "human"|"gpt"|"system", "value": "<image>\\n..."}], "data_source"}`; `<image>` or
  `<video>` in a turn marks where the row's video (or images) go.
- ShareGPT4Video captions (`sharegpt4video_40k.jsonl`): `{"video_id", "captions": [{"idx": "-1", "content":
  ...}, ...], "zip_folder", ...}`: the whole-video caption (`idx` "-1") becomes the answer of a `caption_detailed`
  sample of the video `{video_id}.mp4` (or `video_path` when given).
- WebVid-style caption tables (CSV / parquet): `{"videoid", "name", "page_dir", "duration", "contentUrl"}`:
  `name` is the answer of a `caption_short` sample of `{page_dir}/{videoid}.mp4`.

Every row is normalised on the fly by `normalize_row` into `{"messages": [{"role", "content": [items]}], "task",
"source", "idx"}` (plus `mix_index`, its position in the mixture) with item dicts `{"type": "video"|"image"|"text",
"path"|"paths"|"text"}` and absolute paths.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

_VISUAL_TYPES = ("video", "image")
# Keys of Tarsier2's media items that pick a part of a file (dataset/custom_data_parsers/standard_vision_parser.py)
_CLIP_KEYS = {"frame_indices", "time_indices", "start_frame", "end_frame", "start_time", "end_time"}


def _resolve(path: str, root: str | None) -> str:
    if root is None or os.path.isabs(path):
        return path
    return os.path.join(root, path)


def row_name(row: dict, origin: str) -> str:
    """A raw row as messages name it: its dataset and `idx`."""
    return f"{origin} row idx={row.get('idx', '?')}"


def _normalize_item(item: Any, root: str | None, where: str) -> dict:
    if isinstance(item, str):
        return {"type": "text", "text": item}
    if not isinstance(item, dict) or "type" not in item:
        raise ValueError(f"{where}: content item {item!r} is not a dict with a 'type'")
    kind = item["type"]
    if kind == "text":
        text = item.get("text")
        if not text and isinstance(item.get("reference"), str):  # Tarsier2 annotation files keep answers there
            text = item["reference"]
        if not isinstance(text, str):
            raise ValueError(f"{where}: text item without a 'text' string: {item!r}")
        return {"type": "text", "text": text}
    if kind not in _VISUAL_TYPES:
        raise ValueError(f"{where}: unknown content type {kind!r} (expected text, image or video)")
    # Our format: {"type": "video", "path": ...}; released layout: {"type": "video", "video": {"video_file": ...}}.
    source = item.get("path")
    nested = item.get(kind)
    if source is None and isinstance(nested, dict):
        # rows read through Arrow carry every key of the file's items, None where unused
        nested = {k: v for k, v in nested.items() if v is not None}
        unsupported = sorted(set(nested) & _CLIP_KEYS)
        if unsupported or (kind == "image" and "video_file" in nested):
            raise ValueError(f"{where}: {kind} item selects part of a file ({unsupported or ['video_file']}): clip "
                             "ranges and fixed frame indices are not supported; cut the clip or sample by policy")
        # Tarsier2 also writes a video as its frame images: {"type": "video", "video": {"image_file": [...]}}
        source = nested.get(f"{kind}_file", nested.get("image_file", nested.get("path")))
    elif source is None and isinstance(nested, str):
        source = nested
    if isinstance(source, (list, tuple)):
        if not source or not all(isinstance(p, str) and p for p in source):
            raise ValueError(f"{where}: a {kind} item's frame list must be a non-empty list of file paths: {item!r}")
        return {"type": kind, "paths": [_resolve(p, root) for p in source]}
    if not isinstance(source, str) or not source:
        raise ValueError(f"{where}: {kind} item has no file path ('path' or '{kind}.{kind}_file'): {item!r}")
    return {"type": kind, "path": _resolve(source, root)}


def _split_placeholders(prompt: str, visual: list[dict]) -> list[dict]:
    """Turn a DREAM-1K-style prompt with `<video>`/`<image>` markers into content items, in order."""
    items: list[dict] = []
    rest = prompt
    remaining = list(visual)
    while True:
        positions = [(rest.find(f"<{k}>"), k) for k in _VISUAL_TYPES if f"<{k}>" in rest]
        if not positions:
            break
        pos, kind = min(positions)
        if rest[:pos].strip():
            items.append({"type": "text", "text": rest[:pos].strip()})
        if not remaining:
            raise ValueError(f"prompt has more <{kind}> markers than visual files: {prompt!r}")
        items.append({**remaining.pop(0), "type": kind})
        rest = rest[pos + len(kind) + 2 :]
    items.extend(remaining)  # files without markers go before the text, like a bare "<video>\n" prefix
    if rest.strip():
        items.append({"type": "text", "text": rest.strip()})
    return items



# ---------------------------------------------------------------------------------------------------------------
# Published layouts -> our format (media paths still relative; `normalize_row` resolves them)
# ---------------------------------------------------------------------------------------------------------------

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
_MARKER = re.compile(r"<(image|video)>")
# Layouts whose rows name no source: the source (for --source_weights) is the layout's dataset.
LAYOUT_SOURCES = {"sharegpt4video": "sharegpt4video", "webvid": "webvid"}


def detect_layout(keys) -> str:
    """The layout of a row (or of a table, from its column names): messages, dream1k, sharegpt, sharegpt4video,
    webvid, or unknown."""
    keys = set(keys)
    if "messages" in keys:
        return "messages"
    if "conversations" in keys:
        return "sharegpt"
    if {"video_id", "captions"} <= keys:
        return "sharegpt4video"
    if {"videoid", "name"} <= keys:
        return "webvid"
    if "text" in keys:
        return "dream1k"
    return "unknown"


def _listed(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _turn_items(text: str, media: list[dict], where: str) -> list[dict]:
    """A turn's text with `<image>`/`<video>` markers -> content items; each marker takes the next of `media`."""
    items, position = [], 0
    for marker in _MARKER.finditer(text):
        before = text[position:marker.start()].strip()
        if before:
            items.append({"type": "text", "text": before})
        if not media:
            raise ValueError(f"{where}: more <image>/<video> markers in 'conversations' than files in the row's "
                             "'video' / 'image' field")
        items.append(media.pop(0))
        position = marker.end()
    rest = text[position:].strip()
    if rest:
        items.append({"type": "text", "text": rest})
    return items


def from_sharegpt(row: dict, where: str) -> dict:
    """ShareGPT / LLaVA `conversations` (LLaVA-Video-178K) -> our format.

    The row's `video` (or `image`: one path or a list) goes where the turns' `<image>`/`<video>` markers are
    (LLaVA-Video writes `<image>` for the video); files without a marker open the first user turn.
    """
    kind = "video" if row.get("video") is not None else "image" if row.get("image") is not None else None
    media = [{"type": kind, "path": p} for p in _listed(row[kind])] if kind else []
    messages = []
    for number, turn in enumerate(row["conversations"] or []):
        role = SHAREGPT_ROLES.get(turn.get("from") if isinstance(turn, dict) else None)
        if role is None or not isinstance(turn.get("value"), str):
            raise ValueError(f"{where}: conversations[{number}] needs 'from' in {sorted(SHAREGPT_ROLES)} and a "
                             f"string 'value', got {turn!r}")
        messages.append({"role": role, "content": _turn_items(turn["value"], media, where)})
    if media:
        first_user = next((m for m in messages if m["role"] == "user"), None)
        if first_user is None:
            raise ValueError(f"{where}: the row has media but its conversations have no human turn")
        first_user["content"][:0] = media
    return {"messages": messages, "task": row.get("task"),
            "source": row.get("data_source") or row.get("source") or row.get("dataset"),
            "idx": row.get("id", row.get("idx"))}


def from_sharegpt4video(row: dict, where: str) -> dict:
    """ShareGPT4Video captions -> one `caption_detailed` sample: the whole-video caption (`idx` "-1")."""
    whole = [c for c in row.get("captions") or [] if isinstance(c, dict) and str(c.get("idx")) == "-1"]
    if not whole or not isinstance(whole[0].get("content"), str):
        raise ValueError(f"{where}: ShareGPT4Video row without a whole-video caption (captions item with idx '-1')")
    video = row.get("video_path") or f"{row['video_id']}.mp4"
    return {"messages": [{"role": "user", "content": [{"type": "video", "path": video}]},
                         {"role": "assistant", "content": [{"type": "text", "text": whole[0]["content"]}]}],
            "task": "caption_detailed", "source": LAYOUT_SOURCES["sharegpt4video"], "idx": row["video_id"]}


def from_webvid(row: dict, where: str) -> dict:
    """A WebVid-style caption table row -> one `caption_short` sample of `{page_dir}/{videoid}.mp4`."""
    if not isinstance(row.get("name"), str) or not row["name"].strip():
        raise ValueError(f"{where}: WebVid row without a caption in 'name'")
    video = f"{row['videoid']}.mp4"
    if row.get("page_dir"):
        video = f"{row['page_dir']}/{video}"
    return {"messages": [{"role": "user", "content": [{"type": "video", "path": video}]},
                         {"role": "assistant", "content": [{"type": "text", "text": row["name"].strip()}]}],
            "task": "caption_short", "source": LAYOUT_SOURCES["webvid"], "idx": row["videoid"]}


def from_published_layout(row: dict, where: str) -> dict:
    """A row of any published layout in our `messages` format (rows already in it, and DREAM-1K, pass through)."""
    if isinstance(row.get("messages"), str):  # a Hub viewer config may type `messages` as a JSON string
        try:
            return {**row, "messages": json.loads(row["messages"])}
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: 'messages' is a string but not JSON ({error.msg})") from None
    layout = detect_layout(row)
    converter = {"sharegpt": from_sharegpt, "sharegpt4video": from_sharegpt4video, "webvid": from_webvid}.get(layout)
    return row if converter is None else converter(row, where)


def normalize_row(row: dict, video_root: str | None, origin: str = "dataset") -> dict:
    """
    Bring a row of any supported layout into the internal form (see the module docstring).

    Args:
        row: one raw row (our format, the released Tarsier layout or the DREAM-1K layout).
        video_root: folder that relative video/image paths are relative to (`None` keeps them as they are).
        origin: the dataset's name, for error messages.

    Returns:
        `{"messages": [...], "task": str | None, "source": str | None, "idx": Any}`.
    """
    where = row_name(row, origin)
    row = from_published_layout(row, where)
    if row.get("messages") is not None:
        messages = []
        for message in row["messages"]:
            if not isinstance(message, dict) or "role" not in message:
                raise ValueError(f"{where}: every message needs a 'role' and 'content'")
            content = message.get("content")
            if content is None:
                content = []
            elif isinstance(content, dict):  # one item without a list around it
                content = [content]
            elif isinstance(content, str):
                content = [{"type": "text", "text": content}]
            items = [_normalize_item({k: v for k, v in item.items() if v is not None}, video_root, where)
                     if isinstance(item, dict) else _normalize_item(item, video_root, where) for item in content]
            messages.append({"role": message["role"], "content": items})
    elif isinstance(row.get("text"), dict) and "prompt" in row["text"]:
        files = row.get("video_file")
        visual = []
        if files:
            files = files if isinstance(files, list) and files and isinstance(files[0], list) else [files]
            visual = [_normalize_item({"type": "video", "path": f}, video_root, where) for f in files]
        user = _split_placeholders(row["text"]["prompt"], visual)
        messages = [{"role": "user", "content": user}]
        if row["text"].get("response") is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": row["text"]["response"]}]})
    else:
        raise ValueError(f"{where}: not a known layout (no 'messages', 'conversations', DREAM-1K text.prompt, "
                         f"ShareGPT4Video captions or WebVid videoid/name; see recipes/README.md); keys: {sorted(row)}")
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError(f"{where}: no assistant turn to train on")
    return {
        "messages": messages,
        "task": row.get("task"),
        "source": row.get("source") or row.get("dataset"),
        "idx": row.get("idx"),
    }

