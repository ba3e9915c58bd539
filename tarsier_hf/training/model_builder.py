"""Build a Tarsier model + processor for training: from a Tarsier folder / Hub id, or from parts.

From parts (the paper initialises from LLaVA-NeXT: a CLIP vision tower, an LLM and an MLP projector):

- vision: a folder / Hub id of a CLIP or SigLIP model (vision weights are loaded), or a config (JSON file, or a
  dict) for a randomly initialised tower;
- language model: a causal-LM folder / Hub id with its tokenizer (`AutoModelForCausalLM`);
- projector: fresh (random), or loaded from a safetensors file of `linear_1.*` / `linear_2.*` weights.

The processor's four special tokens (`<image>`, `<video>`, `<image_newline>`, `<frame_end>`) are added to the
tokenizer, the LM embeddings are resized to match (new rows = mean of the old ones), and their ids are written into
`TarsierConfig`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

from configuration_tarsier import TarsierConfig
from modeling_tarsier import TarsierForConditionalGeneration
from processing_tarsier import TarsierProcessor

from tarsier_hf.hub.checkpoint import copy_code_files

logger = logging.getLogger(__name__)

VISION_KINDS = {"clip_vision_model": "clip", "siglip_vision_model": "siglip"}


def _vision_config_and_weights(vision: str | dict) -> tuple[Any, dict | None]:
    """`(vision_config, state_dict or None)` from a model folder / Hub id, a JSON config file, or a dict."""
    if isinstance(vision, dict):
        config = AutoConfig.for_model(**vision)
        return getattr(config, "vision_config", config), None
    path = Path(vision)
    if path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))
        if "model_type" not in data:
            raise ValueError(f"{vision}: a vision config JSON needs 'model_type' (clip_vision_model or siglip_vision_model)")
        config = AutoConfig.for_model(**data)
        return getattr(config, "vision_config", config), None
    config = AutoConfig.from_pretrained(vision)
    has_weights = path.is_dir() and any(path.glob("*.safetensors")) or path.is_dir() and any(path.glob("*.bin"))
    if path.is_dir() and not has_weights:
        return getattr(config, "vision_config", config), None
    model = AutoModel.from_pretrained(vision, dtype=torch.float32)
    vision_model = getattr(model, "vision_model", None)
    if config.model_type in ("clip", "siglip"):  # a full dual encoder: keep its vision half
        vision_config = config.vision_config
        tower = AutoModel.from_config(vision_config)
        tower.vision_model.load_state_dict(vision_model.state_dict())
        return vision_config, tower.state_dict()
    return config, model.state_dict()


def build_from_parts(
    vision: str | dict,
    language_model: str,
    projector: str | None = None,
    chat_template: str | None = "vicuna",
    use_frame_separators: bool = True,
    vision_feature_layer: int = -2,
    resize_mode: str = "stretch",
    vision_feature_select_strategy: str | None = None,
    vision_feature_pooling: int = 1,
    num_frame_embeddings: int = 0,
) -> tuple[TarsierForConditionalGeneration, TarsierProcessor]:
    """
    Assemble a Tarsier from a vision encoder, an LLM and a fresh or given projector.

    Args:
        vision: CLIP/SigLIP folder or Hub id (weights loaded), JSON config file, or config dict (random weights).
        language_model: causal-LM folder or Hub id (weights and tokenizer).
        projector: optional safetensors file with the projector's `linear_1.*`/`linear_2.*` weights.
        chat_template: a `processing_tarsier.CHAT_TEMPLATES` name or Jinja string (`None`: the tokenizer's own,
            which then needs `{% generation %}` markers for training).
        use_frame_separators, vision_feature_layer, resize_mode: see `TarsierConfig` / `TarsierProcessor`.
        vision_feature_select_strategy: `"default"` (patches only; CLIP's CLS dropped) or `"full"` (CLIP's CLS
            feature kept as one more LM position per frame); None: "default" for CLIP, "full" for SigLIP (no CLS).
        vision_feature_pooling: average pooling of the patch grid before the projector (see `TarsierConfig`).
        num_frame_embeddings: learned frame-index embeddings of the projector (see `TarsierConfig`); fresh, also
            when `projector` gives the MLP's weights.

    Returns:
        `(model, processor)`; the tokenizer holds the special tokens and the embeddings are resized to it.
    """
    vision_config, vision_state = _vision_config_and_weights(vision)
    kind = VISION_KINDS.get(vision_config.model_type)
    if kind is None:
        raise ValueError(f"{vision}: vision model type {vision_config.model_type!r} is not CLIP or SigLIP")
    strategy = vision_feature_select_strategy or ("default" if kind == "clip" else "full")
    tokenizer = AutoTokenizer.from_pretrained(language_model)
    processor = TarsierProcessor.from_parts(
        tokenizer,
        image_processor=kind,
        chat_template=chat_template,
        image_size=vision_config.image_size,
        patch_size=vision_config.patch_size,
        use_frame_separators=use_frame_separators,
        resize_mode=resize_mode,
        num_additional_image_tokens=int(strategy == "full" and kind == "clip"),
        vision_feature_pooling=vision_feature_pooling,
    )
    llm = AutoModelForCausalLM.from_pretrained(language_model, dtype=torch.float32)
    if llm.get_input_embeddings().weight.shape[0] < len(tokenizer):
        llm.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    text_config = llm.config
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    config = TarsierConfig(
        vision_config=vision_config.to_dict(),
        text_config=text_config.to_dict(),
        image_token_id=processor.image_token_id,
        video_token_id=processor.video_token_id,
        image_newline_token_id=processor.image_newline_token_id,
        frame_end_token_id=processor.frame_end_token_id,
        use_frame_separators=use_frame_separators,
        vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy=strategy,
        vision_feature_pooling=vision_feature_pooling,
        num_frame_embeddings=num_frame_embeddings,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = TarsierForConditionalGeneration(config)
    base = llm.get_base_model() if hasattr(llm, "get_base_model") else getattr(llm, llm.base_model_prefix)
    model.model.language_model.load_state_dict(base.state_dict())
    model.lm_head.load_state_dict(llm.get_output_embeddings().state_dict())
    if vision_state is not None:
        model.model.vision_tower.load_state_dict(vision_state)
    if projector is not None:
        state = load_file(projector)
        state = {k.split("multi_modal_projector.")[-1]: v for k, v in state.items()}
        missing, unexpected = model.model.multi_modal_projector.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("frame_embedding.")]
        if missing or unexpected:
            raise ValueError(f"{projector}: projector weights do not fit (missing {missing}, unexpected {unexpected})")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, processor


def save_tarsier(model, processor, output_dir: str | os.PathLike) -> str:
    """Save weights, config and processor; a Tarsier also gets its remote-code files (loadable with
    `trust_remote_code=True`), while a Qwen2-VL folder loads with transformers' own class (its processor saves its
    own code files)."""
    output_dir = str(output_dir)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    if model.config.model_type == TarsierConfig.model_type:
        copy_code_files(output_dir)
    return output_dir
