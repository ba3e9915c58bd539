"""The video-aware collator: conversations -> padded Tarsier training batches (TRL's collator handles only images).

It runs inside the DataLoader workers, so frame decoding (PyAV) and preprocessing overlap with the training step.
Per sample it:

1. decodes every video and image of the conversation and samples frames by the stage's policy
   (`processing_tarsier.load_video` / `load_image`);
2. renders the conversation with the processor's chat template and tokenizes it, getting the assistant-token mask
   from the template's `{% generation %}` markers;
3. expands each `<video>` into the runs of its sampled frames and each `<image>` into one run
   (`TarsierProcessor.frame_token_ids`, the layout of docs/design.md);
4. sets `labels` to the input ids on assistant tokens and `-100` everywhere else (system, user, visual runs).

Samples whose media cannot be read are replaced by other rows drawn from the dataset, counted in the batch key
`skipped_samples` and logged (with `fail_fast=True` the first bad file raises instead). Samples longer than
`max_length` after expansion are skipped the same way (`on_too_long="skip"`, counted in `skipped_too_long`) or
raise (`on_too_long="error"`); truncation is never applied, because it would cut visual runs or the answer.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

try:
    from processing_tarsier import load_image, load_video
except ImportError as error:  # pragma: no cover - the repo root must be importable
    raise ImportError("tarsier_hf.training.collator needs processing_tarsier.py from the repository root on sys.path") from error


logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


class SampleTooLongError(ValueError):
    """A sample is longer than `max_length` after its visual placeholders are expanded."""


class MediaError(RuntimeError):
    """A video or image of a sample cannot be read; the message names the file and the cause."""


@dataclass
class FramePolicy:
    """
    How frames are sampled from each video (paper section 3.2 and Appendix A).

    Args:
        sampling: `"random_segments"` (stage 1: split into n segments, one random frame each), `"instruction"`
            (stage 2: first and last frame plus evenly spaced ones; 16 frames for `complex_sources`, 8 otherwise),
            `"uniform"` or `"fps"`.
        num_frames: `[n]` or an inclusive range `[low, high]` (random segments draws n per sample, e.g. `[8, 32]`).
        complex_sources: sources whose clips count as complex (16 frames under `"instruction"`).
        fps / max_frames: parameters of the `"fps"` policy.
    """

    sampling: str = "uniform"
    num_frames: Sequence[int] = (8,)
    complex_sources: Sequence[str] = ()
    fps: float | None = None
    max_frames: int = 64

    def load_kwargs(self, source: str | None) -> dict:
        frames = list(self.num_frames)
        if not frames or len(frames) > 2:
            raise ValueError(f"num_frames must be one count or a [low, high] range, got {frames}")
        if len(frames) == 2 and self.sampling != "random_segments":
            raise ValueError(f"a num_frames range {frames} only makes sense with sampling='random_segments'")
        return {
            "policy": self.sampling,
            "num_frames": tuple(frames) if len(frames) == 2 else int(frames[0]),
            "fps": self.fps,
            "max_frames": self.max_frames,
            "complex_clip": source in set(self.complex_sources),
        }


@dataclass
class TarsierVideoCollator:
    """
    Turn normalised conversation rows (see `tarsier_hf.training.data`) into a Tarsier batch.

    Args:
        processor: a `TarsierProcessor` (tokenizer, image processor, chat template with `{% generation %}`).
        frame_policy: the stage's `FramePolicy`.
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
        - `attention_mask` `(B, L)` int64;
        - `labels` `(B, L)` int64, `-100` outside assistant turns and on padding;
        - `pixel_values` `(F, 3, S, S)` float32, all frames of the batch in sample order (`F` may be 0);
        - `num_frames` `(B,)` int64;
        - `skipped_samples`, `skipped_too_long` `()` int64 counts (popped by `TarsierSFTTrainer` before the model).
    """

    processor: Any
    frame_policy: FramePolicy = field(default_factory=FramePolicy)
    max_length: int | None = None
    on_too_long: str = "skip"
    fail_fast: bool = False
    dataset: Any = None
    skip_log: str | None = None
    seed: int = 0
    max_replacements: int = 64
    rank: int = 0

    def __post_init__(self):
        if self.on_too_long not in ("skip", "error"):
            raise ValueError(f"on_too_long must be 'skip' or 'error', got {self.on_too_long!r}")
        template = self.processor.chat_template or ""
        if "generation" not in template:
            raise ValueError(
                "the processor's chat template has no {% generation %} markers, so assistant tokens cannot be told "
                "apart; use one of processing_tarsier.CHAT_TEMPLATES (--chat_template vicuna|mistral|yi|chatml)"
            )
        self._rng: np.random.Generator | None = None
        self._worker: int | None = None
        self._known_bad: set[int] = set()  # mixture indices that failed in this worker: never drawn as replacements

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

    def _load_media(self, row: dict, rng: np.random.Generator) -> list[np.ndarray]:
        """Frames of every visual item, in conversation order: a list of `(n_i, H, W, 3)` uint8 arrays."""
        kwargs = self.frame_policy.load_kwargs(row.get("source"))
        media = []
        for message in row["messages"]:
            for item in message["content"]:
                if item["type"] == "text":
                    continue
                name = item.get("path") or f"{len(item['paths'])} frame files from {item['paths'][0]}"
                try:
                    if item["type"] == "image":
                        media.append(load_image(item["path"])[None])
                    else:
                        media.append(load_video(item.get("path") or item["paths"], rng=rng, **kwargs).frames)
                except Exception as error:  # noqa: BLE001 - any decoder failure skips the sample
                    raise MediaError(f"{name}: {type(error).__name__}: {error}") from error
        return media

    def encode(self, row: dict, rng: np.random.Generator | None = None) -> dict:
        """
        Encode one normalised row.

        Returns:
            `{"input_ids": (L,), "labels": (L,), "pixel_values": (n, 3, S, S), "num_frames": int}`.

        Raises:
            MediaError: a video or image cannot be read.
            SampleTooLongError: the expanded sample is longer than `max_length`.
        """
        rng = rng if rng is not None else self._generator()
        media = self._load_media(row, rng)
        tokenizer = self.processor.tokenizer
        rendered = tokenizer.apply_chat_template(
            row["messages"],
            chat_template=self.processor.chat_template,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
        )
        ids, assistant = rendered["input_ids"], rendered["assistant_masks"]
        if not any(assistant):
            raise ValueError(f"row idx={row.get('idx')}: the chat template marks no assistant tokens")
        frame_run = self.processor.frame_token_ids()
        video_id, image_id = self.processor.video_token_id, self.processor.image_token_id
        input_ids: list[int] = []
        labels: list[int] = []
        visual = iter(media)
        used = 0
        for token, is_assistant in zip(ids, assistant):
            if token in (video_id, image_id):
                frames = next(visual, None)
                if frames is None:
                    raise ValueError(f"row idx={row.get('idx')}: more visual placeholders than videos/images")
                used += 1
                run = frame_run * len(frames)
                input_ids.extend(run)
                labels.extend([IGNORE_INDEX] * len(run))
            else:
                input_ids.append(token)
                labels.append(token if is_assistant else IGNORE_INDEX)
        if used != len(media):
            raise ValueError(
                f"row idx={row.get('idx')}: {len(media)} videos/images but {used} placeholders after templating"
            )
        if self.max_length is not None and len(input_ids) > self.max_length:
            raise SampleTooLongError(
                f"row idx={row.get('idx')} (source {row.get('source')}): {len(input_ids)} tokens after expanding "
                f"{sum(len(m) for m in media)} frames x {len(frame_run)} tokens, above max_length={self.max_length}"
            )
        frames = [frame for item in media for frame in item]
        if frames:
            pixel_values = self.processor.preprocess_frames(frames)
        else:
            size = self.processor.image_size
            pixel_values = torch.zeros((0, 3, size, size), dtype=torch.float32)
        return {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "pixel_values": pixel_values,
            "num_frames": len(frames),
        }

    # -- skipping ------------------------------------------------------------------------------------------------

    def _record_skip(self, row: dict, reason: str) -> None:
        logger.warning("skipping sample idx=%s (source %s): %s", row.get("idx"), row.get("source"), reason)
        if row.get("mix_index") is not None:
            self._known_bad.add(int(row["mix_index"]))
        if self.skip_log:
            line = json.dumps({"idx": row.get("idx"), "source": row.get("source"), "reason": reason, "rank": self.rank})
            with open(self.skip_log, "a", encoding="utf-8") as handle:
                handle.write(line + "\n")

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
            if set(row) == {"row"}:
                row = row["row"]
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
        rows = [row["row"] if set(row) == {"row"} else row for row in rows]
        if any("messages" not in row for row in rows):
            raise ValueError(
                f"the collator got rows without 'messages' (keys: {sorted(rows[0])}): the Trainer dropped the columns "
                "it does not know, or TRL tokenised the rows as text. With a plain SFTTrainer use "
                "SFTConfig(remove_unused_columns=False, dataset_kwargs={'skip_prepare_dataset': True}) "
                "(training.arguments.video_sft_config(...) returns one)"
            )
        # Encode the given rows first, so that their failures are known before replacements are drawn.
        encoded = [self._try_encode(row, rng, counts) for row in rows]
        missing = sum(e is None for e in encoded)
        encoded = [e for e in encoded if e is not None]
        encoded += [e for e in (self._replacement(rng, counts) for _ in range(missing)) if e is not None]
        if not encoded:
            raise RuntimeError("every sample of the batch was skipped and no dataset is set to draw replacements")
        pad_id = self.processor.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.processor.tokenizer.eos_token_id
        length = max(len(e["input_ids"]) for e in encoded)
        batch_size = len(encoded)
        input_ids = torch.full((batch_size, length), pad_id, dtype=torch.long)
        labels = torch.full((batch_size, length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((batch_size, length), dtype=torch.long)
        for i, e in enumerate(encoded):
            n = len(e["input_ids"])
            input_ids[i, :n] = e["input_ids"]
            labels[i, :n] = e["labels"]
            attention_mask[i, :n] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "pixel_values": torch.cat([e["pixel_values"] for e in encoded]),
            "num_frames": torch.tensor([e["num_frames"] for e in encoded], dtype=torch.long),
            "skipped_samples": torch.tensor(counts["skipped_samples"]),
            "skipped_too_long": torch.tensor(counts["skipped_too_long"]),
        }
