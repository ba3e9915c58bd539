"""Training data: one conversation format for every task, readers for the released layouts, prompt pools, mixing.

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
- `task` names the task (it selects the prompt pool, below); `source` names the source dataset (it selects the
  mixing weight). `idx` is any identifier, used in log messages.
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

Rows come from a `.jsonl`/`.json`/`.parquet`/`.csv`/`.tsv` file or a folder of them, a `save_to_disk` folder, a
Hub dataset id (`datasets.load_dataset`, optionally streamed) or an in-memory `datasets.Dataset` /
`IterableDataset` (`load_rows`).

Every row is normalised on the fly by `normalize_row` into `{"messages": [{"role", "content": [items]}], "task",
"source", "idx"}` (plus `mix_index`, its position in the mixture) with item dicts `{"type": "video"|"image"|"text", "path"|"paths"|"text"}` and absolute paths.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import os
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import yaml

from processing_tarsier import IMAGE_TOKEN, VIDEO_TOKEN, _split_per_sample
from tarsier_hf.jsonl import append_jsonl, iter_jsonl

logger = logging.getLogger(__name__)

# Prompt pools per task. Pools for other tasks come from a JSON/YAML file (`--prompt_pools`), merged over these.
DEFAULT_PROMPT_POOLS: dict[str, list[str]] = {
    "caption_short": [
        "Describe the video in one sentence.",
        "Summarize what happens in the video in a single sentence.",
        "Give a one-sentence caption of this video.",
    ],
    "caption_detailed": [
        "Describe the video in detail.",
        "Give a detailed description of what happens in the video.",
        "Describe the actions and events of this video step by step.",
    ],
    "image_caption": ["Describe the image.", "What does this image show?"],
    "action_recognition": [
        "What action is being performed in the video? Answer with a short phrase.",
        "Name the action shown in the video.",
    ],
    "video_qa": ["Give a short answer to the following question."],
}

_VISUAL_TYPES = ("video", "image")
# The placeholder of each visual item type in the text the processor reads (what its chat template renders the item
# as): TarsierProcessor's; a mixture for another processor is given that processor's (`placeholders`)
PLACEHOLDERS = {"video": VIDEO_TOKEN, "image": IMAGE_TOKEN}
# Keys of Tarsier2's media items that pick a part of a file (dataset/custom_data_parsers/standard_vision_parser.py)
_CLIP_KEYS = {"frame_indices", "time_indices", "start_frame", "end_frame", "start_time", "end_time"}


def load_prompt_pools(path: str | os.PathLike | None) -> dict[str, list[str]]:
    """Default pools, updated with a `{task: [prompt, ...]}` JSON or YAML file when `path` is given."""
    pools = {task: list(prompts) for task, prompts in DEFAULT_PROMPT_POOLS.items()}
    if path is None:
        return pools
    text = Path(path).read_text(encoding="utf-8")
    if str(path).endswith((".yaml", ".yml")):
        loaded = yaml.safe_load(text)
    else:
        loaded = json.loads(text)
    if not isinstance(loaded, dict) or not all(
        isinstance(v, list) and v and all(isinstance(p, str) for p in v) for v in loaded.values()
    ):
        raise ValueError(f"{path}: prompt pools must map each task name to a non-empty list of prompt strings")
    pools.update(loaded)
    return pools


def _resolve(path: str, root: str | None) -> str:
    if root is None or os.path.isabs(path):
        return path
    return os.path.join(root, path)


def _row_name(row: dict, origin: str) -> str:
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
    where = _row_name(row, origin)
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


def apply_prompt_pool(row: dict, pools: dict[str, list[str]], rng: random.Random, resample: bool) -> dict:
    """Give user turns without text a prompt from the pool of `row["task"]` (or replace it when `resample`)."""
    task = row.get("task")
    pool = pools.get(task) if task is not None else None
    for message in row["messages"]:
        if message["role"] != "user":
            continue
        texts = [i for i, item in enumerate(message["content"]) if item["type"] == "text"]
        if not texts:
            if pool is None:
                raise ValueError(
                    f"row idx={row.get('idx')}: a user turn has no prompt text and task {task!r} has no prompt pool "
                    f"(known: {sorted(pools)}); add the prompt or a pool with --prompt_pools"
                )
            message["content"].append({"type": "text", "text": rng.choice(pool)})
        elif resample and pool is not None:
            message["content"][texts[0]] = {"type": "text", "text": rng.choice(pool)}
        break  # the first user turn sets the task's output format
    return row


_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".tsv": "csv"}


def load_rows(spec, split: str = "train", name: str | None = None, streaming: bool = False):
    """
    Raw rows, read with `datasets`, from any of:

    - an in-memory `datasets.Dataset` / `IterableDataset` (returned as is) or `DatasetDict` (its `split`);
    - a `.jsonl` / `.json` / `.parquet` / `.csv` / `.tsv` file, or a folder of files of one of those kinds;
    - a folder written by `save_to_disk` (a `Dataset` or a `DatasetDict`);
    - a Hub dataset id or a dataset folder with a card, through `datasets.load_dataset(spec, name, split=split)`.

    `streaming=True` returns an `IterableDataset` (nothing is downloaded up front). Video paths stay plain strings
    (decoding is ours, in the DataLoader workers).
    """
    import datasets  # optional: the `train` / `eval` extras

    if isinstance(spec, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        if split not in spec:
            raise ValueError(f"the DatasetDict has no split {split!r} (splits: {sorted(spec)})")
        spec = spec[split]
    if isinstance(spec, datasets.Dataset):
        return spec.to_iterable_dataset() if streaming else spec
    if isinstance(spec, datasets.IterableDataset):
        if not streaming:
            raise ValueError("an IterableDataset can only be streamed: use --dataset_streaming / "
                             "StreamingConversationDataset")
        return spec
    path = Path(spec)
    files: list[str] = []
    if path.is_file():
        if path.suffix not in _FILE_BUILDERS:
            raise ValueError(f"{spec}: expected a {'/'.join(_FILE_BUILDERS)} file, a folder of them, a save_to_disk "
                             "folder, or a Hub dataset id")
        files = [str(path)]
    elif path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return load_rows(datasets.load_from_disk(str(path)), split, streaming=streaming)
        for suffix in _FILE_BUILDERS:
            files = sorted(str(p) for p in path.glob(f"*{suffix}"))
            if files:
                break
    elif spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        raise FileNotFoundError(f"{spec}: no such file or folder, and not a Hub dataset id (owner/name)")
    if files:
        suffix = Path(files[0]).suffix
        kwargs = {"delimiter": "\t"} if suffix == ".tsv" else {}
        return datasets.load_dataset(_FILE_BUILDERS[suffix], data_files=files, split="train", streaming=streaming,
                                     **kwargs)
    return datasets.load_dataset(str(spec), name=name, split=split, streaming=streaming)


def has_splits(spec) -> bool:
    """Whether `load_rows(spec, split)` can tell splits apart: Hub ids, `DatasetDict`s and dataset folders can; a
    file, a folder of files or a `Dataset` is one split (any `split` reads all of it)."""
    import datasets  # optional: the `train` / `eval` extras

    if isinstance(spec, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        return True
    if not isinstance(spec, (str, os.PathLike)):
        return False
    path = Path(spec)
    if path.is_file():
        return False
    if path.is_dir():
        if (path / "dataset_dict.json").is_file():
            return True
        if (path / "state.json").is_file() or any(next(path.glob(f"*{s}"), None) for s in _FILE_BUILDERS):
            return False
    return True


def parse_weights(pairs: Sequence[str] | None) -> dict[str, float]:
    """`["webvid=0.5", "ssv2=2"]` -> `{"webvid": 0.5, "ssv2": 2.0}`."""
    weights = {}
    for pair in pairs or []:
        name, sep, value = pair.rpartition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = -1.0
        if not sep or not name or weight < 0:
            raise ValueError(f"mixing weight {pair!r}: expected NAME=WEIGHT with WEIGHT >= 0")
        weights[name] = weight
    return weights


def mixture_indices(sources: Sequence[str | None], weights: dict[str, float], seed: int) -> np.ndarray:
    """
    Indices of one epoch of the mixture: each source's rows are re-sampled by its weight.

    A weight `w` draws `round(w * n)` of the source's `n` rows: a random subset without replacement for `w <= 1`
    (down-sampling, as the paper re-samples WebVid), every row `floor(w)` times plus a random remainder for `w > 1`.
    Sources without a weight keep weight 1. The result is shuffled by the trainer's sampler, not here.
    """
    unknown = set(weights) - {s for s in sources}
    if unknown:
        raise ValueError(f"mixing weights name unknown sources {sorted(unknown)}; sources in the data: "
                         f"{sorted({str(s) for s in sources})}")
    rng = np.random.default_rng(seed)
    by_source: dict[str | None, list[int]] = {}
    for index, source in enumerate(sources):
        by_source.setdefault(source, []).append(index)
    chosen = []
    for source, rows in by_source.items():
        rows = np.asarray(rows)
        weight = weights.get(source, 1.0)
        whole, frac = divmod(weight, 1.0)
        chosen.extend([rows] * int(whole))
        extra = int(round(frac * len(rows)))
        if extra:
            chosen.append(rng.choice(rows, size=extra, replace=False))
    if not chosen:
        raise ValueError("the mixing weights leave no training rows")
    return np.sort(np.concatenate(chosen))


@dataclass
class DatasetSpec:
    """
    One training dataset: where the rows are (`load_rows`: a path, a Hub id or a `datasets` object), the folder
    its media paths are relative to, its split, its config name (`datasets.load_dataset(path, name)`) and whether
    it is streamed.
    """

    path: Any
    video_root: str | None = None
    split: str = "train"
    name: str | None = None
    streaming: bool = False

    @property
    def label(self) -> str:
        """A name for messages and the default source: the file stem, the Hub id's name or the object's type."""
        if isinstance(self.path, (str, os.PathLike)):
            return Path(self.path).stem
        info = getattr(self.path, "info", None)
        return getattr(info, "dataset_name", None) or type(self.path).__name__

    @property
    def place(self) -> str:
        """Where the rows are, for the places of bad rows: the path or Hub id as given, else the object's label."""
        return str(self.path) if isinstance(self.path, (str, os.PathLike)) else self.label


