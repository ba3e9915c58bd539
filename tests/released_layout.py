"""The released Tarsier checkpoint layout, for tests that build tiny released checkpoints (test_convert,
test_release_parity). Facts of bytedance/tarsier (branch `tarsier`, saved with transformers 4.44): a `llava`
config.json whose architecture is `TarsierForConditionalGeneration`, the separator rows as `image_newline_idx` /
`image_new_idx`; a CLIP ViT-L/14-336 preprocessor_config.json; safetensors shards with the index that
`save_pretrained` writes (`model-0000N-of-0000M.safetensors`)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]  # CLIP ViT-L/14-336 preprocessor_config.json
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def write_released_layout(folder: Path, tensors: dict[str, torch.Tensor], shards: list[list[str]], ids: dict[str, int],
                          vision: dict, text: dict) -> None:
    """Write `tensors` split into `shards` (lists of tensor names, in order), the index, config.json and the CLIP
    preprocessor_config.json. `ids`: `image`, `pad`, `newline`, `frame_end` rows and `vocab` (table size);
    `vision` / `text`: the sub-configs (`vision["image_size"]` sizes the preprocessor)."""
    weight_map = {}
    for number, keys in enumerate(shards, start=1):
        name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        save_file({k: tensors[k].contiguous() for k in keys}, str(folder / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in keys})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["TarsierForConditionalGeneration"], "model_type": "llava", "ignore_index": -100,
        "image_token_index": ids["image"], "image_newline_idx": ids["newline"], "image_new_idx": ids["frame_end"],
        "projector_hidden_act": "gelu", "vision_feature_layer": -2, "vision_feature_select_strategy": "default",
        "vocab_size": ids["vocab"], "pad_token_id": ids["pad"], "torch_dtype": "float32",
        "vision_config": vision, "text_config": {**text, "vocab_size": ids["vocab"], "pad_token_id": ids["pad"]},
    }, indent=2))
    size = vision["image_size"]
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "crop_size": {"height": size, "width": size},
        "size": {"shortest_edge": size}, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "do_rescale": True, "image_mean": CLIP_MEAN, "image_std": CLIP_STD, "resample": 3, "rescale_factor": 1 / 255,
    }))
