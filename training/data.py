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

## Layouts read unchanged

- Released Tarsier data on the Hub (e.g. Tarsier2-Recap-585K): content items `{"type": "video", "video":
  {"video_file": "x.mp4"}}` (a list of frame image files also works) or `{"type": "image", "image":
  {"image_file": ...}}`, plus `dataset` (read as `source`), `task` and `idx`.
- DREAM-1K (`DREAM-1K.jsonl`): `{"text": {"prompt": "<video>\\n...", "response": "..."}, "video_file": ...,
  "dataset": ..., "idx": ...}`; `<video>` / `<image>` in the prompt mark where the visual items go.

Every row is normalised on the fly by `normalize_row` into `{"messages": [{"role", "content": [items]}], "task",
"source", "idx"}` (plus `mix_index`, its position in the mixture) with item dicts `{"type": "video"|"image"|"text", "path"|"paths"|"text"}` and absolute paths.
"""

from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

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


def load_prompt_pools(path: str | os.PathLike | None) -> dict[str, list[str]]:
    """Default pools, updated with a `{task: [prompt, ...]}` JSON or YAML file when `path` is given."""
    pools = {task: list(prompts) for task, prompts in DEFAULT_PROMPT_POOLS.items()}
    if path is None:
        return pools
    text = Path(path).read_text(encoding="utf-8")
    if str(path).endswith((".yaml", ".yml")):
        import yaml

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
        if not isinstance(item.get("text"), str):
            raise ValueError(f"{where}: text item without a 'text' string: {item!r}")
        return {"type": "text", "text": item["text"]}
    if kind not in _VISUAL_TYPES:
        raise ValueError(f"{where}: unknown content type {kind!r} (expected text, image or video)")
    # Our format: {"type": "video", "path": ...}; released layout: {"type": "video", "video": {"video_file": ...}}.
    source = item.get("path")
    nested = item.get(kind)
    if source is None and isinstance(nested, dict):
        source = nested.get(f"{kind}_file", nested.get("path"))
    elif source is None and isinstance(nested, str):
        source = nested
    if isinstance(source, (list, tuple)):
        if not source:
            raise ValueError(f"{where}: empty frame list in {kind} item")
        return {"type": kind, "paths": [_resolve(str(p), root) for p in source]}
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
    if row.get("messages") is not None:
        messages = []
        for message in row["messages"]:
            if not isinstance(message, dict) or "role" not in message:
                raise ValueError(f"{where}: every message needs a 'role' and 'content'")
            content = message.get("content")
            if content is None:
                content = []
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
        raise ValueError(f"{where}: no 'messages' and no DREAM-1K style 'text.prompt' field; keys: {sorted(row)}")
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


def load_rows(spec: str, split: str = "train"):
    """
    Load raw rows from a local `.jsonl`/`.json` file or folder of them, or a Hub dataset id.

    Returns a `datasets.Dataset`; video paths stay plain strings (decoding is ours, in DataLoader workers).
    """
    import datasets

    path = Path(spec)
    if path.is_file():
        if path.suffix not in (".jsonl", ".json"):
            raise ValueError(f"{spec}: expected a .jsonl/.json file, a folder of them, or a Hub dataset id")
        return datasets.load_dataset("json", data_files=str(path), split="train")
    if path.is_dir():
        files = sorted(str(p) for p in path.glob("*.jsonl")) or sorted(str(p) for p in path.glob("*.json"))
        if files:
            return datasets.load_dataset("json", data_files=files, split="train")
        return datasets.load_dataset(str(path), split=split)
    if spec.count("/") == 1 and not spec.startswith((".", "/")):
        return datasets.load_dataset(spec, split=split)
    raise FileNotFoundError(f"{spec}: no such file or folder, and not a Hub dataset id (owner/name)")


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
    """One training dataset: where the rows are, the folder its videos are in, and its split."""

    path: str
    video_root: str | None = None
    split: str = "train"


class ConversationDataset(torch.utils.data.Dataset):
    """
    Map-style dataset over one or more raw datasets, normalised and mixed by source.

    `__getitem__` is cheap (no decoding): it returns the normalised row with absolute media paths and a prompt drawn
    from the task's pool. Frames are decoded by the collator, which runs in the DataLoader workers.

    Every row is checked once when the dataset is built (`check_row`): rows that cannot train (unparsable JSON, no
    `messages`, a message without `role`, no assistant turn, an empty answer, ...) are logged with `file:line` and
    the reason, kept in `bad_rows` and left out of the mixture, so no bad row reaches `__getitem__` mid-run; with
    `fail_fast=True` building raises `BadRowsError` listing them all instead.
    """

    def __init__(
        self,
        specs: Sequence[DatasetSpec],
        source_weights: dict[str, float] | None = None,
        prompt_pools: dict[str, list[str]] | None = None,
        resample_prompts: bool = False,
        seed: int = 0,
        fail_fast: bool = False,
    ):
        if not specs:
            raise ValueError("no training dataset given")
        self.parts = []
        sources: list[str | None] = []
        self._offsets = [0]
        self.prompt_pools = prompt_pools if prompt_pools is not None else load_prompt_pools(None)
        self.bad_rows: list[BadRow] = []
        bad_flat: list[int] = []
        for spec in specs:
            rows, places, bad = load_rows_with_places(spec)
            default_source = Path(spec.path).stem
            for position, raw in enumerate(rows):
                reason = check_row(raw, spec, self.prompt_pools)
                if reason is not None:
                    bad.append(BadRow(places[position], reason))
                    bad_flat.append(self._offsets[-1] + position)
                source = raw.get("source") or raw.get("dataset")
                sources.append(source if source is not None else default_source)
            self.bad_rows += sorted(bad, key=lambda row: row.order)
            self.parts.append((rows, spec))
            self._offsets.append(self._offsets[-1] + len(rows))
        self.sources = sources
        report_bad_rows(self.bad_rows, fail_fast)
        indices = mixture_indices(sources, source_weights or {}, seed)
        self.indices = indices[~np.isin(indices, bad_flat)]
        if not len(self.indices):
            raise ValueError(f"no trainable rows: all {len(self.bad_rows)} rows of {[s.path for s in specs]} are bad")
        self.resample_prompts = resample_prompts
        self.seed = seed
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
        row = normalize_row(raw, spec.video_root, origin=spec.path)
        if row["source"] is None:
            row["source"] = self.sources[flat]
        # A fresh prompt per draw; seeded by index and draw count so runs are reproducible per worker.
        self._draws += 1
        rng = random.Random(hash((self.seed, index, self._draws)))
        row = apply_prompt_pool(row, self.prompt_pools, rng, self.resample_prompts)
        row["mix_index"] = index
        return row

    def _transform(self, batch: dict) -> dict:
        return {"row": [self[int(i)] for i in batch["mix_index"]]}

    def as_hf_dataset(self):
        """
        This mixture as a `datasets.Dataset` (what `SFTTrainer` accepts): one `mix_index` column, turned into the
        normalised row (key `row`) on access by a lazy transform, so nothing is materialised or decoded up front.
        """
        import datasets

        table = datasets.Dataset.from_dict({"mix_index": np.arange(len(self), dtype=np.int64)})
        return table.with_transform(self._transform)


# ---------------------------------------------------------------------------------------------------------------
# Row validation: every row is checked once, before training, so a bad row never stops a run mid-way.
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class BadRow:
    """A row that cannot train: `where` is `file:line` for JSON Lines files (else `path row N`), `reason` why."""

    where: str
    reason: str

    @property
    def order(self) -> tuple[str, int]:
        """(file, line) for sorting in file order."""
        head, _, number = self.where.replace(" row ", ":").rpartition(":")
        return head, int(number)


class BadRowsError(ValueError):
    """Raised under `fail_fast` when rows are bad; the message lists every one with its place and reason."""


def _json_lines_files(path: Path) -> list[Path] | None:
    """The local JSON Lines files a dataset path names (a `.jsonl` file or a folder of them), else None."""
    if path.is_file() and path.suffix == ".jsonl":
        return [path]
    if path.is_dir():
        return sorted(path.glob("*.jsonl")) or None
    return None


class JsonLinesRows:
    """Rows of local JSON Lines files, kept as their JSON text in an in-memory Arrow table and parsed on access.

    Unlike an Arrow table of the parsed rows, any mix of value types under one key loads (e.g. `content` a string in
    one row and a list in another, both valid), and rows read back exactly as written (no None-filled keys).
    """

    def __init__(self, texts: list[str]):
        import datasets

        self._table = datasets.Dataset.from_dict({"json": texts})

    def __len__(self) -> int:
        return len(self._table)

    def __getitem__(self, index: int) -> dict:
        return json.loads(self._table[int(index)]["json"])

    def __iter__(self):
        for batch in self._table.iter(batch_size=1024):
            yield from (json.loads(text) for text in batch["json"])


def read_json_lines(files: Sequence[Path]) -> tuple[JsonLinesRows, list[str], list[BadRow]]:
    """Parse JSON Lines files line by line.

    Returns:
        `(rows, places, bad)`: the rows that are JSON objects, the `file:line` of each, and a `BadRow` for every
        line that is not (blank lines are skipped).

    Raises:
        ValueError: when the files hold no line at all (an empty file).
    """
    texts, places, bad = [], [], []
    for file in files:
        with open(file, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                where = f"{file}:{number}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    bad.append(BadRow(where, f"not valid JSON ({error.msg} at column {error.colno})"))
                    continue
                if not isinstance(row, dict):
                    bad.append(BadRow(where, f"a JSON {type(row).__name__}, not an object"))
                    continue
                texts.append(line)
                places.append(where)
    if not texts and not bad:
        raise ValueError(f"{', '.join(map(str, files))}: no rows (the file is empty)")
    return JsonLinesRows(texts), places, bad


def load_rows_with_places(spec: DatasetSpec):
    """`load_rows`, plus where every row comes from and the lines that could not be parsed.

    Local JSON Lines files are parsed here line by line (a malformed line is a `BadRow`, not a failed load); other
    sources go through `load_rows`.

    Returns:
        `(rows, places, bad)`: the rows (`JsonLinesRows` or a `datasets.Dataset`; both index and iterate as dicts),
        one place string per row, and the unparsable lines.
    """
    files = _json_lines_files(Path(spec.path))
    if files is None:
        rows = load_rows(spec.path, spec.split)
        return rows, [f"{spec.path} row {i}" for i in range(len(rows))], []
    return read_json_lines(files)


def _has_text(content: list[dict]) -> bool:
    return any(item["type"] == "text" and item["text"].strip() for item in content)


def check_row(raw: dict, spec: DatasetSpec, pools: dict[str, list[str]]) -> str | None:
    """Why a raw row cannot train, or None when it can (it normalises and every assistant turn has text)."""
    messages = raw.get("messages")
    if isinstance(messages, list):
        if not messages:
            return "'messages' is empty"
        for number, message in enumerate(messages):
            # Rows read through `datasets` carry every key of the file's schema: a missing role reads as None.
            if not isinstance(message, dict) or message.get("role") is None:
                return f"message {number} has no 'role'"
    try:
        row = normalize_row(raw, spec.video_root, origin=spec.path)
        apply_prompt_pool(row, pools, random.Random(0), resample=False)
    except (ValueError, TypeError, AttributeError, KeyError) as error:
        return str(error).split(": ", 1)[-1] if str(error).startswith(spec.path) else str(error)
    roles = {m["role"] for m in row["messages"]} - {"system", "user", "assistant"}
    if roles:
        return f"unknown role(s) {sorted(roles)} (expected system, user, assistant)"
    empty = [i for i, m in enumerate(row["messages"]) if m["role"] == "assistant" and not _has_text(m["content"])]
    if empty:
        return f"empty answer: assistant message {empty[0]} has no text"
    return None


def report_bad_rows(bad: Sequence[BadRow], fail_fast: bool) -> None:
    """Log every bad row (place and reason); raise `BadRowsError` listing them all under `fail_fast`."""
    if not bad:
        return
    lines = "\n".join(f"  {row.where}: {row.reason}" for row in bad)
    if fail_fast:
        raise BadRowsError(f"{len(bad)} bad training row(s) (--fail_fast):\n{lines}")
    logger.warning("skipping %d bad training row(s):\n%s", len(bad), lines)
