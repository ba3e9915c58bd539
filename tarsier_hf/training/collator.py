"""The video-aware collator: conversation rows -> padded training batches (TRL's collator handles only images).

It serves both video families (`tarsier_hf.families`): Tarsier (`TarsierProcessor`) and Tarsier2 / Qwen2-VL
(`Tarsier2Processor`). It runs inside the DataLoader workers, so frame decoding (PyAV) and preprocessing overlap
with the training step. Every sample goes through the processor, the one path from (conversation, frames) to model
inputs that inference and the reference loss use too: `processor.apply_chat_template(...,
return_assistant_tokens_mask=True)` samples the frames by the stage's `FrameSampling`, renders the chat template,
expands each video / image placeholder into its visual tokens and marks the assistant tokens (`{% generation %}`
markers). `labels` are the input ids on assistant tokens and `-100` everywhere else (system, user, visual tokens).
Every tensor the processor returns reaches the model: per-token ones are right-padded, the others concatenated.

Samples whose media cannot be read are replaced by other rows drawn from the dataset, counted in the batch key
`skipped_samples` and logged (with `fail_fast=True` the first bad file raises instead). Samples longer than
`max_length` after expansion are skipped the same way (`on_too_long="skip"`, counted in `skipped_too_long`) or
raise (`on_too_long="error"`); truncation is never applied, because it would cut visual runs or the answer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from tarsier_hf.jsonl import append_jsonl
from frame_sampling_tarsier import FrameSampling
from media_limits_tarsier import VideoReadError

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
# Tensors with one value per token (right-padded in a batch); every other tensor is concatenated along its first axis.
TOKEN_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "labels")


class SampleTooLongError(ValueError):
    """A sample is longer than `max_length` after its visual placeholders are expanded."""


class MediaError(RuntimeError):
    """A video or image of a sample cannot be read; the message names the file and the cause."""


def _unwrap(example: dict) -> dict:
    """The normalised row of a training example: `ConversationDataset.as_hf_dataset` gives `{"row": row, "length":
    n}`, a streamed dataset `{"row": row}`, and a `ConversationDataset` the row itself."""
    return example["row"] if "row" in example and "messages" not in example else example


@dataclass
class TarsierVideoCollator:
    """
    Turn normalised conversation rows (see `tarsier_hf.training.layouts`) into a training batch of either family.

    Args:
        processor: a `TarsierProcessor` or a `Tarsier2Processor` (its chat template with `{% generation %}`).
        frame_sampling: the stage's `FrameSampling` (paper §3.2: `RandomSegmentsSampling((8, 32))` in stage 1,
            `InstructionSampling(8)` in stage 2); `None` uses the processor's own.
        complex_sources: sources whose clips count as complex (twice the frames under `InstructionSampling`;
            `TarsierProcessor` only).
        videos: video inputs by path (e.g. frames already in memory, `(T, H, W, 3)` arrays): a row's video whose
            path is a key is read from here instead of the file system, and sampled the same way.
        max_length: maximum sequence length after expansion (`None` = no limit).
        on_too_long: `"skip"` (replace the sample, count it) or `"error"`.
        fail_fast: raise on the first unreadable video/image instead of skipping the sample.
        dataset: where replacement rows are drawn from (the training dataset); without it bad samples are dropped.
        skip_log: a JSONL file to which every skipped sample is appended (`{"idx", "source", "reason"}`).
        seed: base seed of the frame and replacement sampling (combined with the worker id).
        max_replacements: replacement draws per batch before giving up with an error (too many bad files).
        rank: this process's rank, for the skip log and the seed.

    Returns (from `__call__`): a dict of tensors
        - `input_ids` `(B, L)` int64, right-padded with the tokenizer's pad id;
        - `attention_mask` `(B, L)` int64 (and Qwen2-VL's `mm_token_type_ids` `(B, L)`), padded with 0;
        - `labels` `(B, L)` int64, `-100` outside assistant turns and on padding;
        - the processor's visual tensors, concatenated over the batch in sample order: Tarsier's `pixel_values`
          `(F, 3, S, S)` float32 (all frames; `F` may be 0) and `num_frames` `(B,)` int64; Qwen2-VL's
          `pixel_values_videos` `(P, D)` float32 and `video_grid_thw` `(V, 3)` int64 (images: `pixel_values`,
          `image_grid_thw`), absent when no sample of the batch has that kind of media;
        - `skipped_samples`, `skipped_too_long` `()` int64 counts (popped by `TarsierSFTTrainer` before the model).
    """

    processor: Any
    frame_sampling: FrameSampling | None = None
    complex_sources: Sequence[str] = ()
    videos: Mapping[str, Any] | None = None
    max_length: int | None = None
    on_too_long: str = "skip"
    fail_fast: bool = False
    dataset: Any = None
    skip_log: str | None = None
    seed: int = 0
    max_replacements: int = 64
    rank: int = 0
    _known_bad: set = field(default_factory=set, init=False, repr=False)
    # The last sample this process (DataLoader worker) encoded, repeated when a whole batch is skipped and no dataset
    # is set to draw replacements from (a streamed dataset), so that a run of bad rows never stops training.
    _last_good: dict | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        if self.on_too_long not in ("skip", "error"):
            raise ValueError(f"on_too_long must be 'skip' or 'error', got {self.on_too_long!r}")
        template = self.processor.chat_template or ""
        if "generation" not in template:
            raise ValueError(
                "the processor's chat template has no {% generation %} markers, so assistant tokens cannot be told "
                "apart; give the checkpoint a template that wraps assistant turns in them (building Tarsier from "
                "parts: --chat_template vicuna|mistral|yi|chatml)"
            )
        video_options = self.processor.valid_processor_kwargs.__annotations__["videos_kwargs"].__annotations__
        self._takes_complex_clip = "complex_clip" in video_options
        if self.complex_sources and not self._takes_complex_clip:
            raise ValueError(f"complex_sources={list(self.complex_sources)}: {type(self.processor).__name__} has no "
                             "complex_clip option (only TarsierProcessor doubles the frames of complex clips)")
        self._rng: np.random.Generator | None = None
        self._worker: int | None = None

    # -- randomness per DataLoader worker ----------------------------------------------------------------------

    def _generator(self) -> np.random.Generator:
        info = torch.utils.data.get_worker_info()
        # A worker's torch seed changes with every epoch's DataLoader iterator (and follows the trainer's seed), so
        # random-segment frames differ between epochs yet stay reproducible.
        worker = (info.id, info.seed) if info is not None else None
        if self._rng is None or worker != self._worker:
            self._rng = np.random.default_rng([self.seed, self.rank] + ([info.seed % 2**32] if info else []))
            self._worker = worker
        return self._rng

    # -- one sample ----------------------------------------------------------------------------------------------

    def _block(self, item: dict) -> dict:
        """A normalised content item as the processor takes it (a frame-file list or an in-memory clip as `video`)."""
        if item["type"] == "text":
            return item
        if "paths" in item:
            return {"type": item["type"], "video": list(item["paths"])}
        if self.videos is not None and item["path"] in self.videos:
            return {"type": item["type"], item["type"]: self.videos[item["path"]]}
        return item

    def processor_kwargs(self, row: dict, rng: np.random.Generator) -> dict:
        """The processor options of one row: the one place where the two processors' options differ.

        Both take `frame_sampling` (omitted: the processor's own), `rng` and `padding`; only `TarsierProcessor`
        takes `complex_clip` (`__post_init__` refuses `complex_sources` for a processor without it).
        """
        kwargs = {"rng": rng, "padding": False}
        if self.frame_sampling is not None:
            kwargs["frame_sampling"] = self.frame_sampling
        if self._takes_complex_clip:
            kwargs["complex_clip"] = row.get("source") in set(self.complex_sources)
        return kwargs

    def encode(self, row: dict, rng: np.random.Generator | None = None) -> dict:
        """
        Encode one normalised row with the processor.

        Returns:
            Every tensor the processor returns for the row, per-token ones (`TOKEN_KEYS`) as `(L,)`, the others as
            returned (Tarsier: `pixel_values (n, 3, S, S)`, `num_frames (1,)`; Qwen2-VL: `pixel_values_videos
            (P, D)`, `video_grid_thw (V, 3)`, ...), plus `labels (L,)`: the input ids on assistant tokens, `-100`
            elsewhere.

        Raises:
            MediaError: a video or image cannot be read.
            SampleTooLongError: the expanded sample is longer than `max_length`.
        """
        rng = rng if rng is not None else self._generator()
        messages = [{**m, "content": [self._block(item) for item in m["content"]]} for m in row["messages"]]
        try:
            out = self.processor.apply_chat_template(
                messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, return_tensors="pt",
                processor_kwargs=self.processor_kwargs(row, rng),
            )
        except (VideoReadError, OSError) as error:  # unreadable, missing or corrupt media: the message names the file
            raise MediaError(f"row idx={row.get('idx')}: {type(error).__name__}: {error}") from error
        assistant = out.pop("assistant_masks")[0]
        if not assistant.any():
            raise ValueError(f"row idx={row.get('idx')}: the chat template marks no assistant tokens")
        sample = {key: value[0] if key in TOKEN_KEYS else value
                  for key, value in out.items() if isinstance(value, torch.Tensor)}
        length = len(sample["input_ids"])
        if self.max_length is not None and length > self.max_length:
            raise SampleTooLongError(
                f"row idx={row.get('idx')} (source {row.get('source')}): {length} tokens once its videos and images "
                f"are expanded, above max_length={self.max_length}"
            )
        sample["labels"] = torch.where(assistant.bool(), sample["input_ids"], IGNORE_INDEX)
        return sample

    # -- skipping ------------------------------------------------------------------------------------------------

    def _record_skip(self, row: dict, reason: str) -> None:
        logger.warning("skipping sample idx=%s (source %s): %s", row.get("idx"), row.get("source"), reason)
        if row.get("mix_index") is not None:
            self._known_bad.add(int(row["mix_index"]))
        if self.skip_log:  # shared by the DataLoader workers and ranks: whole lines, under a lock
            append_jsonl(self.skip_log, [{"idx": row.get("idx"), "source": row.get("source"), "reason": reason,
                                          "rank": self.rank}])

    def _try_encode(self, row: dict, rng: np.random.Generator, counts: dict) -> dict | None:
        """The encoded sample, or `None` (counted and logged) when its media fail or it is too long."""
        try:
            return self.encode(row, rng)
        except MediaError as error:
            if self.fail_fast:
                raise
            counts["skipped_samples"] += 1
            self._record_skip(row, str(error))
        except SampleTooLongError as error:
            if self.on_too_long == "error":
                raise
            counts["skipped_too_long"] += 1
            self._record_skip(row, str(error))
        return None

    def _replacement(self, rng: np.random.Generator, counts: dict) -> dict | None:
        """A usable sample drawn at random from `dataset`, avoiding rows already known to fail."""
        if self.dataset is None or len(self.dataset) == 0:
            return None
        for _ in range(self.max_replacements):
            if len(self._known_bad) >= len(self.dataset):
                break
            index = int(rng.integers(len(self.dataset)))
            while index in self._known_bad:
                index = int(rng.integers(len(self.dataset)))
            row = self.dataset[index]
            row = _unwrap(row)
            row.setdefault("mix_index", index)
            sample = self._try_encode(row, rng, counts)
            if sample is not None:
                return sample
        raise RuntimeError(
            f"no usable replacement sample after {self.max_replacements} draws (unreadable videos or too long); "
            "check the data and video_root (the skipped files are logged above)"
        )

    # -- the batch -----------------------------------------------------------------------------------------------

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        rng = self._generator()
        counts = {"skipped_samples": 0, "skipped_too_long": 0}
        rows = [_unwrap(row) for row in rows]
        if any("messages" not in row for row in rows):
            raise ValueError(
                f"the collator got rows without 'messages' (keys: {sorted(rows[0])}): the Trainer dropped the columns "
                "it does not know, or TRL tokenised the rows as text. With a plain SFTTrainer use "
                "SFTConfig(remove_unused_columns=False, dataset_kwargs={'skip_prepare_dataset': True}) "
                "(tarsier_hf.training.arguments.video_sft_config(...) returns one)"
            )
        # Encode the given rows first, so that their failures are known before replacements are drawn.
        encoded = [self._try_encode(row, rng, counts) for row in rows]
        missing = sum(e is None for e in encoded)
        encoded = [e for e in encoded if e is not None]
        encoded += [e for e in (self._replacement(rng, counts) for _ in range(missing)) if e is not None]
        if not encoded and self._last_good is not None:
            logger.warning("every sample of the batch was skipped and no dataset is set to draw replacements: "
                           "repeating the last usable sample of this worker")
            encoded = [self._last_good]
        if not encoded:
            raise RuntimeError("every sample of the first batch of this worker was skipped and no dataset is set to "
                               "draw replacements: nothing to train on (the skipped files are logged above)")
        self._last_good = encoded[-1]
        batch = self.pad(encoded)
        batch.update({
            "skipped_samples": torch.tensor(counts["skipped_samples"]),
            "skipped_too_long": torch.tensor(counts["skipped_too_long"]),
        })
        return batch

    def pad(self, encoded: list[dict]) -> dict[str, torch.Tensor]:
        """Right-pad the per-token tensors to `(B, L)` (`input_ids` with the pad id, `labels` with -100, the others
        with 0) and concatenate every other tensor along its first axis, over the samples that have it."""
        pad_id = self.processor.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.processor.tokenizer.eos_token_id
        fills = {"input_ids": pad_id, "labels": IGNORE_INDEX}
        length = max(len(e["input_ids"]) for e in encoded)
        batch = {}
        for key in dict.fromkeys(k for e in encoded for k in e):
            values = [e[key] for e in encoded if key in e]
            if key in TOKEN_KEYS:
                batch[key] = torch.full((len(encoded), length), fills.get(key, 0), dtype=values[0].dtype)
                for row, value in zip(batch[key], values, strict=True):  # every sample has every per-token key
                    row[: len(value)] = value
            else:
                batch[key] = torch.cat(values)
        return batch
