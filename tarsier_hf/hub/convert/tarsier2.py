"""Convert a released Tarsier2 checkpoint (Tarsier2-Recap-7b, Tarsier2-7b-0115) to a standard Qwen2-VL folder, and back.

    # released layout -> a Qwen2-VL folder: the model loads with transformers' own Qwen2VLForConditionalGeneration /
    # AutoModelForImageTextToText and the processor with AutoProcessor as Qwen2VLProcessor (no remote code; it
    # serves as plain Qwen2-VL); AutoProcessor with trust_remote_code=True, or this repository, gives the
    # torchvision-free, release-exact Tarsier2Processor that travels with the folder
    tarsier-convert --model_name_or_path Tarsier2-Recap-7b --output_dir tarsier2-recap-7b-hf
    # the Qwen2-VL folder -> the released layout (loadable by bytedance/tarsier's own code)
    tarsier-convert --model_name_or_path tarsier2-recap-7b-hf --output_dir Tarsier2-Recap-7b-released --export

Tarsier2 is Qwen2-VL-7B-Instruct fine-tuned: the weights are Qwen2-VL's tensors under other names, so both
directions rename them shard by shard (`shards.stream_shards`: one shard in memory, same partition, dtype and
bytes) and rewrite the config; nothing is recomputed.

Facts of the released layout (each read from public code; `tests/tarsier2_release.py` writes them out):

- bytedance/tarsier, branch `tarsier2`, `models/modeling_tarsier.py`: config.json is a `LlavaConfig`
  (`model_type` "llava", architecture `TarsierForConditionalGeneration`) whose `text_config` is a complete Qwen2-VL
  config (`model_type` "qwen2_vl", its vision config inside) and whose `vision_config` is the Qwen2-VL vision
  config; `image_token_index` is the id whose positions receive the vision features (`<|image_pad|>`). The model
  holds `vision_tower` (Qwen2-VL's vision transformer, merger included) and `language_model` (a causal LM with
  `model.*` and `lm_head`), so the weights are `vision_tower.*`, `language_model.model.*`,
  `language_model.lm_head.*`: transformers 5.x names them `model.visual.*`, `model.language_model.*`, `lm_head.*`.
- same branch, `models/modeling_qwen2_vl_fast.py`: the release's Qwen2-VL config classes keep `attn_implementation`
  (default `"flash_attention_2"`, the only one its decoder layer accepts) as an attribute, so a config it saves
  stores it; transformers 5.x reads that key (or `_attn_implementation`) as a request for flash-attention and
  refuses to load without the flash-attn package. The converter drops these keys (the converted model loads with
  transformers' default attention); `--export` writes `attn_implementation: "flash_attention_2"` back.
- same branch, `requirements.txt`: transformers 4.47.0, whose `Qwen2VLConfig` is flat (text keys at the top,
  `rope_theta`, `rope_scaling` with `mrope_section`, `vision_config` of `model_type` "qwen2_vl") and whose
  `Qwen2VLImageProcessor` saves `min_pixels` / `max_pixels` (also as `size`): what `--export` writes.
- same branch, `dataset/tarsier_processor.py`: prompts are rendered with the checkpoint's own chat template, every
  image and video as one `<|vision_start|>` ... `<|vision_end|>` run of `num_vision_tokens` `<|image_pad|>`
  tokens (a video is one run over all its frames; the model replaces `image_token_index` positions and
  `get_rope_index` counts `<|image_pad|>` runs with one grid per image or video). A standard Qwen2-VL prompt gives
  a video one `<|video_pad|>` that the processor expands to the same count, and transformers' Qwen2-VL embeds
  `<|video_pad|>` runs with `video_grid_thw` through the same vision tower and M-RoPE grid as `<|image_pad|>`
  runs with `image_grid_thw`. So the converted folder carries a Qwen2-VL ChatML template, checked at conversion
  to render exactly what the checkpoint's template renders apart from the pad token of a video run
  (`check_chat_template`); `--export` writes the release's form of it.
- vLLM (`vllm/model_executor/models/qwen2_vl.py`, `Tarsier2ForConditionalGeneration`, before its removal): reads
  the same folder as Qwen2-VL with the llava config's `text_config`, `vision_tower.` -> `visual.`, and a preprocessor
  `size` of `{"min_pixels", "max_pixels"}` (`Tarsier2ImageProcessor`).

Read from the checkpoint, never assumed: every token id (`image_token_index`, the text config's
`image_token_id` / `video_token_id` / `vision_start_token_id` / `vision_end_token_id`, each checked against the
tokenizer), the vocabulary size, the chat template (`chat_template.jinja`, `chat_template.json` or the tokenizer's),
its default system prompt, `min_pixels` / `max_pixels` and the shard names.

Not readable here (the Hub files are not public text), so kept rather than rebuilt: the released config.json
itself. Under transformers 4.47, `AutoModel.from_config` maps a vision config of `model_type` "qwen2_vl" to the text
model `Qwen2VLModel`, so the release's `TarsierForConditionalGeneration` can only build its vision tower from an
`auto_map` the released vision config carries (`LlavaConfig` resolves `auto_map["AutoConfig"]` as
"repo--module.Class"), whose value is unknown. The converted folder keeps the released config.json verbatim as
`RELEASED_CONFIG_FILE` (transformers never reads it), and `--export` writes it back with every value that the
Qwen2-VL config determines taken from the Qwen2-VL config (so a resized vocabulary is exported as resized).
"""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub.errors import StrictDataclassError
from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

