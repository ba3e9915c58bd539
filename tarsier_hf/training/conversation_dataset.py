"""The training mixture as datasets: `ConversationDataset` (map-style, every row checked up front) and
`StreamingConversationDataset` (streamed, rows checked as they pass, one shard per DataLoader worker)."""

from __future__ import annotations

import copy
import functools
import logging
import os
import random
from dataclasses import asdict
from typing import Sequence

import numpy as np
import torch

from tarsier_hf.jsonl import append_jsonl
from tarsier_hf.training.dataset_spec import DatasetSpec
from tarsier_hf.training.json_lines import check_not_empty, iter_json_lines, json_lines_files
from tarsier_hf.training.layouts import normalize_row
from tarsier_hf.training.loading import load_rows, load_rows_with_places
from tarsier_hf.training.mixing import mixture_indices, stream_copies
from tarsier_hf.training.prompt_pools import apply_prompt_pool, load_prompt_pools
from tarsier_hf.training.row_checks import (
    PLACEHOLDERS, BadRow, BadRowsError, check_placeholders, check_row, media_paths, report_bad_rows,
    report_missing_media,
)

logger = logging.getLogger(__name__)


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
            files = json_lines_files(spec)
            if files is not None:
                check_not_empty(files)
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
        weighted (bad rows skipped, see the class docstring).

        Not `datasets.interleave_datasets` + `split_dataset_by_node`: local JSON Lines files stream here as raw
        lines (a malformed line is a bad row with its `file:line`), not as the `IterableDataset`s those take.
        """
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
                for _ in range(stream_copies(self.weights, row["source"], rng)):
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
