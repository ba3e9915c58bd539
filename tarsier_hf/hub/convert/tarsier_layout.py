"""The released Tarsier layout (Tarsier-7b / Tarsier-34b) in this repository's terms: weight names and config.json
(facts in `tarsier.py`'s docstring)."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Callable

from configuration_tarsier import TarsierConfig

from tarsier_hf.hub.checkpoint import CheckpointError, read_json
from tarsier_hf.hub.convert.shards import swap_prefix

logger = logging.getLogger(__name__)

RELEASED_MODEL_TYPE = "llava"
RELEASED_ARCHITECTURE = "TarsierForConditionalGeneration"
# Defaults of the released LlavaConfig (models/modeling_tarsier.py), used only when config.json omits a key.
RELEASED_DEFAULTS = {
    "image_token_index": 32000,
    "image_newline_idx": 32002,
    "image_new_idx": 32003,
    "vision_feature_layer": -2,
    "vision_feature_select_strategy": "default",
    "projector_hidden_act": "gelu",
    "multimodal_projector_bias": True,
    "ignore_index": -100,
}
# (released prefix, our prefix), tried in order; the reverse direction uses the first pair of each of our prefixes.
# The release ran on transformers 4.44, whose CLIPVisionModel / SiglipVisionModel nest the tower under
# `vision_model.` (so its `save_pretrained` writes `vision_tower.vision_model.embeddings.*`, and vLLM's
# `tarsier.py` loads that name); transformers 5.x vision models have no such level. A flat `vision_tower.*`
# (written by earlier versions of this converter's --export) is still accepted on input.
RELEASED_TO_OURS = (
    ("vision_tower.vision_model.", "model.vision_tower."),
    ("vision_tower.", "model.vision_tower."),
    ("multi_modal_projector.", "model.multi_modal_projector."),
    ("language_model.model.", "model.language_model."),
    ("language_model.lm_head.", "lm_head."),
)
# Buffers older transformers saved with the weights but that are rebuilt at load time (CLIP position ids,
# rotary inverse frequencies): dropped, never renamed.
REBUILT_BUFFERS = re.compile(r"(^|\.)(position_ids|rotary_emb\.inv_freq)$")


def released_to_ours(name: str, source: str = "checkpoint") -> str:
    """`language_model.model.layers.0...` -> `model.language_model.layers.0...` (see `tarsier.py`'s docstring)."""
    return swap_prefix(name, RELEASED_TO_OURS, source)


def ours_to_released(name: str, source: str = "checkpoint") -> str:
    """Inverse of `released_to_ours`: `model.vision_tower.X` -> `vision_tower.vision_model.X`."""
    pairs = tuple(dict((new, old) for old, new in reversed(RELEASED_TO_OURS)).items())
    return swap_prefix(name, pairs, source)


def drop_rebuilt(rename: Callable[[str, str], str], log: bool = True) -> Callable[[str, str], str | None]:
    """`rename` that first drops `REBUILT_BUFFERS` (returns None for them, logged with `log`)."""

    def wrapped(name: str, source: str) -> str | None:
        if REBUILT_BUFFERS.search(name):
            if log:
                logger.info("%s: dropping %s (a buffer rebuilt at load time)", source, name)
            return None
        return rename(name, source)

    return wrapped


def read_released_config(folder: Path) -> dict:
    """Load and check the released `config.json` (model_type "llava", a Tarsier architecture)."""
    path = folder / "config.json"
    released = read_json(path)
    model_type = released.get("model_type")
    if model_type == "tarsier":
        raise CheckpointError(f"{path}: is already in this repository's format (model_type 'tarsier'); use --export")
    if model_type != RELEASED_MODEL_TYPE:
        raise CheckpointError(f"{path}: model_type is {model_type!r}, expected {RELEASED_MODEL_TYPE!r}")
    architectures = released.get("architectures") or []
    if RELEASED_ARCHITECTURE not in architectures:
        raise CheckpointError(f"{path}: architectures {architectures} do not name {RELEASED_ARCHITECTURE!r}")
    for key in ("vision_config", "text_config"):
        if not isinstance(released.get(key), dict):
            raise CheckpointError(f"{path}: field {key!r} is missing or not an object")
    text_type = released["text_config"].get("model_type")
    if text_type in ("qwen2_vl", "qwen2_5_vl"):
        raise CheckpointError(
            f"{path}: text_config.model_type is {text_type!r}: a Tarsier2 (Qwen2-VL) checkpoint, converted by "
            "tarsier_hf.hub.convert.tarsier2 (`tarsier-convert` picks it from config.json)"
        )
    if released.get("projection_head", "MLP") != "MLP":
        raise CheckpointError(
            f"{path}: projection_head {released['projection_head']!r} is not the MLP of Tarsier-7b/34b"
        )
    return released


def released_value(released: dict, key: str):
    """`released[key]`, or the release's default when config.json omits it."""
    return released.get(key, RELEASED_DEFAULTS[key])


def tarsier_config_from_released(released: dict, video_token_id: int) -> TarsierConfig:
    """Our `TarsierConfig` for a released `config.json` (`tarsier.py`'s docstring gives the key mapping)."""
    text_config = dict(released["text_config"])
    if "vocab_size" not in text_config and "vocab_size" in released:
        text_config["vocab_size"] = released["vocab_size"]
    dtype = released.get("dtype", released.get("torch_dtype"))
    try:
        return TarsierConfig(
            vision_config=dict(released["vision_config"]),
            text_config=text_config,
            image_token_id=released_value(released, "image_token_index"),
            video_token_id=video_token_id,
            image_newline_token_id=released_value(released, "image_newline_idx"),
            frame_end_token_id=released_value(released, "image_new_idx"),
            use_frame_separators=True,
            vision_feature_layer=released_value(released, "vision_feature_layer"),
            vision_feature_select_strategy=released_value(released, "vision_feature_select_strategy"),
            projector_hidden_act=released_value(released, "projector_hidden_act"),
            multimodal_projector_bias=released_value(released, "multimodal_projector_bias"),
            ignore_index=released_value(released, "ignore_index"),
            tie_word_embeddings=bool(
                text_config.get("tie_word_embeddings", released.get("tie_word_embeddings", False))
            ),
            dtype=dtype,
        )
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"config.json: cannot build a TarsierConfig: {error}") from None


