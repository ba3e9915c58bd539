"""The LM head applied only where a next-token label exists (the `--loss_head plain` computation)."""

from __future__ import annotations

import torch

IGNORE_INDEX = -100


def labelled_logits(model, inputs: dict, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    Run the decoder and project onto the vocabulary only at the positions whose next token is labelled.

    Args:
        model: an unwrapped video model of either family (`TarsierForConditionalGeneration`,
            `Qwen2VLForConditionalGeneration`): its `base_model` (the decoder with the vision inputs) and its
            `get_output_embeddings()` (the LM head) are used.
        inputs: its forward inputs without `labels` (every tensor of the collator's batch, e.g. `input_ids`,
            `attention_mask`, `pixel_values`, `num_frames`; Qwen2-VL: `pixel_values_videos`, `video_grid_thw`, ...).
        labels: `(batch, seq)` token ids, `-100` where nothing is predicted.

    Returns:
        `logits (N, vocab)`, `targets (N,)` and `mask (batch, seq - 1)`: the `N` labelled positions in row-major
        order (`mask.sum(1)` of them per row), so a CPU step never projects visual or prompt positions.
    """
    hidden = model.base_model(**inputs, use_cache=False).last_hidden_state  # (batch, seq, hidden)
    targets = labels[:, 1:].to(hidden.device)  # the token each position predicts
    mask = targets != IGNORE_INDEX
    return model.get_output_embeddings()(hidden[:, :-1][mask]), targets[mask], mask
