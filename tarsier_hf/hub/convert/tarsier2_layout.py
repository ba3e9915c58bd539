"""The released Tarsier2 layout in transformers' Qwen2-VL terms: telling the layouts apart, config.json both ways,
the tokenizer config transformers 4.47 reads, and the weight names (facts in `tarsier2.py`'s docstring)."""

from __future__ import annotations

import copy
import re
from pathlib import Path

from huggingface_hub.errors import StrictDataclassError
from transformers import Qwen2VLConfig

from tarsier_hf.hub.checkpoint import CheckpointError, read_json
from tarsier_hf.hub.convert.shards import swap_prefix
from tarsier_hf.hub.convert.tarsier_layout import RELEASED_ARCHITECTURE, RELEASED_MODEL_TYPE

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
# Keys transformers 5.x writes into tokenizer_config.json that transformers 4.47 does not read (or misreads).
TOKENIZER_5X_KEYS = ("auto_map", "processor_class", "backend", "is_local", "local_files_only", "chat_template")


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


def without(config: dict, keys: tuple[str, ...]) -> dict:
    """`config` less `keys`."""
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
    text = without(copy.deepcopy(released["text_config"]), ATTENTION_KEYS + SAVED_BY_KEYS)
    vision = text.get("vision_config", released.get("vision_config"))
    text["vision_config"] = without(vision, ATTENTION_KEYS + SAVED_BY_KEYS)
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
    config = without(saved, TOKENIZER_5X_KEYS)
    extra = config.pop("extra_special_tokens", None)
    if isinstance(extra, list):
        config["additional_special_tokens"] = extra
    elif isinstance(extra, dict) and extra:
        config["extra_special_tokens"] = extra
    config["tokenizer_class"] = "Qwen2Tokenizer"
    return config


# ----------------------------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------------------------


def released_to_qwen2vl(name: str, source: str = "checkpoint") -> str | None:
    """`vision_tower.X` -> `model.visual.X`, `language_model.model.X` -> `model.language_model.X`,
    `language_model.lm_head.X` -> `lm_head.X`; rotary inverse frequencies -> None (dropped)."""
    if REBUILT_BUFFERS.search(name):
        return None
    return swap_prefix(name, RELEASED_TO_QWEN2VL, source)


def qwen2vl_to_released(name: str, source: str = "checkpoint") -> str | None:
    """Inverse of `released_to_qwen2vl`."""
    if REBUILT_BUFFERS.search(name):
        return None
    return swap_prefix(name, tuple((new, old) for old, new in RELEASED_TO_QWEN2VL), source)