def default_source(columns, spec: DatasetSpec) -> str:
    """The source of rows that name none: the layout's dataset (WebVid, ShareGPT4Video), else the dataset's label."""
    return LAYOUT_SOURCES.get(detect_layout(columns), spec.label)


def row_source(raw: dict, spec: DatasetSpec) -> str:
    """The source of a raw row (`source`, `dataset` or `data_source`), else `default_source`."""
    named = next((raw[key] for key in ("source", "dataset", "data_source") if raw.get(key) is not None), None)
    return named if named is not None else default_source(raw, spec)


# ---------------------------------------------------------------------------------------------------------------
# Row validation: every row is checked before it can train, so a bad row never stops a run mid-way.
# ---------------------------------------------------------------------------------------------------------------


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


def _json_lines_files(spec: DatasetSpec) -> list[Path] | None:
    """The local JSON Lines files a dataset names (a `.jsonl` file or a folder of them), else None."""
    if not isinstance(spec.path, (str, os.PathLike)):
        return None
    path = Path(spec.path)
    if path.is_file() and path.suffix == ".jsonl":
        return [path]
    if path.is_dir() and not (path / "dataset_dict.json").is_file() and not (path / "state.json").is_file():
        return sorted(path.glob("*.jsonl")) or None
    return None


def iter_json_lines(files: Sequence[Path]):
    """`(place, row, reason)` of every non-blank line of `files` in order (`tarsier_hf.jsonl.iter_jsonl`)."""
    for file in files:
        for number, row, reason in iter_jsonl(file):
            yield f"{file}:{number}", row, reason