from processing_tarsier2 import build_tarsier2_processor

from tarsier_hf.hub.checkpoint import CheckpointError, read_json
from tarsier_hf.hub.convert.folders import CARRIED_FILES, copy_present, load_tokenizer, prepare_output, write_json
from tarsier_hf.hub.convert.shards import check_weights_fit, list_shards, stream_shards, tensor_shapes
from tarsier_hf.hub.convert.tarsier2_layout import (ATTENTION_KEYS, is_converted_tarsier2, is_released_tarsier2,
                                                    overlay, qwen2vl_config_from_released, qwen2vl_to_released,
                                                    read_released_tarsier2_config, released_config_from_qwen2vl,
                                                    released_to_qwen2vl, released_tokenizer_config, without)
from tarsier_hf.hub.convert.tarsier2_processor import (PREPROCESSOR_FILE, check_chat_template, check_token_ids,
                                                       chatml_template, default_system_prompt, read_chat_template,
                                                       read_pixel_bounds)
from tarsier_hf.hub.convert.tarsier_processor import CLIP_MEAN, CLIP_STD

# The released config.json, kept beside a converted folder's config.json for --export.
RELEASED_CONFIG_FILE = "tarsier2_released_config.json"
# Tokenizer files an export copies as they are (tokenizer_config.json is rewritten for transformers 4.47).
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "special_tokens_map.json", "added_tokens.json")
# transformers 4.47 Qwen2VLImageProcessor fields besides the pixel bounds (Qwen2-VL's, as the release saved them).
QWEN2VL_IMAGE_PROCESSOR = {
    "image_processor_type": "Qwen2VLImageProcessor", "do_convert_rgb": True, "do_normalize": True, "do_rescale": True,
    "do_resize": True, "image_mean": CLIP_MEAN, "image_std": CLIP_STD, "resample": 3, "rescale_factor": 1 / 255,
}


# ----------------------------------------------------------------------------------------------------------------
# The two directions
# ----------------------------------------------------------------------------------------------------------------


def convert_released_tarsier2(input_dir, output_dir, overwrite: bool = False) -> Path:
    """Released Tarsier2 folder -> a standard Qwen2-VL folder: config.json (`qwen2_vl`, no attention request),
    `model.visual.*` / `model.language_model.*` / `lm_head.*` shards, the processor (the tokenizer, the checked
    ChatML template, the checkpoint's min / max pixels; written by `Tarsier2Processor.save_pretrained` as a plain
    Qwen2-VL processor config whose top-level `auto_map` alone names the travelling `Tarsier2Processor`, see
    `processing_tarsier2`), the generation config and the release's README; the released config.json is kept as
    `RELEASED_CONFIG_FILE`. Returns the output path."""
    source, output = Path(input_dir), Path(output_dir)
    released = read_released_tarsier2_config(source)
    config = qwen2vl_config_from_released(released, str(source / "config.json"))
    shards = list_shards(source)
    check_weights_fit(config, tensor_shapes(shards, released_to_qwen2vl), str(source), Qwen2VLForConditionalGeneration)
    tokenizer = load_tokenizer(source)
    check_token_ids(config, tokenizer, str(source / "config.json"))
    template, template_source = read_chat_template(source, tokenizer)
    ours = chatml_template(default_system_prompt(tokenizer, template, template_source), released_vision=False)
    check_chat_template(tokenizer, template, ours, template_source)
    min_pixels, max_pixels = read_pixel_bounds(source)
    processor = build_tarsier2_processor(tokenizer, ours, min_pixels=min_pixels, max_pixels=max_pixels)

    prepare_output(output, overwrite, source)
    stream_shards(shards, output, released_to_qwen2vl, "converting shards")
    config.save_pretrained(output)
    write_json(output / RELEASED_CONFIG_FILE, released)
    processor.save_pretrained(output)
    copy_present(source, output, CARRIED_FILES)
    return output


