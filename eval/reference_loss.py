"""Does the model read the video? Teacher-forced loss of reference answers under the right and a wrong video.

For every row (a conversation whose user turn holds one video and whose assistant turn is the reference), the
model scores the reference token by token twice: once with the row's own video and once with the video of
another row (row `i` gets the video of row `(i + shift) % n`). A model that ignores the frames gives both the
same loss; the gap is how many nats per token the frames are worth. It complements generation metrics when a
model is still weak: a zero event F1 can hide a model that has learnt some of what the video shows.

Tokens are scored exactly as in training: the rows go through the processor's `apply_chat_template` with
`return_assistant_tokens_mask=True` (the path of the training collator and of inference: chat template,
`<video>` expansion, labels on assistant tokens only), with the paper's uniform inference sampling.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from frame_sampling_tarsier import UniformSampling

IGNORE_INDEX = -100


@dataclass
class ScoredReference:
    """Per-token negative log-likelihoods of one reference: `tokens[i]` (decoded text) cost `nll[i]` nats."""

    idx: str
    video: str
    tokens: list[str]
    nll: list[float]

    @property
    def mean_nll(self) -> float:
        return sum(self.nll) / max(1, len(self.nll))


def _video_of(row: dict) -> str:
    videos = [item for message in row["messages"] if isinstance(message["content"], list)
              for item in message["content"] if item["type"] == "video"]
    if len(videos) != 1 or "path" not in videos[0]:
        raise ValueError(f"row idx={row.get('idx')}: reference loss needs exactly one video (with a 'path') per row, "
                         f"got {len(videos)}")
    return videos[0]["path"]


def _with_video(row: dict, video: Any) -> dict:
    """The row's messages with its video block reading `video` (a path, or frames as the processor takes them)."""
    block = {"type": "video", "path": video} if isinstance(video, str) else {"type": "video", "video": video}
    return [{**message, "content": [block if item["type"] == "video" else item for item in message["content"]]}
            if isinstance(message["content"], list) else message for message in row["messages"]]


@torch.inference_mode()
def score_references(
    model,
    processor,
    rows: Sequence[dict],
    video_root: str | None = None,
    num_frames: int = 8,
    shift: int = 0,
    batch_size: int = 8,
    videos: Mapping[str, Any] | None = None,
) -> list[ScoredReference]:
    """
    Teacher-forced per-token loss of each row's assistant turn.

    Args:
        model: a video model of any family (`tarsier_hf.families`; any device, evaluated in its current dtype).
        processor: its processor (a chat template with `{% generation %}` markers).
        rows: conversation rows `{"messages": [...], "idx": ...}` with one `{"type": "video", "path": ...}` block
            each (relative paths under `video_root`).
        num_frames: frames per video, sampled uniformly with the first and last frame included (`UniformSampling`).
        shift: `0` scores each row with its own video; `k > 0` gives row `i` the video of row `(i + k) % n`.
        batch_size: rows per forward pass.
        videos: video inputs by path (e.g. in-memory `(T, H, W, 3)` clips), used instead of reading those paths.

    Returns:
        One `ScoredReference` per row, in order, naming the video that was actually used.
    """
    rows = list(rows)
    if not rows:
        raise ValueError("score_references needs at least one row")
    if shift and shift % len(rows) == 0:
        raise ValueError(f"shift={shift} would give each of the {len(rows)} rows its own video: an other-video score "
                         "needs at least two rows and a shift that is not a multiple of their number")
    paths = [_video_of(row) for row in rows]
    paths = [paths[(i + shift) % len(rows)] for i in range(len(rows))]
    if video_root is not None:
        paths = [p if os.path.isabs(p) or (videos and p in videos) else os.path.join(video_root, p) for p in paths]
    conversations = [_with_video(row, videos[p] if videos and p in videos else p) for row, p in zip(rows, paths)]
    tokenizer = processor.tokenizer
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    model.eval()
    scored: list[ScoredReference] = []
    for start in range(0, len(rows), batch_size):
        batch = processor.apply_chat_template(
            conversations[start : start + batch_size], tokenize=True, return_dict=True,
            return_assistant_tokens_mask=True, return_tensors="pt",
            processor_kwargs={"frame_sampling": UniformSampling(num_frames), "padding_side": "right"},
        )
        labels = torch.where(batch["assistant_masks"].bool(), batch["input_ids"], IGNORE_INDEX)
        inputs = {key: value.to(device, dtype) if value.is_floating_point() else value.to(device)
                  for key, value in batch.items() if isinstance(value, torch.Tensor) and key != "assistant_masks"}
        targets = labels[:, 1:]  # the token each position predicts
        mask = targets != IGNORE_INDEX
        keep = mask.any(0).nonzero()[:, 0]  # positions that predict a labelled token in some row
        logits = model(**inputs, logits_to_keep=keep.to(device), use_cache=False).logits.float()  # (B, K, vocab)
        nll = F.cross_entropy(logits.transpose(1, 2), targets[:, keep].to(device), reduction="none",
                              ignore_index=IGNORE_INDEX).cpu()  # (B, K)
        for offset, (ids, losses, labelled) in enumerate(zip(targets[:, keep], nll, mask[:, keep])):
            scored.append(ScoredReference(
                idx=str(rows[start + offset].get("idx")), video=paths[start + offset],
                tokens=[tokenizer.decode([i]) for i in ids[labelled].tolist()],
                nll=[round(float(v), 5) for v in losses[labelled]],
            ))
    return scored