def _check_not_empty(files: Sequence[Path]) -> None:
    """Raise when no file holds a non-blank line (reads only up to the first one)."""
    for file in files:
        with open(file, encoding="utf-8") as handle:
            if any(line.strip() for line in handle):
                return
    raise ValueError(f"{', '.join(map(str, files))}: no rows (the file is empty)")


class JsonLinesRows:
    """Rows of local JSON Lines files, kept as JSON text in an in-memory Arrow table and parsed on access.

    Unlike an Arrow table of the parsed rows, any mix of value types under one key loads (e.g. `content` a string in
    one row and a list in another, both valid), and rows read back exactly as written (no None-filled keys).
    """

    def __init__(self, texts: list[str]):
        import datasets  # optional: the `train` / `eval` extras

        self._table = datasets.Dataset.from_dict({"json": texts})

    def __len__(self) -> int:
        return len(self._table)

    def __getitem__(self, index: int) -> dict:
        return json.loads(self._table[int(index)]["json"])

    def __iter__(self):
        for batch in self._table.iter(batch_size=1024):
            yield from (json.loads(text) for text in batch["json"])


def load_rows_with_places(spec: DatasetSpec):
    """`load_rows` for one dataset, plus where every row comes from and the lines that could not be parsed.

    Local JSON Lines files are parsed here line by line (a malformed line is a `BadRow`, not a failed load); every
    other layout and source goes through `load_rows`.

    Returns:
        `(rows, places, bad)`: the rows (`JsonLinesRows` or a `datasets.Dataset`; both index and iterate as dicts),
        one place per row (`file:line`, or `dataset row N`), and a `BadRow` per unparsable line.

    Raises:
        ValueError: when JSON Lines files hold no line at all (an empty file).
    """
    files = _json_lines_files(spec)
    if files is None:
        rows = load_rows(spec.path, spec.split, spec.name)
        return rows, [f"{spec.place} row {i}" for i in range(len(rows))], []
    _check_not_empty(files)
    texts, places, bad = [], [], []
    for where, row, reason in iter_json_lines(files):
        if reason is not None:
            bad.append(BadRow(where, reason))
        else:
            texts.append(json.dumps(row, ensure_ascii=False))
            places.append(where)
    return JsonLinesRows(texts), places, bad


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
            reason = reason.removeprefix(f"{_row_name(raw, spec.label)}: ")
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