def _legacy_sub_config(sub_config) -> dict:
    """A sub-config as a full dict that also carries the pre-5.0 rope keys (`rope_theta`, `rope_scaling`)."""
    data = sub_config.to_dict()
    data.pop("transformers_version", None)
    rope = data.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" in rope:
        data["rope_theta"] = rope["rope_theta"]
        data["rope_scaling"] = None if rope.get("rope_type", "default") == "default" else dict(rope)
    return data


def released_config_from_tarsier(config: TarsierConfig) -> dict:
    """The released `config.json` for one of our configs (inverse of `tarsier_config_from_released`)."""
    if not config.use_frame_separators:
        raise CheckpointError("config.json: use_frame_separators=False has no released equivalent (the release "
                              "always appends row newlines and an end-of-frame embedding)")
    dtype = config.dtype
    dtype = str(dtype).removeprefix("torch.") if dtype is not None else None
    text = config.text_config
    released = {
        "architectures": [RELEASED_ARCHITECTURE],
        "model_type": RELEASED_MODEL_TYPE,
        "vision_config": _legacy_sub_config(config.vision_config),
        "text_config": _legacy_sub_config(text),
        "image_token_index": config.image_token_id,
        "image_newline_idx": config.image_newline_token_id,
        "image_new_idx": config.frame_end_token_id,
        "vision_feature_layer": config.vision_feature_layer,
        "vision_feature_select_strategy": config.vision_feature_select_strategy,
        "projector_hidden_act": config.projector_hidden_act,
        "multimodal_projector_bias": config.multimodal_projector_bias,
        "ignore_index": config.ignore_index,
        "vocab_size": text.vocab_size,
        "tie_word_embeddings": bool(config.tie_word_embeddings),
        "torch_dtype": dtype,
    }
    if getattr(text, "pad_token_id", None) is not None:
        released["pad_token_id"] = text.pad_token_id
    return released
