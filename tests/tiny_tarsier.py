"""Tiny random Tarsier configs and hand-expanded prompts for model tests (no processor involved)."""

from __future__ import annotations

import torch

from configuration_tarsier import TarsierConfig

IMAGE, VIDEO, NEWLINE, FRAME_END = 100, 101, 102, 103
VOCAB = 128


def tiny_config(vision: str = "clip", text: str = "llama", **overrides) -> TarsierConfig:
    """A Tarsier config small enough for CPU tests: 28 px frames of 2x2 patches, a 2-layer LLM."""
    if vision == "clip":
        vision_config = dict(
            model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, image_size=28, patch_size=14,
        )
        strategy = "default"
    else:
        vision_config = dict(
            model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, image_size=28, patch_size=14,
        )
        strategy = "full"
    text_config = dict(
        model_type=text, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=512,
    )
    kwargs = dict(
        vision_config=vision_config, text_config=text_config, image_token_id=IMAGE, video_token_id=VIDEO,
        image_newline_token_id=NEWLINE, frame_end_token_id=FRAME_END, vision_feature_select_strategy=strategy,
    )
    kwargs.update(overrides)
    return TarsierConfig(**kwargs)


def frame_run(config: TarsierConfig) -> list[int]:
    """Token ids of one frame, laid out as the processor does (see docs/design.md)."""
    rows, cols = config.patch_grid
    if not config.use_frame_separators:
        return [config.image_token_id] * config.num_patches_per_frame
    return ([config.image_token_id] * cols + [config.image_newline_token_id]) * rows + [config.frame_end_token_id]


def sample_ids(config: TarsierConfig, num_frames: int, prefix=(1, 7, 8), suffix=(9, 10, 11)) -> list[int]:
    """`prefix + frames + suffix` token ids for one sample with `num_frames` frames."""
    return list(prefix) + frame_run(config) * num_frames + list(suffix)


def left_pad(sequences: list[list[int]], pad_id: int = 0) -> tuple[torch.LongTensor, torch.LongTensor]:
    """Left-pad id lists into `(input_ids, attention_mask)` of shape `(batch, max_len)`."""
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, length - len(seq):] = torch.tensor(seq)
        mask[row, length - len(seq):] = 1
    return ids, mask