class _Mixture:
    """What both mixtures share: their datasets (`parts`), mixing weights per source, prompt pools, the processor's
    visual placeholders (`check_placeholders`; Tarsier's by default), and the bad-row policy and record
    (`bad_rows_log`: a JSONL file of `BadRow`s, appended to). A subclass reads its datasets in `_load(specs)`.
    With `check_media`, a map-style mixture also looks up every row's media files up front (`report_missing_media`:
    an error when none exists, a warning listing the first absent ones otherwise); `train_sft.py` turns it on.

    Raises `ValueError` when a pooled prompt spells a placeholder (prompts join rows after their check).
    """

    def __init__(
        self,
        specs: Sequence[DatasetSpec],
        source_weights: dict[str, float] | None = None,
        prompt_pools: dict[str, list[str]] | None = None,
        resample_prompts: bool = False,
        seed: int = 0,
        fail_fast: bool = False,
        bad_rows_log: str | os.PathLike | None = None,
        placeholders: dict[str, str] = PLACEHOLDERS,
        check_media: bool = False,
    ):
        if not specs:
            raise ValueError("no training dataset given")
        self.parts = []
        self.weights = dict(source_weights or {})
        self.prompt_pools = prompt_pools if prompt_pools is not None else load_prompt_pools(None)
        self.placeholders = dict(placeholders)
        for task, prompts in self.prompt_pools.items():
            for prompt in prompts:
                try:
                    check_placeholders([{"role": "user", "content": [{"type": "text", "text": prompt}]}], placeholders)
                except ValueError as error:
                    raise ValueError(f"prompt pool of task {task!r}: {prompt!r}: {error}") from None
        self.resample_prompts = resample_prompts
        self.seed = seed
        self.fail_fast = fail_fast
        self.bad_rows_log = bad_rows_log
        self.check_media = check_media
        self.bad_rows: list[BadRow] = []
        self._load(specs)

    def _load(self, specs: Sequence[DatasetSpec]) -> None:
        raise NotImplementedError

    def _record(self, bad: Sequence[BadRow]) -> None:
        """Append bad rows to `bad_rows_log` (when set), whole lines under a lock (`append_jsonl`): the workers and
        ranks of a streamed run append to one file."""
        if self.bad_rows_log:
            append_jsonl(self.bad_rows_log, [asdict(row) for row in bad])