def mean_token_nll(scored: Sequence[ScoredReference]) -> float:
    """Mean loss over all scored tokens (token-weighted, as a training loss is)."""
    total = sum(len(s.nll) for s in scored)
    if total == 0:
        raise ValueError("no reference tokens were scored")
    return sum(sum(s.nll) for s in scored) / total


def nll_by_class(
    own: Sequence[ScoredReference], other: Sequence[ScoredReference], classify: Callable[[list[str]], list[str]]
) -> dict[str, dict]:
    """Mean loss per token class with the own and with the other video.

    Args:
        own, other: `score_references` results for the same rows (shift 0 and shift k).
        classify: maps a reference's tokens to one class name per token (e.g. `tarsier_hf.dream_s.word_classes`).

    Returns:
        `{class: {"own_video": mean nats, "other_video": mean nats, "tokens": count}}`, classes sorted by name.
    """
    sums: dict[str, list[float]] = {}
    for mine, theirs in zip(own, other, strict=True):
        if mine.tokens != theirs.tokens:
            raise ValueError(f"row idx={mine.idx}: own and other scores are not of the same reference")
        for kind, a, b in zip(classify(mine.tokens), mine.nll, theirs.nll, strict=True):
            total = sums.setdefault(kind, [0.0, 0.0, 0])
            total[0] += a
            total[1] += b
            total[2] += 1
    return {kind: {"own_video": a / n, "other_video": b / n, "tokens": n} for kind, (a, b, n) in sorted(sums.items())}


def own_vs_other_video(model, processor, rows: Sequence[dict], classify: Callable[[list[str]], list[str]],
                       **score_kwargs) -> dict:
    """
    The video-reliance summary: mean reference loss with each row's own video and with the next row's video,
    overall and per word class.

    Args:
        classify: maps a reference's tokens to one class per token (e.g. `tarsier_hf.dream_s.word_classes`).
        score_kwargs: passed to `score_references` (`video_root`, `num_frames`, `batch_size`, `videos`).

    Returns:
        `{"nll_own_video", "nll_other_video", "nll_by_word_class"}` (the last as `nll_by_class` returns it).
    """
    own = score_references(model, processor, rows, **score_kwargs)
    other = score_references(model, processor, rows, shift=1, **score_kwargs)
    return {"nll_own_video": mean_token_nll(own), "nll_other_video": mean_token_nll(other),
            "nll_by_word_class": nll_by_class(own, other, classify)}