def export_released_tarsier2(input_dir, output_dir, overwrite: bool = False) -> Path:
    """A Qwen2-VL folder -> the released Tarsier2 layout: config.json (llava, flat 4.47 Qwen2-VL `text_config`,
    `attn_implementation: "flash_attention_2"`, over the kept `RELEASED_CONFIG_FILE` when the folder has one),
    `vision_tower.*` / `language_model.*` shards, the tokenizer as 4.47 reads it, `chat_template.json` (the
    release's form of the folder's template), a 4.47 `Qwen2VLImageProcessor` `preprocessor_config.json`, the
    generation config and README. Returns the output path."""
    source, output = Path(input_dir), Path(output_dir)
    path = source / "config.json"
    saved = read_json(path)
    if not is_converted_tarsier2(saved):
        raise CheckpointError(f"{path}: model_type is {saved.get('model_type')!r}, expected 'qwen2_vl' (export "
                              "writes a Qwen2-VL folder back to the released Tarsier2 layout)")
    try:
        config = Qwen2VLConfig.from_dict(without(saved, ATTENTION_KEYS))
    except (ValueError, TypeError, StrictDataclassError) as error:
        raise CheckpointError(f"{path}: not a valid Qwen2-VL config ({error})") from None
    released = released_config_from_qwen2vl(config)
    if (source / RELEASED_CONFIG_FILE).is_file():
        released = overlay(read_json(source / RELEASED_CONFIG_FILE), released)
    shards = list_shards(source)
    check_weights_fit(config, tensor_shapes(shards, lambda name, _: name), str(source),
                      Qwen2VLForConditionalGeneration)
    tokenizer = load_tokenizer(source)
    check_token_ids(config, tokenizer, str(path))
    template, template_source = read_chat_template(source, tokenizer)
    released_template = chatml_template(default_system_prompt(tokenizer, template, template_source),
                                        released_vision=True)
    min_pixels, max_pixels = read_pixel_bounds(source)
    tokenizer_config = released_tokenizer_config(read_json(source / "tokenizer_config.json"))

    prepare_output(output, overwrite, source)
    stream_shards(shards, output, qwen2vl_to_released, "exporting shards")
    write_json(output / "config.json", released)
    copy_present(source, output, TOKENIZER_FILES)
    write_json(output / "tokenizer_config.json", tokenizer_config)
    write_json(output / "chat_template.json", {"chat_template": released_template})
    vision = config.vision_config
    preprocessor = {
        **QWEN2VL_IMAGE_PROCESSOR, "min_pixels": min_pixels, "max_pixels": max_pixels,
        "size": {"min_pixels": min_pixels, "max_pixels": max_pixels}, "patch_size": vision.patch_size,
        "temporal_patch_size": vision.temporal_patch_size, "merge_size": vision.spatial_merge_size,
    }
    write_json(output / PREPROCESSOR_FILE, preprocessor)
    copy_present(source, output, CARRIED_FILES)
    return output


# ----------------------------------------------------------------------------------------------------------------
# tarsier-convert
# ----------------------------------------------------------------------------------------------------------------


def handles(folder, export: bool) -> bool:
    """Whether `tarsier-convert` hands `folder` to this module: a released Tarsier2 config.json (Qwen2-VL or
    Qwen2.5-VL underneath, the latter refused with its reason) or, with `--export`, a Qwen2-VL one. A folder
    without a readable config.json is left to the Tarsier converter, which reports it."""
    path = Path(folder) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return is_converted_tarsier2(config) if export else is_released_tarsier2(config)


def run(input_dir, output_dir, export: bool, chat_template: str = "auto", overwrite: bool = False) -> Path:
    """`tarsier-convert` for Tarsier2 folders (`chat_template` must stay "auto": the checkpoint has its own)."""
    if chat_template != "auto":
        raise CheckpointError(f"--chat_template {chat_template} applies to Tarsier-7b/34b; a Tarsier2 folder carries "
                              "its own template")
    if export:
        return export_released_tarsier2(input_dir, output_dir, overwrite=overwrite)
    return convert_released_tarsier2(input_dir, output_dir, overwrite=overwrite)