class ConversationDataset(_Mixture, torch.utils.data.Dataset):
    """
    Map-style dataset over one or more raw datasets, normalised and mixed by source.

    `__getitem__` is cheap (no decoding): it returns the normalised row with absolute media paths and a prompt drawn
    from the task's pool. Frames are decoded by the collator, which runs in the DataLoader workers.

    Every row of every layout is checked once when the dataset is built (`check_row`): rows that cannot train
    (unparsable JSON, no known layout, empty `messages`, a message without `role`, no assistant turn, an empty
    answer, a field of the wrong type, a text that spells a visual placeholder, ...) are logged with their place
    (`file:line` for JSON Lines files, else `dataset row N`) and the reason, kept in `bad_rows`, written to
    `bad_rows_log` and left out of the mixture (whose weights act on the trainable rows), so no bad row reaches
    `__getitem__` mid-run; with `fail_fast=True` building raises `BadRowsError` listing them all instead.
    """

    def _load(self, specs: Sequence[DatasetSpec]) -> None:
        sources: list[str | None] = []  # per flat row; None for a bad row
        missing: list[tuple[str, str]] = []  # (place, first absent file) of trainable rows
        rows_with_media = 0
        self._offsets = [0]
        on_disk = functools.cache(os.path.exists)  # a file many rows share (one clip, several tasks) is looked up once
        for spec in specs:
            rows, places, bad = load_rows_with_places(spec)
            for position, raw in enumerate(rows):
                row, reason = check_row(raw, spec, self.prompt_pools, self.placeholders)
                if reason is not None:
                    bad.append(BadRow(places[position], reason))
                elif self.check_media and (paths := media_paths(row)):
                    rows_with_media += 1
                    absent = next((path for path in paths if not on_disk(path)), None)
                    if absent is not None:
                        missing.append((str(places[position]), absent))
                sources.append(None if row is None else row["source"])
            self.bad_rows += sorted(bad, key=lambda row: row.order)
            self.parts.append((rows, spec))
            self._offsets.append(self._offsets[-1] + len(rows))
        self.sources = sources
        self._record(self.bad_rows)
        report_bad_rows(self.bad_rows, self.fail_fast)
        good = np.array([flat for flat, source in enumerate(sources) if source is not None], dtype=np.int64)
        if not len(good):
            raise ValueError(f"no trainable rows: all {len(self.bad_rows)} rows of {[s.place for s in specs]} are bad")
        report_missing_media(missing, rows_with_media, [spec.video_root for spec in specs])
        self.indices = good[mixture_indices([sources[flat] for flat in good], self.weights, self.seed)]
        self._draws = 0

    def __len__(self) -> int:
        return len(self.indices)

    def raw_row(self, flat_index: int) -> tuple[dict, DatasetSpec]:
        part = int(np.searchsorted(self._offsets, flat_index, side="right")) - 1
        rows, spec = self.parts[part]
        return rows[flat_index - self._offsets[part]], spec

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(index)
        flat = int(self.indices[index])
        raw, spec = self.raw_row(flat)
        row = {**normalize_row(raw, spec.video_root, origin=spec.label), "source": self.sources[flat]}
        # A fresh prompt per draw; seeded by index and draw count so runs are reproducible per worker.
        self._draws += 1
        rng = random.Random(hash((self.seed, index, self._draws)))
        row = apply_prompt_pool(row, self.prompt_pools, rng, self.resample_prompts)
        row["mix_index"] = index
        return row

    def text_lengths(self) -> np.ndarray:
        """
        `(len(self),)` int64: the characters of text in each row of the mixture, all turns together (a prompt still
        to be drawn from a pool is not counted). Batches padded to their longest row cost what that row costs, so
        this is the key by which `train_sampling_strategy="group_by_length"` batches rows of similar length.
        """
        by_row: dict[int, int] = {}
        for flat in np.unique(self.indices):
            raw, spec = self.raw_row(int(flat))
            messages = normalize_row(raw, None, origin=spec.label)["messages"]
            by_row[int(flat)] = sum(len(item["text"]) for message in messages for item in message["content"]
                                    if item["type"] == "text")
        return np.array([by_row[int(flat)] for flat in self.indices], dtype=np.int64)

    def _transform(self, batch: dict) -> dict:
        return {"row": [self[int(i)] for i in batch["mix_index"]]}

    def as_hf_dataset(self):
        """
        This mixture as a `datasets.Dataset` (what `SFTTrainer` accepts): a `mix_index` column, turned into the
        normalised row (key `row`) on access by a lazy transform, so nothing is materialised or decoded up front, and
        a `length` column (`text_lengths`), which the Trainer reads for `train_sampling_strategy="group_by_length"`.
        """
        import datasets  # optional: the `train` / `eval` extras

        table = datasets.Dataset.from_dict({"mix_index": np.arange(len(self), dtype=np.int64),
                                           "length": self.text_lengths()})
        return table.with_transform(self._transform, columns=["mix_index"], output_all_columns=True)


