"""Qwen2-VL's multimodal rotary positions (M-RoPE) as Qwen2-VL and Tarsier2 were trained with them.

A run of visual tokens with grid `(t, h, w)` (after the 2x2 merge) takes the positions `start + (i_t, i_h, i_w)`.
What differs between library versions is where the TEXT after it resumes:

- Qwen2-VL's own code, transformers 4.45-4.5x and the Tarsier2 release (bytedance/tarsier branch `tarsier2`,
  `models/modeling_qwen2_vl_fast.py`, transformers 4.47): at the largest position of the run plus one, i.e.
  `start + max(t, h, w)`;
- transformers 5.23 (`Qwen2VLModel.get_rope_index`): at `start + max(h, w)`, whatever `t` is.

They agree while `t <= max(h, w)` (16 frames of a 16:9 clip at the release's 460,800 pixels: t 16, w 32) and
differ for long clips of small frames (64 frames under the release's per-sample budget: t 64 against h 10, w 18),
where transformers 5.23 gives the text after the video positions that the video's last frames already hold.
`use_release_rope_index(model)` makes a loaded `Qwen2VLForConditionalGeneration` compute the release's positions
(in its forward and in `generate`); the weights, the config and what `save_pretrained` writes do not change.
"""

from __future__ import annotations

import itertools
from types import MethodType

import torch


def release_rope_index(
    self,
    input_ids: torch.LongTensor,
    mm_token_type_ids: torch.IntTensor,
    image_grid_thw: torch.LongTensor | None = None,
    video_grid_thw: torch.LongTensor | None = None,
    attention_mask: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`Qwen2VLModel.get_rope_index` with the release's rule for the text after a visual run (module docstring).

    Args:
        input_ids: `(B, L)` token ids (padding where `attention_mask` is 0).
        mm_token_type_ids: `(B, L)`: 0 text, 1 image, 2 video; runs of 1 / 2 take the grids in order.
        image_grid_thw, video_grid_thw: `(N, 3)` grids of the batch's images / videos, in order of appearance.
        attention_mask: `(B, L)`; padded positions get position 0.

    Returns:
        `position_ids` `(3, B, L)` int64 and `rope_deltas` `(B, 1)` (largest position + 1 - unpadded length).
    """
    merge = self.config.vision_config.spatial_merge_size
    grids = {1: iter(image_grid_thw if image_grid_thw is not None else ()),
             2: iter(video_grid_thw if video_grid_thw is not None else ())}
    device = input_ids.device
    position_ids = torch.zeros(3, *input_ids.shape, dtype=input_ids.dtype, device=device)
    deltas = []
    for row in range(input_ids.shape[0]):
        keep = attention_mask[row].bool() if attention_mask is not None else torch.ones_like(input_ids[row], dtype=torch.bool)
        types = mm_token_type_ids[row][keep].tolist()
        pieces, start = [], 0
        for kind, run in itertools.groupby(types):
            length = len(list(run))
            if kind == 0:
                pieces.append(torch.arange(start, start + length, device=device).expand(3, -1))
                start += length
                continue
            t, h, w = (int(v) for v in next(grids[kind]))
            h, w = h // merge, w // merge
            if t * h * w != length:
                raise ValueError(f"a visual run of {length} tokens does not match its grid {(t, h * merge, w * merge)}")
            grid = torch.stack(torch.meshgrid(torch.arange(t, device=device), torch.arange(h, device=device),
                                              torch.arange(w, device=device), indexing="ij")).reshape(3, -1)
            pieces.append(grid + start)
            start += max(t, h, w)  # the run's largest position + 1
        positions = torch.cat(pieces, dim=1) if pieces else torch.zeros(3, 0, dtype=torch.long, device=device)
        position_ids[:, row, keep] = positions.to(position_ids.dtype)
        deltas.append(start - len(types))
    return position_ids, torch.tensor(deltas, device=device).unsqueeze(1)


def use_release_rope_index(model) -> None:
    """Make a loaded Qwen2-VL model (`Qwen2VLForConditionalGeneration` or `Qwen2VLModel`) place text after visual
    runs as Qwen2-VL and the Tarsier2 release do (`release_rope_index`); a no-op for other models."""
    inner = getattr(model, "model", model)
    if type(inner).__name__ == "Qwen2VLModel":
        inner.get_rope_index = MethodType(release_rope_index, inner)
