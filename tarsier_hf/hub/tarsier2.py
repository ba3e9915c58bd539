"""Convert a released Tarsier2 checkpoint (Tarsier2-Recap-7b, Tarsier2-7b-0115) to a standard Qwen2-VL folder, and back.

    # released layout -> a Qwen2-VL folder: the model loads with transformers' own Qwen2VLForConditionalGeneration /
    # AutoModelForImageTextToText and the processor with AutoProcessor as Qwen2VLProcessor (no remote code; it
    # serves as plain Qwen2-VL); AutoProcessor with trust_remote_code=True, or this repository, gives the
    # torchvision-free, release-exact Tarsier2Processor that travels with the folder
    tarsier-convert --model_name_or_path Tarsier2-Recap-7b --output_dir tarsier2-recap-7b-hf
    # the Qwen2-VL folder -> the released layout (loadable by bytedance/tarsier's own code)
    tarsier-convert --model_name_or_path tarsier2-recap-7b-hf --output_dir Tarsier2-Recap-7b-released --export

Tarsier2 is Qwen2-VL-7B-Instruct fine-tuned: the weights are Qwen2-VL's tensors under other names, so both
directions rename them shard by shard (`convert.stream_shards`: one shard in memory, same partition, dtype and
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

import copy
import json
import re
from pathlib import Path

import torch
from huggingface_hub.errors import StrictDataclassError
from jinja2 import TemplateError
from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

from processing_tarsier2 import build_tarsier2_processor

from tarsier_hf.hub.checkpoint import CheckpointError, read_json
from tarsier_hf.hub.convert import (CARRIED_FILES, CLIP_MEAN, CLIP_STD, _prepare_output, _swap_prefix,
                                     check_weights_fit, copy_present, list_shards, load_tokenizer, stream_shards,
                                     tensor_shapes, write_json)

RELEASED_MODEL_TYPE = "llava"
RELEASED_ARCHITECTURE = "TarsierForConditionalGeneration"
ARCHITECTURE = "Qwen2VLForConditionalGeneration"
# (released prefix, transformers 5.x prefix)
RELEASED_TO_QWEN2VL = (
    ("vision_tower.", "model.visual."),
    ("language_model.model.", "model.language_model."),
    ("language_model.lm_head.", "lm_head."),
)
# Rotary inverse frequencies are rebuilt at load time; a checkpoint that holds them drops them.
REBUILT_BUFFERS = re.compile(r"(^|\.)(rotary_emb|rotary_pos_emb)\.inv_freq$")
# Keys by which a saved config asks for an attention implementation (the release's: "flash_attention_2").
ATTENTION_KEYS = ("attn_implementation", "_attn_implementation", "_attn_implementation_internal",
                  "_attn_implementation_autoset")
RELEASED_ATTENTION = "flash_attention_2"
# Sub-config keys that point at the code or the folder that saved them, not at the model.
SAVED_BY_KEYS = ("auto_map", "architectures", "_name_or_path", "transformers_version")
# config.json id key -> the Qwen2-VL token it must name in the tokenizer.
TOKEN_KEYS = {
    "image_token_id": "<|image_pad|>",
    "video_token_id": "<|video_pad|>",
    "vision_start_token_id": "<|vision_start|>",
    "vision_end_token_id": "<|vision_end|>",
}
PREPROCESSOR_FILE = "preprocessor_config.json"
# The released config.json, kept beside a converted folder's config.json for --export.
RELEASED_CONFIG_FILE = "tarsier2_released_config.json"
# Tokenizer files an export copies as they are (tokenizer_config.json is rewritten for transformers 4.47).
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "special_tokens_map.json", "added_tokens.json")
# Keys transformers 5.x writes into tokenizer_config.json that transformers 4.47 does not read (or misreads).
TOKENIZER_5X_KEYS = ("auto_map", "processor_class", "backend", "is_local", "local_files_only", "chat_template")
# transformers 4.47 Qwen2VLImageProcessor fields besides the pixel bounds (Qwen2-VL's, as the release saved them).
QWEN2VL_IMAGE_PROCESSOR = {
    "image_processor_type": "Qwen2VLImageProcessor", "do_convert_rgb": True, "do_normalize": True, "do_rescale": True,
    "do_resize": True, "image_mean": CLIP_MEAN, "image_std": CLIP_STD, "resample": 3, "rescale_factor": 1 / 255,
}


# ----------------------------------------------------------------------------------------------------------------
# Telling the layouts apart
# ----------------------------------------------------------------------------------------------------------------


def is_released_tarsier2(config: dict) -> bool:
    """A released llava-style config whose language model is a Qwen2-VL family model (Tarsier2)."""
    text = config.get("text_config")
    return (config.get("model_type") == RELEASED_MODEL_TYPE and isinstance(text, dict)
            and str(text.get("model_type", "")).startswith(("qwen2_vl", "qwen2_5_vl")))


def is_converted_tarsier2(config: dict) -> bool:
    """A standard Qwen2-VL config (what `convert_released_tarsier2` writes)."""
    return config.get("model_type") == "qwen2_vl"


# ----------------------------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------------------------


def _without(config: dict, keys: tuple[str, ...]) -> dict:
    return {key: value for key, value in config.items() if key not in keys}


def read_released_tarsier2_config(folder: Path) -> dict:
    """The released config.json, checked: `llava` / `TarsierForConditionalGeneration` with a Qwen2-VL text config
    (its vision config inside it or at the top level, of Qwen2-VL's vision type)."""
    path = folder / "config.json"
    released = read_json(path)
    if released.get("model_type") != RELEASED_MODEL_TYPE:
        raise CheckpointError(f"{path}: model_type is {released.get('model_type')!r}, expected "
                              f"{RELEASED_MODEL_TYPE!r} (a released Tarsier2 checkpoint)")
    architectures = released.get("architectures") or []
    if RELEASED_ARCHITECTURE not in architectures:
        raise CheckpointError(f"{path}: architectures {architectures} do not name {RELEASED_ARCHITECTURE!r}")
    text = released.get("text_config")
    if not isinstance(text, dict):
        raise CheckpointError(f"{path}: field 'text_config' is missing or not an object")
    text_type = text.get("model_type")
    if text_type == "qwen2_5_vl":
        raise CheckpointError(f"{path}: text_config.model_type is 'qwen2_5_vl': a Qwen2.5-VL based checkpoint; "
                              "this converter handles the released Tarsier2 models, which are Qwen2-VL ('qwen2_vl')")
    if text_type != "qwen2_vl":
        raise CheckpointError(f"{path}: text_config.model_type is {text_type!r}; a Tarsier2 checkpoint nests a "
                              "Qwen2-VL config ('qwen2_vl')")
    vision = text.get("vision_config", released.get("vision_config"))
    if not isinstance(vision, dict):
        raise CheckpointError(f"{path}: no Qwen2-VL vision config (text_config.vision_config or vision_config)")
    if vision.get("model_type", "qwen2_vl") not in ("qwen2_vl", "qwen2_vl_vision"):
        raise CheckpointError(f"{path}: the vision config's model_type is {vision.get('model_type')!r}; a Tarsier2 "
                              "checkpoint holds Qwen2-VL's vision transformer ('qwen2_vl')")
    return released


def qwen2vl_config_from_released(released: dict, source: str) -> Qwen2VLConfig:
    """transformers' `Qwen2VLConfig` for a released config.json: its `text_config` (a transformers 4.47 Qwen2-VL
    config) without the keys that request flash-attention or name the release's code, its dtype, and
    `architectures = ["Qwen2VLForConditionalGeneration"]`."""
    text = _without(copy.deepcopy(released["text_config"]), ATTENTION_KEYS + SAVED_BY_KEYS)
    vision = text.get("vision_config", released.get("vision_config"))
    text["vision_config"] = _without(vision, ATTENTION_KEYS + SAVED_BY_KEYS)
    dtype = released.get("dtype", released.get("torch_dtype", text.get("dtype", text.get("torch_dtype"))))
    if dtype is not None:
        text["torch_dtype"] = dtype
    try:
        config = Qwen2VLConfig.from_dict(text)
    except (ValueError, TypeError, StrictDataclassError) as error:
        raise CheckpointError(f"{source}: text_config is not a valid Qwen2-VL config ({error})") from None
    config.architectures = [ARCHITECTURE]
    image_index = released.get("image_token_index")
    if image_index is not None and image_index != config.image_token_id:
        raise CheckpointError(f"{source}: image_token_index={image_index} differs from text_config.image_token_id="
                              f"{config.image_token_id}; the release fills image_token_index positions with vision "
                              "features, Qwen2-VL fills image_token_id positions")
    return config


def _legacy_vision_config(vision, dtype: str | None) -> dict:
    """The vision config as transformers 4.47 saves Qwen2-VL's (and the release's own class reads)."""
    return {
        "model_type": "qwen2_vl", "depth": vision.depth, "embed_dim": vision.embed_dim,
        "hidden_size": vision.hidden_size, "hidden_act": vision.hidden_act, "mlp_ratio": vision.mlp_ratio,
        "num_heads": vision.num_heads, "in_channels": vision.in_channels, "patch_size": vision.patch_size,
        "spatial_merge_size": vision.spatial_merge_size, "temporal_patch_size": vision.temporal_patch_size,
        "initializer_range": vision.initializer_range, "attn_implementation": RELEASED_ATTENTION,
        "torch_dtype": dtype,
    }


def released_config_from_qwen2vl(config: Qwen2VLConfig) -> dict:
    """The released config.json for a Qwen2-VL config (inverse of `qwen2vl_config_from_released`): a llava
    config whose `text_config` is the flat transformers 4.47 Qwen2-VL config, both vision configs the same, and
    `attn_implementation: "flash_attention_2"` where the release's classes read it."""
    text = config.text_config
    rope = dict(text.rope_parameters or {})
    if "mrope_section" not in rope:
        raise CheckpointError("config.json: text_config.rope_parameters has no mrope_section (not Qwen2-VL's M-RoPE)")
    dtype = config.dtype if config.dtype is not None else text.dtype
    dtype = str(dtype).removeprefix("torch.") if dtype is not None else None
    vision = _legacy_vision_config(config.vision_config, dtype)
    released_text = {
        "model_type": "qwen2_vl", "vocab_size": text.vocab_size, "hidden_size": text.hidden_size,
        "intermediate_size": text.intermediate_size, "num_hidden_layers": text.num_hidden_layers,
        "num_attention_heads": text.num_attention_heads, "num_key_value_heads": text.num_key_value_heads,
        "hidden_act": text.hidden_act, "max_position_embeddings": text.max_position_embeddings,
        "initializer_range": text.initializer_range, "rms_norm_eps": text.rms_norm_eps, "use_cache": text.use_cache,
        "tie_word_embeddings": bool(config.tie_word_embeddings), "rope_theta": rope["rope_theta"],
        "rope_scaling": {"type": "default", "rope_type": "default", "mrope_section": list(rope["mrope_section"])},
        "use_sliding_window": bool(text.use_sliding_window),
        "sliding_window": text.sliding_window if text.sliding_window is not None else text.max_position_embeddings,
        "max_window_layers": text.max_window_layers, "attention_dropout": text.attention_dropout,
        "spatial_merge_size": config.vision_config.spatial_merge_size,
        "bos_token_id": text.bos_token_id, "eos_token_id": text.eos_token_id, "pad_token_id": text.pad_token_id,
        "image_token_id": config.image_token_id, "video_token_id": config.video_token_id,
        "vision_start_token_id": config.vision_start_token_id, "vision_end_token_id": config.vision_end_token_id,
        "attn_implementation": RELEASED_ATTENTION, "torch_dtype": dtype, "vision_config": vision,
    }
    vision_token = getattr(config, "vision_token_id", None)
    if vision_token is not None:
        released_text["vision_token_id"] = vision_token
    return {
        "architectures": [RELEASED_ARCHITECTURE],
        "model_type": RELEASED_MODEL_TYPE,
        "image_token_index": config.image_token_id,
        # No projector: Qwen2-VL's merger is part of the vision tower (the release's `projection_head=None` branch).
        "projection_head": None,
        "ignore_index": -100,
        "torch_dtype": dtype,
        "text_config": released_text,
        "vision_config": dict(vision),
    }


# ----------------------------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------------------------


def released_to_qwen2vl(name: str, source: str = "checkpoint") -> str | None:
    """`vision_tower.X` -> `model.visual.X`, `language_model.model.X` -> `model.language_model.X`,
    `language_model.lm_head.X` -> `lm_head.X`; rotary inverse frequencies -> None (dropped)."""
    if REBUILT_BUFFERS.search(name):
        return None
    return _swap_prefix(name, RELEASED_TO_QWEN2VL, source)


def qwen2vl_to_released(name: str, source: str = "checkpoint") -> str | None:
    """Inverse of `released_to_qwen2vl`."""
    if REBUILT_BUFFERS.search(name):
        return None
    return _swap_prefix(name, tuple((new, old) for old, new in RELEASED_TO_QWEN2VL), source)


# ----------------------------------------------------------------------------------------------------------------
# Tokenizer, chat template, pixel bounds
# ----------------------------------------------------------------------------------------------------------------


def check_token_ids(config: Qwen2VLConfig, tokenizer, source: str) -> None:
    """Each config id of `TOKEN_KEYS` must be the tokenizer's id of its Qwen2-VL token and a row of the embedding
    table."""
    vocab = tokenizer.get_vocab()
    for key, token in TOKEN_KEYS.items():
        config_id = getattr(config, key)
        if token not in vocab:
            raise CheckpointError(f"{source}: the tokenizer has no {token} (Qwen2-VL's token for {key})")
        if vocab[token] != config_id:
            raise CheckpointError(f"{source}: {key}={config_id} but the tokenizer's {token} is {vocab[token]}")
        if not 0 <= config_id < config.text_config.vocab_size:
            raise CheckpointError(f"{source}: {key}={config_id} is outside the embedding table "
                                  f"(vocab_size={config.text_config.vocab_size})")


def read_chat_template(folder: Path, tokenizer) -> tuple[str, str]:
    """`(template, where it was found)`: `chat_template.jinja`, else `chat_template.json` (where transformers 4.47
    processors save it), else the tokenizer's own."""
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text(encoding="utf-8"), str(folder / "chat_template.jinja")
    if (folder / "chat_template.json").is_file():
        template = read_json(folder / "chat_template.json").get("chat_template")
        if not isinstance(template, str):
            raise CheckpointError(f"{folder / 'chat_template.json'}: no 'chat_template' string")
        return template, str(folder / "chat_template.json")
    if isinstance(tokenizer.chat_template, str):
        return tokenizer.chat_template, f"{folder}: the tokenizer's chat_template"
    raise CheckpointError(f"{folder}: no chat template (chat_template.jinja, chat_template.json or "
                          "tokenizer_config.json 'chat_template'); the release renders prompts with the checkpoint's "
                          "own template")


def chatml_template(system_prompt: str | None, released_vision: bool) -> str:
    """Qwen2-VL's ChatML chat template: a first system turn of `system_prompt` when the conversation has none (no
    system turn for None), the assistant's text and its closing `<|im_end|>` inside `{% generation %}` (for
    `return_assistant_tokens_mask`: training labels the end of turn, so a fine-tuned model stops).

    `released_vision=False` (standard Qwen2-VL): an image item becomes `<|vision_start|><|image_pad|><|vision_end|>`,
    a video item `<|vision_start|><|video_pad|><|vision_end|>`; the processor expands the pad to the item's count.
    `released_vision=True` (the release's form): every image or video item becomes `<|vision_start|>`, its
    `num_vision_tokens` `<|image_pad|>`, `<|vision_end|>` (the release's processor computes the count).
    """
    system = ("{%- if loop.first and message['role'] != 'system' -%}"
              "{{ '<|im_start|>system\\n' + " + json.dumps(system_prompt, ensure_ascii=False) + " + '<|im_end|>\\n' }}"
              "{%- endif -%}") if system_prompt is not None else ""
    if released_vision:
        vision = ("{%- if item['type'] in ('image', 'video') -%}{{ '<|vision_start|>' }}"
                  "{%- for _ in range(item['num_vision_tokens']) -%}{{ '<|image_pad|>' }}{%- endfor -%}"
                  "{{ '<|vision_end|>' }}")
    else:
        vision = ("{%- if item['type'] == 'image' -%}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
                  "{%- elif item['type'] == 'video' -%}{{ '<|vision_start|><|video_pad|><|vision_end|>' }}")
    return (
        "{%- for message in messages -%}" + system
        + "{{ '<|im_start|>' + message['role'] + '\\n' }}"
        "{%- if message['content'] is string -%}"
        "{%- if message['role'] == 'assistant' -%}{% generation %}{{ message['content'] }}{% endgeneration %}"
        "{%- else -%}{{ message['content'] }}{%- endif -%}"
        "{%- else -%}{%- for item in message['content'] -%}" + vision
        + "{%- elif item['type'] == 'text' -%}"
        "{%- if message['role'] == 'assistant' -%}{% generation %}{{ item['text'] }}{% endgeneration %}"
        "{%- else -%}{{ item['text'] }}{%- endif -%}"
        "{%- endif -%}{%- endfor -%}{%- endif -%}"
        # the assistant's end of turn is trained too (inside the mask), so a fine-tuned model learns to stop
        "{%- if message['role'] == 'assistant' -%}{% generation %}{{ '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
        "{%- else -%}{{ '<|im_end|>\\n' }}{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
    )


# Conversations rendered to compare two templates: content items as the release's processor passes them (with
# `num_vision_tokens`), a conversation with a system turn, one without, and a finished assistant turn.
PROBE_CONVERSATIONS = (
    ([{"role": "user", "content": [{"type": "video", "num_vision_tokens": 6},
                                   {"type": "text", "text": "Describe the video in detail."}]}], True),
    ([{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
      {"role": "user", "content": [{"type": "image", "num_vision_tokens": 4}, {"type": "text", "text": "What is it?"}]},
      {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]}], False),
    ([{"role": "user", "content": [{"type": "text", "text": "Hello."}]}], True),
)
VISION_RUN = re.compile(r"<\|vision_start\|>(?:<\|image_pad\|>|<\|video_pad\|>)+<\|vision_end\|>")


def _render(tokenizer, template: str, messages: list, add_generation_prompt: bool, source: str) -> str:
    try:
        return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    except (TemplateError, TypeError, ValueError, KeyError) as error:
        raise CheckpointError(f"{source}: the chat template does not render a release-style conversation "
                              f"({type(error).__name__}: {error})") from None


def default_system_prompt(tokenizer, template: str, source: str) -> str | None:
    """The system prompt a template adds when the conversation has none (None when it adds no system turn)."""
    messages = [{"role": "user", "content": [{"type": "text", "text": "Hello."}]}]
    text = _render(tokenizer, template, messages, False, source)
    match = re.match(r"<\|im_start\|>system\n(.*?)<\|im_end\|>\n", text, re.S)
    return match.group(1) if match else None


def check_chat_template(tokenizer, released: str, ours: str, source: str) -> None:
    """`ours` (standard Qwen2-VL) must render every `PROBE_CONVERSATIONS` conversation exactly as the checkpoint's
    `released` template does, once every vision run is reduced to one placeholder (the processor expands `ours`'
    runs, and a video's `<|video_pad|>` run stands for the release's `<|image_pad|>` run)."""
    for messages, add_generation_prompt in PROBE_CONVERSATIONS:
        theirs = VISION_RUN.sub("<vision>", _render(tokenizer, released, messages, add_generation_prompt, source))
        mine = VISION_RUN.sub("<vision>", _render(tokenizer, ours, messages, add_generation_prompt, source))
        if theirs != mine:
            raise CheckpointError(f"{source}: the chat template renders {theirs!r} where Qwen2-VL's ChatML renders "
                                  f"{mine!r}; the converter only carries ChatML templates over")


def read_pixel_bounds(folder: Path) -> tuple[int, int]:
    """`(min_pixels, max_pixels)` of the image processor saved in `folder`: `preprocessor_config.json` (transformers
    4.47 writes `min_pixels` / `max_pixels` and `size = {min_pixels, max_pixels}`, 5.x `size = {shortest_edge,
    longest_edge}`) or the `image_processor` of `processor_config.json`."""
    candidates = []
    if (folder / PREPROCESSOR_FILE).is_file():
        candidates.append((folder / PREPROCESSOR_FILE, read_json(folder / PREPROCESSOR_FILE)))
    if (folder / "processor_config.json").is_file():
        nested = read_json(folder / "processor_config.json").get("image_processor")
        if isinstance(nested, dict):
            candidates.append((folder / "processor_config.json", nested))
    if not candidates:
        raise CheckpointError(f"{folder}: no {PREPROCESSOR_FILE} (the image processor's min_pixels / max_pixels)")
    for path, saved in candidates:
        size = saved.get("size") if isinstance(saved.get("size"), dict) else {}
        for low, high in ((saved.get("min_pixels"), saved.get("max_pixels")),
                          (size.get("min_pixels"), size.get("max_pixels")),
                          (size.get("shortest_edge"), size.get("longest_edge"))):
            if isinstance(low, int) and isinstance(high, int):
                return low, high
    raise CheckpointError(f"{candidates[0][0]}: no min_pixels / max_pixels (nor size with them)")


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

    _prepare_output(output, overwrite, source)
    stream_shards(shards, output, released_to_qwen2vl, "converting shards")
    config.save_pretrained(output)
    write_json(output / RELEASED_CONFIG_FILE, released)
    processor.save_pretrained(output)
    copy_present(source, output, CARRIED_FILES)
    return output


def overlay(kept: dict, derived: dict) -> dict:
    """`kept` (a released config.json) with every value of `derived` (the config rebuilt from the Qwen2-VL config)
    put in, nested objects merged key by key: keys only `kept` has survive, values both have come from `derived`."""
    merged = dict(kept)
    for key, value in derived.items():
        both_objects = isinstance(value, dict) and isinstance(kept.get(key), dict)
        merged[key] = overlay(kept[key], value) if both_objects else value
    return merged


def released_tokenizer_config(saved: dict) -> dict:
    """A transformers 5.x `tokenizer_config.json` as transformers 4.47 (the release) reads it: class
    `Qwen2Tokenizer`, the extra special tokens as `additional_special_tokens`, no 5.x-only keys."""
    config = _without(saved, TOKENIZER_5X_KEYS)
    extra = config.pop("extra_special_tokens", None)
    if isinstance(extra, list):
        config["additional_special_tokens"] = extra
    elif isinstance(extra, dict) and extra:
        config["extra_special_tokens"] = extra
    config["tokenizer_class"] = "Qwen2Tokenizer"
    return config


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
        config = Qwen2VLConfig.from_dict(_without(saved, ATTENTION_KEYS))
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

    _prepare_output(output, overwrite, source)
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