class StreamingConversationDataset(_Mixture):
    """
    `ConversationDataset` for data too big for disk: each dataset is read with `datasets.load_dataset(...,
    streaming=True)` (or given as an `IterableDataset`; local JSON Lines files are read line by line), the datasets
    are interleaved row by row, and each row is checked and normalised (`check_row`) and given a pooled prompt as
    it streams past.

    A bad row is skipped as it streams: logged with its place (`file:line`, or `dataset row N`) and reason,
    appended to `bad_rows_log` (shared by DataLoader workers and ranks) and kept in `bad_rows` (of the process
    that read it); with `fail_fast=True` the first bad row is recorded, then raises `BadRowsError`.

    Mixing weights act per row in expectation: weight `w` yields each row `floor(w)` times plus once more with
    probability `w - floor(w)` (so 0.3 keeps ~30 % of a source, 2.5 repeats it 2.5 times). There is no length
    (train with `max_steps`) and no random access (the collator drops unreadable samples instead of drawing
    replacements). Iterating gives the rows; `as_hf_dataset` gives the `datasets.IterableDataset` `SFTTrainer` takes.
    """

    def _load(self, specs: Sequence[DatasetSpec]) -> None:
        for spec in specs:
            files = _json_lines_files(spec)
            if files is not None:
                _check_not_empty(files)
            self.parts.append((files if files is not None else
                               load_rows(spec.path, spec.split, spec.name, streaming=True), spec))

    @staticmethod
    def _placed(rows, spec: DatasetSpec):
        """`(place, row, reason)` of one dataset's stream (see `iter_json_lines`)."""
        if isinstance(rows, list):
            yield from iter_json_lines(rows)
            return
        for position, raw in enumerate(rows):
            yield f"{spec.place} row {position}", raw, None

    def _skip(self, bad: BadRow) -> None:
        self.bad_rows.append(bad)
        self._record([bad])
        if self.fail_fast:
            raise BadRowsError(f"bad training row (--fail_fast): {bad.where}: {bad.reason}")
        logger.warning("skipping bad training row %s: %s", bad.where, bad.reason)

    def shard(self, index: int, num_shards: int):
        """Rows number `index`, `index + num_shards`, ... of the interleaved stream, checked, normalised and
        weighted (bad rows skipped, see the class docstring)."""
        rng = random.Random(hash((self.seed, index, num_shards)))
        streams = [(self._placed(rows, spec), spec) for rows, spec in self.parts]
        position = -1
        while streams:
            for stream in list(streams):
                iterator, spec = stream
                item = next(iterator, None)
                if item is None:
                    streams.remove(stream)
                    continue
                position += 1
                if position % num_shards != index:
                    continue
                place, raw, reason = item
                if reason is None:
                    row, reason = check_row(raw, spec, self.prompt_pools, self.placeholders)
                if reason is not None:
                    self._skip(BadRow(place, reason))
                    continue
                weight = self.weights.get(row["source"], 1.0)
                whole, frac = divmod(weight, 1.0)
                for _ in range(int(whole) + (rng.random() < frac)):
                    yield apply_prompt_pool(copy.deepcopy(row), self.prompt_pools, rng, self.resample_prompts)

    def __iter__(self):
        return self.shard(0, 1)

    def _generate(self, shards: list[int], num_shards: int):
        for index in shards:
            for row in self.shard(index, num_shards):
                yield {"row": row}

    def as_hf_dataset(self, num_shards: int = 1):
        """
        This stream as a `datasets.IterableDataset` of `{"row": normalised row}` (what `SFTTrainer` accepts), in
        `num_shards` shards so that that many DataLoader workers each read a different part.
        """
        import datasets  # optional: the `train` / `eval` extras

        return datasets.IterableDataset.from_generator(
            self._generate, gen_kwargs={"shards": list(range(max(1, num_shards))), "num_shards": max(1, num_shards)}
        )
