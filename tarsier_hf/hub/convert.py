"""Convert a released Tarsier checkpoint (Tarsier-7b / Tarsier-34b) into this repository's format, and back.

    # released layout -> ours (loads with AutoModelForImageTextToText / AutoProcessor, trust_remote_code=True)
    python -m tarsier_hf.hub.convert --model_name_or_path Tarsier-7b --output_dir tarsier-7b-hf
    # ours -> released layout (for engines that serve the released layout, e.g. vLLM's Tarsier support)
    python -m tarsier_hf.hub.convert --model_name_or_path tarsier-7b-hf --output_dir Tarsier-7b-released --export

Tarsier2 folders (Qwen2-VL underneath) go to `tarsier_hf/hub/tarsier2.py` (a standard Qwen2-VL folder and back):
`main` tells the families apart from the input's config.json, with the same flags.

Both directions stream the checkpoint shard by shard with `safetensors.safe_open`: one input shard is read,
renamed and written as one output shard before the next is opened, so peak memory stays near the size of the
largest shard (a 34B checkpoint converts on a machine that could never hold it). The output shards keep the
input's partition and dtype, tensors are written in sorted order with fixed metadata, so export -> convert
reproduces the converted folder byte for byte.

Facts this converter relies on, each confirmed by reading the released code (bytedance/tarsier, branch `tarsier`,
unless said otherwise) and pinned by `tests/test_release_parity.py` (which writes them out explicitly):

- `models/modeling_tarsier.py`: `LlavaConfig` with `model_type = "llava"`, keys `image_token_index` (default
  32000), `image_newline_idx` (default 32002), `image_new_idx` (default 32003), `vision_feature_layer` (-2),
  `vision_feature_select_strategy` ("default": CLS dropped), `projector_hidden_act` ("gelu"), a CLIP
  ViT-L/14-336 default `vision_config` and a llama default `text_config`. `TarsierForConditionalGeneration`
  holds `vision_tower` (`AutoModel.from_config(vision_config)`), `multi_modal_projector` (`linear_1`, act,
  `linear_2`, both with bias) and `language_model` (`AutoModelForCausalLM.from_config(text_config)`).
  `add_split_tokens` reshapes each frame's projected patches to (rows, cols), appends the input embedding of
  row `image_newline_idx` after every row and of row `image_new_idx` after the frame (`rows * (cols + 1) + 1`
  = 601 LM positions per frame); the rows are only looked up (`get_input_embeddings()(idx)`), so any row of the
  table works, also one that is an ordinary token.
- The release pins transformers 4.44.2 (`requirements.txt`), whose `CLIPVisionModel` nests the tower under
  `vision_model.`: its `save_pretrained` writes `vision_tower.vision_model.embeddings.*`,
  `vision_tower.vision_model.encoder.layers.*`, `vision_tower.vision_model.{pre_layrnorm,post_layernorm}.*`,
  `multi_modal_projector.linear_{1,2}.*`, `language_model.model.*` and `language_model.lm_head.weight`.
  transformers 5.x vision models have no `vision_model.` level: input `vision_tower.vision_model.X` becomes our
  `model.vision_tower.X`, and `--export` writes it back.
- `dataset/processor.py`: `<video>` in a prompt becomes `<image>` once per sampled frame, every `<image>` id
  (`image_token_index`) is replaced by one frame's 601 features; a prompt without `USER:`/`ASSISTANT:` becomes
  `f"USER: {prompt} ASSISTANT: "`; frames are stretched to a `max(w, h)` square at full resolution
  (`resize2square`, PIL's default filter) and then go through `LlavaProcessor`'s CLIP image processor
  (resize to 336, two resamplings in all): `resize_mode="released"` of our processor.
- `tools/conversation.py`: roles `USER` / `ASSISTANT`, `sep1 = " "`, `sep2` `"</s>"` for tarsier-7b/13b and
  `"<|endoftext|>"` for tarsier-34b, no system prompt: `"USER: <image>*n\\n{instruction} ASSISTANT: "` with a
  trailing space (our `vicuna` / `tarsier-34b` chat templates).
- `dataset/utils.py` `sample_frame_indices`: `[0]` for one frame, else `round(i * (T - 1) / (n - 1))`
  (our `sample_uniform`); `tasks/inference_benchmark.py`: 8 frames by default, greedy, 512 new tokens.
- vLLM `vllm/model_executor/models/tarsier.py`: reads `image_token_index`, `image_newline_idx`, `image_new_idx`,
  `vision_feature_layer`, `vision_feature_select_strategy`, `projector_hidden_act`, `multimodal_projector_bias`
  (default True) from a transformers `LlavaConfig`; its vision tower is vLLM's `CLIPVisionModel` /
  `SiglipVisionModel`, whose weights are named `vision_model.*`, so it loads `vision_tower.vision_model.*`,
  `multi_modal_projector.*` and `language_model.*` (`TarsierForConditionalGeneration`, `omni-research/Tarsier-7b`
  in its examples). Its per-image count is `rows * (cols + 1) + num_additional_image_tokens + 1`, minus 1 for
  the "default" strategy, so the export writes a LLaVA `processor_config.json` with
  `num_additional_image_tokens: 1` (601 for 336 px). Newer vLLM lists the architecture in
  `_PREVIOUSLY_SUPPORTED_MODELS` (`vllm/model_executor/models/registry.py`) as supported until v0.24.0, the
  last versions on transformers 4.x: serve exports with vLLM <= 0.24. The export's `tokenizer_config.json`
  therefore names a class 4.x loads (`LlamaTokenizerFast` for the released Llama tokenizers, see
  `released_tokenizer_fields`), not 5.x's `TokenizersBackend`.
- Model card of omni-research/Tarsier-7b (Hub README): base LLM llava-v1.6-vicuna-7b, license llama2.

Not confirmed from public text (the Hub repos' config.json / tokenizer files are not readable here), so the
converter reads them from the checkpoint instead of assuming them: the vocabulary size (32,064 for 7b), the
exact ids in config.json (the release's defaults are used only when a key is absent; a newline / frame-end row
that is already an ordinary token is accepted with a warning, as the release accepts it), which rows the
tokenizer names (`<image>` must be the token at `image_token_index`), the tokenizer's class and the shard
names. The tokenizer is loaded with `AutoTokenizer`; a sentencepiece-only tokenizer (no tokenizer.json) needs
`pip install sentencepiece protobuf`.

Our layout (docs/design.md): the same numbers in `TarsierConfig` (`image_token_id`, `image_newline_token_id`,
`frame_end_token_id`) and the tokens `<image>`, `<video>`, `<image_newline>`, `<frame_end>` in the tokenizer.
The converter names the released rows: `<image_newline>` and `<frame_end>` become the tokens at rows
`image_newline_idx` / `image_new_idx` (or those rows keep their existing tokens, which the processor then
names), and `<video>` takes the first free row. Weight names: `vision_tower.vision_model.*` ->
`model.vision_tower.*`, `multi_modal_projector.*` -> `model.multi_modal_projector.*`, `language_model.model.*`
-> `model.language_model.*`, `language_model.lm_head.*` -> `lm_head.*`. Processor defaults: the released chat
format, `resize_mode="released"`, 8 uniform frames.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tokenizers import AddedToken
from tqdm.auto import tqdm
from transformers import (
    AutoTokenizer,
    CLIPImageProcessorPil,
    GenerationConfig,
    HfArgumentParser,
    SiglipImageProcessorPil,
)


from configuration_tarsier import TarsierConfig
from modeling_tarsier import TarsierForConditionalGeneration
from processing_tarsier import (
    CHAT_TEMPLATES,
    FRAME_END_TOKEN,
    IMAGE_NEWLINE_TOKEN,
    IMAGE_TOKEN,
    VIDEO_TOKEN,
    TarsierProcessor,
)

from tarsier_hf.cli import help_text, renamed
from tarsier_hf.hub.checkpoint import INDEX_FILE, CheckpointError, copy_code_files, read_json
from tarsier_hf.hub.model_card import render_model_card

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
# What ends a finished assistant turn in the released conversation templates (tools/conversation.py).
CHAT_SEPARATORS = {"vicuna": "</s>", "yi": "<|endoftext|>"}
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
SHARD_METADATA = {"format": "pt"}
# Files an export (and the Tarsier2 conversion) copies unchanged when the input folder has them.
CARRIED_FILES = ("generation_config.json", "README.md")


# ----------------------------------------------------------------------------------------------------------------
# Weight names
# ----------------------------------------------------------------------------------------------------------------


def _swap_prefix(name: str, pairs: tuple[tuple[str, str], ...], source: str) -> str:
    for old, new in pairs:
        if name.startswith(old):
            return new + name[len(old):]
    expected = ", ".join(old + "*" for old, _ in pairs)
    raise CheckpointError(f"{source}: tensor {name!r} matches none of the expected prefixes ({expected})")


def released_to_ours(name: str, source: str = "checkpoint") -> str:
    """`language_model.model.layers.0...` -> `model.language_model.layers.0...` (see module docstring)."""
    return _swap_prefix(name, RELEASED_TO_OURS, source)


def ours_to_released(name: str, source: str = "checkpoint") -> str:
    """Inverse of `released_to_ours`: `model.vision_tower.X` -> `vision_tower.vision_model.X`."""
    pairs = tuple(dict((new, old) for old, new in reversed(RELEASED_TO_OURS)).items())
    return _swap_prefix(name, pairs, source)


# ----------------------------------------------------------------------------------------------------------------
# Streaming shard conversion
# ----------------------------------------------------------------------------------------------------------------


def list_shards(folder: Path) -> list[Path]:
    """Safetensors shards of a checkpoint folder, in index order (or the single `model.safetensors`)."""
    index_path = folder / INDEX_FILE
    if index_path.is_file():
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise CheckpointError(f"{index_path}: not a safetensors index with a 'weight_map' ({error})") from None
        names = sorted(set(weight_map.values()))
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise CheckpointError(f"{index_path}: lists shards that are missing from the folder: {missing}")
        return [folder / n for n in names]
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    if any(folder.glob("*.bin")):
        raise CheckpointError(
            f"{folder}: holds PyTorch .bin weights; this converter streams safetensors only "
            "(re-save the checkpoint with safe_serialization=True first)"
        )
    raise CheckpointError(f"{folder}: no {INDEX_FILE} and no model.safetensors")


def tensor_shapes(
    shards: list[Path], rename: Callable[[str, str], str | None] | None = None
) -> dict[str, tuple[int, ...]]:
    """(Renamed) name -> shape of every tensor in the shards, read from the headers only (no tensor data)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for shard in shards:
        with safe_open(str(shard), framework="pt") as handle:
            for name in handle.keys():
                new_name = rename(name, str(shard)) if rename is not None else name
                if new_name is None:
                    continue
                if new_name in shapes:
                    raise CheckpointError(f"{shard}: tensor {new_name!r} also appears in an earlier shard")
                shapes[new_name] = tuple(handle.get_slice(name).get_shape())
    return shapes


def stream_shards(
    shards: list[Path], output: Path, rename: Callable[[str, str], str | None], description: str
) -> dict[str, str]:
    """Rename every tensor shard by shard and write the new shards plus their index.

    One input shard is held in memory at a time. Output shard `i` holds exactly the tensors of input shard `i`
    (renamed), in sorted order, with their original dtype and bytes.

    Args:
        shards: input safetensors files.
        output: destination folder.
        rename: `(name, shard_path) -> new name`, or `None` to drop the tensor.
        description: progress bar label.

    Returns:
        The index's `weight_map` (new tensor name -> shard file name).
    """
    weight_map: dict[str, str] = {}
    total_size = 0
    count = len(shards)
    for number, shard in enumerate(tqdm(shards, desc=description, unit="shard"), start=1):
        file_name = f"model-{number:05d}-of-{count:05d}.safetensors"
        tensors: dict[str, torch.Tensor] = {}
        with safe_open(str(shard), framework="pt") as handle:
            for name in handle.keys():
                new_name = rename(name, str(shard))
                if new_name is None:
                    continue
                if new_name in weight_map or new_name in tensors:
                    raise CheckpointError(f"{shard}: two tensors map to {new_name!r}")
                tensors[new_name] = handle.get_tensor(name)
        for name, tensor in tensors.items():
            weight_map[name] = file_name
            total_size += tensor.numel() * tensor.element_size()
        save_file({name: tensors[name] for name in sorted(tensors)}, str(output / file_name), metadata=SHARD_METADATA)
        del tensors
    index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
    write_json(output / INDEX_FILE, index)
    return weight_map


def check_weights_fit(config, shapes: dict[str, tuple[int, ...]], source: str,
                      model_class=TarsierForConditionalGeneration) -> None:
    """Compare renamed tensor names/shapes with those of `model_class(config)` (built on the meta device, so no
    memory is used) and raise on any missing, unexpected or mis-shaped tensor. Tarsier by default; the Tarsier2
    converter passes transformers' `Qwen2VLForConditionalGeneration`."""
    with torch.device("meta"):
        model = model_class(config)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
        shapes = {k: v for k, v in shapes.items() if k != "lm_head.weight"}
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong = sorted(n for n in set(expected) & set(shapes) if expected[n] != shapes[n])
    problems = []
    if missing:
        problems.append(f"missing tensors {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
    if wrong:
        problems.append(
            "shape mismatches " + ", ".join(f"{n}: checkpoint {shapes[n]} vs config {expected[n]}" for n in wrong[:8])
        )
    if problems:
        raise CheckpointError(f"{source}: the weights do not fit the {model_class.__name__} config: "
                              + "; ".join(problems))


# ----------------------------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------------------------


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
            "tarsier_hf.hub.tarsier2 (`tarsier-convert` picks it from config.json)"
        )
    if released.get("projection_head", "MLP") != "MLP":
        raise CheckpointError(
            f"{path}: projection_head {released['projection_head']!r} is not the MLP of Tarsier-7b/34b"
        )
    return released


def _released(released: dict, key: str):
    return released.get(key, RELEASED_DEFAULTS[key])


def tarsier_config_from_released(released: dict, video_token_id: int) -> TarsierConfig:
    """Our `TarsierConfig` for a released `config.json` (see the module docstring for the key mapping)."""
    text_config = dict(released["text_config"])
    if "vocab_size" not in text_config and "vocab_size" in released:
        text_config["vocab_size"] = released["vocab_size"]
    dtype = released.get("dtype", released.get("torch_dtype"))
    try:
        return TarsierConfig(
            vision_config=dict(released["vision_config"]),
            text_config=text_config,
            image_token_id=_released(released, "image_token_index"),
            video_token_id=video_token_id,
            image_newline_token_id=_released(released, "image_newline_idx"),
            frame_end_token_id=_released(released, "image_new_idx"),
            use_frame_separators=True,
            vision_feature_layer=_released(released, "vision_feature_layer"),
            vision_feature_select_strategy=_released(released, "vision_feature_select_strategy"),
            projector_hidden_act=_released(released, "projector_hidden_act"),
            multimodal_projector_bias=_released(released, "multimodal_projector_bias"),
            ignore_index=_released(released, "ignore_index"),
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


# ----------------------------------------------------------------------------------------------------------------
# Tokenizer, processor, chat template, generation config
# ----------------------------------------------------------------------------------------------------------------


def map_special_tokens(tokenizer, image_id: int, newline_id: int, frame_end_id: int, vocab_size: int) -> dict:
    """Name the released embedding rows with our special tokens, in place.

    `<image>` must already be the token at `image_id`. The newline / end-of-frame rows are used by the release
    only through their embeddings (`add_split_tokens` looks them up by id), so any row the embedding table has
    is accepted:

    - a row past the tokenizer's end gets our token `<image_newline>` / `<frame_end>` (rows between the
      tokenizer's end and it get `<video>` first, then unused placeholders);
    - a row that is already an ordinary token (e.g. `<0x0A>`) keeps that token, which is registered as an added
      token so that it is matched whole in text; the processor names it as its newline / frame-end token. This
      is logged as a warning: the converted model is still exact, but that token's text now stands for the
      separator row too.

    `<video>` takes the first free id otherwise.

    Returns:
        `{"<image>": id, "<video>": id, "<image_newline>": id, "<frame_end>": id, "placeholders": [...],
        "tokens": {"image_newline_token": str, "frame_end_token": str}}`.
    """
    def add(content: str) -> int:
        tokenizer.add_tokens([AddedToken(content, special=True, normalized=False)], special_tokens=True)
        return tokenizer.convert_tokens_to_ids(content)

    vocab = tokenizer.get_vocab()
    if IMAGE_TOKEN not in vocab:
        if len(tokenizer) != image_id:
            raise CheckpointError(
                f"tokenizer: has no {IMAGE_TOKEN} token and image_token_index={image_id} is not its next free id "
                f"({len(tokenizer)})"
            )
        add(IMAGE_TOKEN)
    elif vocab[IMAGE_TOKEN] != image_id:
        raise CheckpointError(f"tokenizer: {IMAGE_TOKEN} is id {vocab[IMAGE_TOKEN]} but config.json says "
                              f"image_token_index={image_id}")
    placeholders = []
    names = {}
    roles = (("image_newline_token", newline_id, IMAGE_NEWLINE_TOKEN, "image_newline_idx"),
             ("frame_end_token", frame_end_id, FRAME_END_TOKEN, "image_new_idx"))
    for role, token_id, content, key in sorted(roles, key=lambda r: r[1]):
        if not 0 <= token_id < vocab_size:
            raise CheckpointError(f"config.json: {key}={token_id} is outside the embedding table "
                                  f"(text_config.vocab_size={vocab_size})")
        if token_id == image_id:
            raise CheckpointError(f"config.json: {key}={token_id} is the {IMAGE_TOKEN} row (image_token_index); "
                                  "visual placeholders and separators must be different tokens")
        while len(tokenizer) < token_id:
            if VIDEO_TOKEN not in tokenizer.get_vocab():
                add(VIDEO_TOKEN)
            else:
                placeholders.append(f"<tarsier_unused_{len(tokenizer)}>")
                add(placeholders[-1])
        if len(tokenizer) == token_id:
            add(content)
        existing = tokenizer.convert_ids_to_tokens(token_id)
        if existing != content:
            logger.warning(
                "tokenizer: row %d (config.json %s) is the existing token %r; the release uses that row's embedding "
                "as the separator, and so does the converted model (its processor names %r as %s)",
                token_id, key, existing, existing, role,
            )
            if existing not in tokenizer.get_added_vocab():
                tokenizer.add_tokens([AddedToken(existing, special=False, normalized=False)])
            if tokenizer.convert_tokens_to_ids(existing) != token_id:
                raise CheckpointError(f"tokenizer: cannot name row {token_id} ({key}): its token {existing!r} does "
                                      "not map back to it")
        names[role] = existing
    if VIDEO_TOKEN not in tokenizer.get_vocab():
        add(VIDEO_TOKEN)
    ids = {IMAGE_TOKEN: image_id, VIDEO_TOKEN: tokenizer.convert_tokens_to_ids(VIDEO_TOKEN),
           IMAGE_NEWLINE_TOKEN: newline_id, FRAME_END_TOKEN: frame_end_id}
    if len(tokenizer) > vocab_size:
        raise CheckpointError(
            f"tokenizer: needs {len(tokenizer)} ids after adding {VIDEO_TOKEN}, but the embedding table has "
            f"{vocab_size} rows (text_config.vocab_size)"
        )
    ids["placeholders"] = placeholders
    ids["tokens"] = names
    return ids


def released_tokenizer_fields(tokenizer) -> dict:
    """`tokenizer_config.json` fields an export writes so that transformers 4.x (the release, vLLM's Tarsier path)
    loads the tokenizer as the release ships it.

    transformers 5.x saves `"tokenizer_class": "TokenizersBackend"`, a name 4.x does not know. The released
    checkpoints ship Llama tokenizers (a byte-fallback BPE `tokenizer.json`, converted from sentencepiece), whose
    4.x fast class is `LlamaTokenizerFast`; that class rebuilds its post-processor from `add_bos_token` /
    `add_eos_token`, so both are written as this tokenizer behaves. Any other tokenizer is written as the generic
    `PreTrainedTokenizerFast`, which 4.x builds from `tokenizer.json` unchanged.
    """
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    if model.get("type") != "BPE" or not model.get("byte_fallback"):
        return {"tokenizer_class": "PreTrainedTokenizerFast"}
    ids = tokenizer("a").input_ids
    return {
        "tokenizer_class": "LlamaTokenizerFast",
        "add_bos_token": tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id,
        "add_eos_token": tokenizer.eos_token_id is not None and ids[-1] == tokenizer.eos_token_id,
    }


def write_legacy_bpe_merges(path: Path) -> None:
    """Rewrite a BPE `tokenizer.json`'s merges from pairs (`[["a", "b"], ...]`, tokenizers >= 0.20) to the
    `"a b"` strings that tokenizers 0.19 reads (the release pins transformers 4.44.2, which requires
    tokenizers < 0.20; newer versions read both). Left as is when a piece holds a space (not expressible)."""
    data = json.loads(path.read_text())
    model = data.get("model") or {}
    merges = model.get("merges") or []
    if model.get("type") != "BPE" or not merges or isinstance(merges[0], str):
        return
    if any(" " in piece for pair in merges for piece in pair):
        logger.warning("%s: merges hold spaces; kept as pairs, which tokenizers < 0.20 cannot read", path)
        return
    model["merges"] = [" ".join(pair) for pair in merges]
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def detect_chat_format(tokenizer) -> str:
    """`vicuna` (Tarsier-7b/13b) or `yi` (Tarsier-34b), from the tokenizer's special tokens."""
    if tokenizer.eos_token == "</s>":
        return "vicuna"
    if "<|endoftext|>" in (tokenizer.eos_token, tokenizer.bos_token) or tokenizer.bos_token == "<|startoftext|>":
        return "yi"
    raise CheckpointError(
        f"tokenizer: cannot tell the released chat format from eos={tokenizer.eos_token!r} / "
        f"bos={tokenizer.bos_token!r}; pass --chat_template vicuna or yi"
    )


def released_chat_template(chat_format: str, tokenizer) -> str:
    """The released conversation format (`USER: ... ASSISTANT: answer<sep>`, generation prompt `... ASSISTANT: `
    with its trailing space) as a Jinja template: the processor's `vicuna` (Tarsier-7b/13b) or `tarsier-34b`
    template, whose finished turns end with `</s>` / `<|endoftext|>` whatever the tokenizer's eos token is."""
    if chat_format not in CHAT_SEPARATORS:
        raise CheckpointError(
            f"--chat_template must be one of {sorted(CHAT_SEPARATORS)} or 'auto', got {chat_format!r}"
        )
    separator = CHAT_SEPARATORS[chat_format]
    if separator not in tokenizer.get_vocab():
        raise CheckpointError(f"tokenizer: the {chat_format} turn separator {separator!r} is not a token")
    template = CHAT_TEMPLATES["vicuna" if chat_format == "vicuna" else "tarsier-34b"]
    if chat_format == "vicuna" and tokenizer.eos_token != separator:
        template = "{%- set eos_token = " + json.dumps(separator) + " -%}" + template
    return template


def build_image_processor(vision_config, preprocessor: dict | None):
    """CLIP (or SigLIP) PIL image processor at the vision tower's size, with the released mean/std if known."""
    size = vision_config.image_size
    preprocessor = preprocessor or {}
    if vision_config.model_type == "siglip_vision_model":
        return SiglipImageProcessorPil(
            size={"height": size, "width": size},
            image_mean=list(preprocessor.get("image_mean", [0.5, 0.5, 0.5])),
            image_std=list(preprocessor.get("image_std", [0.5, 0.5, 0.5])),
        )
    return CLIPImageProcessorPil(
        size={"height": size, "width": size},
        crop_size={"height": size, "width": size},
        do_center_crop=False,
        image_mean=list(preprocessor.get("image_mean", CLIP_MEAN)),
        image_std=list(preprocessor.get("image_std", CLIP_STD)),
    )


def build_generation_config(folder: Path, tokenizer, separator: str, pad_token_id: int | None):
    """The input's generation config (or greedy decoding with 512 new tokens, the released default) that stops
    at the eos token and at the chat separator."""
    if (folder / "generation_config.json").is_file():
        generation = GenerationConfig.from_pretrained(folder)
    else:
        generation = GenerationConfig(do_sample=False, max_new_tokens=512)
    eos = generation.eos_token_id
    eos = list(eos) if isinstance(eos, (list, tuple)) else ([eos] if eos is not None else [])
    for token_id in (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(separator)):
        if token_id is not None and token_id not in eos:
            eos.append(token_id)
    generation.eos_token_id = eos[0] if len(eos) == 1 else eos
    if generation.bos_token_id is None:
        generation.bos_token_id = tokenizer.bos_token_id
    if generation.pad_token_id is None:
        generation.pad_token_id = pad_token_id if pad_token_id is not None else tokenizer.pad_token_id
    return generation


# ----------------------------------------------------------------------------------------------------------------
# Model card
# ----------------------------------------------------------------------------------------------------------------


def _front_matter(readme: Path) -> dict[str, str]:
    """`key: value` lines of a README's YAML front matter (enough for `license` and `base_model`)."""
    if not readme.is_file():
        return {}
    text = readme.read_text(errors="replace")
    match = re.match(r"---\n(.*?)\n---", text, re.S)
    if not match:
        return {}
    return dict(re.findall(r"^(\w+):\s*(\S.*)$", match.group(1), re.M))


def model_card(config: TarsierConfig, chat_format: str, token_ids: dict, source_card: dict[str, str]) -> str:
    """The card of a converted checkpoint: the released card's license and base model, and the layout facts."""
    rows, cols = config.patch_grid
    vision, text = config.vision_config, config.text_config
    features = "CLS dropped" if config.vision_feature_select_strategy == "default" else "all positions"
    tokens = token_ids["tokens"]
    details = {
        "vision tower": f"{vision.model_type}, {vision.image_size} px, patch {vision.patch_size} ({rows}x{cols} "
                        f"patches), features of layer {config.vision_feature_layer} ({features})",
        "language model": f"{text.model_type}, {text.num_hidden_layers} layers, hidden {text.hidden_size}, "
                          f"vocabulary {text.vocab_size}",
        "positions per frame": f"{config.num_positions_per_frame} LM positions: ([<image>] * {cols} + "
                               f"[<image_newline>]) * {rows} + [<frame_end>]",
        "special tokens": f"<image> = {token_ids[IMAGE_TOKEN]}, <video> = {token_ids[VIDEO_TOKEN]}, "
                          f"{tokens['image_newline_token']} = {token_ids[IMAGE_NEWLINE_TOKEN]} (row newline), "
                          f"{tokens['frame_end_token']} = {token_ids[FRAME_END_TOKEN]} (end of frame): the released "
                          "separator embedding rows",
        "frames": "8, sampled uniformly (first and last included), stretched to a square at full resolution, then "
                  "resized to the tower's size (as the release does)",
        "chat format": f"released {chat_format} conversation (USER: <video>\\n... ASSISTANT: answer"
                       f"{CHAT_SEPARATORS[chat_format]})",
    }
    return render_model_card(
        "Tarsier (converted)",
        base_model=source_card.get("base_model"),
        details=details,
        license=source_card.get("license", "other"),
        origin="a released checkpoint (the weights are the released ones, renamed only) converted to the Hugging "
               "Face-native Tarsier classes",
        notes="Export back to the released layout (for engines that serve it, e.g. vLLM's Tarsier support) with "
              "`tarsier-convert --model_name_or_path THIS_FOLDER --output_dir OUT --export`.",
    )


# ----------------------------------------------------------------------------------------------------------------
# The two directions
# ----------------------------------------------------------------------------------------------------------------


def _prepare_output(output: Path, overwrite: bool, source: Path) -> None:
    if output.resolve() == source.resolve():
        raise CheckpointError(f"{output}: output folder must differ from the input folder")
    if output.exists() and any(output.iterdir()):
        if not overwrite:
            raise CheckpointError(f"{output}: output folder exists and is not empty (pass --overwrite)")
        shutil.rmtree(output)
    output.mkdir(parents=True, exist_ok=True)


def write_json(path: Path, data: dict) -> None:
    """`data` as the converters write every JSON file: indented by 2, keys sorted, a final newline."""
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def copy_present(source: Path, output: Path, names: tuple[str, ...]) -> None:
    """Copy each of `names` that `source` holds into `output`, unchanged."""
    for name in names:
        if (source / name).is_file():
            shutil.copyfile(source / name, output / name)


def load_tokenizer(folder: Path):
    """The folder's tokenizer (`CheckpointError` naming the folder when it does not load)."""
    try:
        return AutoTokenizer.from_pretrained(folder)
    except Exception as error:  # noqa: BLE001 - the tokenizer loaders raise many types
        raise CheckpointError(f"{folder}: cannot load the tokenizer ({type(error).__name__}: {error})") from None


def _drop_rebuilt(rename: Callable[[str, str], str], log: bool = True) -> Callable[[str, str], str | None]:
    def wrapped(name: str, source: str) -> str | None:
        if REBUILT_BUFFERS.search(name):
            if log:
                logger.info("%s: dropping %s (a buffer rebuilt at load time)", source, name)
            return None
        return rename(name, source)

    return wrapped


def convert_released(input_dir, output_dir, chat_template: str = "auto", overwrite: bool = False) -> Path:
    """Released Tarsier folder -> our folder (config, weights, tokenizer, processor, generation config, code,
    model card). Returns the output path."""
    source, output = Path(input_dir), Path(output_dir)
    released = read_released_config(source)
    shards = list_shards(source)
    shapes = tensor_shapes(shards, _drop_rebuilt(released_to_ours, log=False))
    tokenizer = load_tokenizer(source)
    vocab_size = released["text_config"].get("vocab_size", released.get("vocab_size"))
    if vocab_size is None:
        raise CheckpointError(f"{source / 'config.json'}: text_config.vocab_size is missing")
    token_ids = map_special_tokens(
        tokenizer,
        _released(released, "image_token_index"),
        _released(released, "image_newline_idx"),
        _released(released, "image_new_idx"),
        vocab_size,
    )
    if token_ids["placeholders"]:
        logger.warning("tokenizer: rows %s had no token; named them %s", token_ids["placeholders"],
                       token_ids["placeholders"])
    config = tarsier_config_from_released(released, token_ids[VIDEO_TOKEN])
    check_weights_fit(config, shapes, str(source))
    chat_format = detect_chat_format(tokenizer) if chat_template == "auto" else chat_template
    template = released_chat_template(chat_format, tokenizer)

    preprocessor_path = source / "preprocessor_config.json"
    preprocessor = read_json(preprocessor_path) if preprocessor_path.is_file() else None
    processor = TarsierProcessor.from_parts(
        tokenizer,
        image_processor=build_image_processor(config.vision_config, preprocessor),
        chat_template=template,
        patch_size=config.vision_config.patch_size,
        use_frame_separators=True,
        resize_mode="released",
        frame_sampling={"policy": "uniform", "num_frames": 8},
        **token_ids["tokens"],
    )
    processor_ids = (processor.image_token_id, processor.video_token_id, processor.image_newline_token_id,
                     processor.frame_end_token_id)
    config_ids = (
        config.image_token_id, config.video_token_id, config.image_newline_token_id, config.frame_end_token_id
    )
    if processor_ids != config_ids:
        raise RuntimeError(f"processor token ids {processor_ids} differ from config ids {config_ids}")

    _prepare_output(output, overwrite, source)
    stream_shards(shards, output, _drop_rebuilt(released_to_ours), "converting shards")
    config.save_pretrained(output)
    processor.save_pretrained(output)
    separator = CHAT_SEPARATORS[chat_format]
    build_generation_config(source, tokenizer, separator, getattr(config.text_config, "pad_token_id", None)
                            ).save_pretrained(output)
    copy_code_files(output)
    (output / "README.md").write_text(model_card(config, chat_format, token_ids, _front_matter(source / "README.md")))
    return output


def export_released(input_dir, output_dir, overwrite: bool = False) -> Path:
    """Our folder -> the released layout (config.json of a `llava` / `TarsierForConditionalGeneration` model,
    `vision_tower.*` / `multi_modal_projector.*` / `language_model.*` weights, tokenizer, CLIP
    `preprocessor_config.json`, a LLaVA `processor_config.json`, generation config). Returns the output path."""
    source, output = Path(input_dir), Path(output_dir)
    ours = read_json(source / "config.json")
    if ours.get("model_type") != TarsierConfig.model_type:
        raise CheckpointError(f"{source / 'config.json'}: model_type is {ours.get('model_type')!r}, expected "
                              f"'tarsier' (convert released checkpoints without --export)")
    config = TarsierConfig.from_pretrained(source)
    released = released_config_from_tarsier(config)
    shards = list_shards(source)
    tensor_shapes(shards, ours_to_released)  # every name must map before anything is written
    # Passing the config keeps AutoTokenizer from resolving the folder's auto_map (remote code) by itself.
    tokenizer = AutoTokenizer.from_pretrained(source, config=config)
    processor_path = source / "processor_config.json"
    image_processor = read_json(processor_path).get("image_processor", {}) if processor_path.is_file() else {}
    size = config.vision_config.image_size

    _prepare_output(output, overwrite, source)
    stream_shards(shards, output, ours_to_released, "exporting shards")
    write_json(output / "config.json", released)
    tokenizer.save_pretrained(output)
    # The released folder has no processing_tarsier.py: its tokenizer must not point at our processor.
    tokenizer_config = read_json(output / "tokenizer_config.json")
    tokenizer_config.pop("auto_map", None)
    tokenizer_config["processor_class"] = "LlavaProcessor"
    tokenizer_config.update(released_tokenizer_fields(tokenizer))
    write_json(output / "tokenizer_config.json", tokenizer_config)
    write_legacy_bpe_merges(output / "tokenizer.json")
    preprocessor = {
        "image_processor_type": "CLIPImageProcessor",
        "processor_class": "LlavaProcessor",
        "do_resize": True,
        "size": {"shortest_edge": size},
        "do_center_crop": True,
        "crop_size": {"height": size, "width": size},
        "resample": 3,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(image_processor.get("image_mean", CLIP_MEAN)),
        "image_std": list(image_processor.get("image_std", CLIP_STD)),
        "do_convert_rgb": True,
    }
    write_json(output / "preprocessor_config.json", preprocessor)
    # vLLM's TarsierProcessor (a LlavaProcessor) counts rows * (cols + 1) + num_additional_image_tokens + 1 - 1
    # positions per image with the "default" strategy: num_additional_image_tokens=1 (CLIP's CLS) gives 601.
    llava_processor = {
        "processor_class": "LlavaProcessor",
        "image_token": IMAGE_TOKEN,
        "patch_size": config.vision_config.patch_size,
        "vision_feature_select_strategy": config.vision_feature_select_strategy,
        "num_additional_image_tokens": 1 if config.vision_config.model_type == "clip_vision_model" else 0,
    }
    write_json(output / "processor_config.json", llava_processor)
    copy_present(source, output, CARRIED_FILES)
    return output


# ----------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class ConvertArguments:
    """Command-line arguments of `python -m tarsier_hf.hub.convert`."""

    input: str = field(metadata={"help": "Checkpoint folder: the released layout (or ours with --export).",
                                 **renamed("--model_name_or_path", "--input")})
    output: str = field(metadata={"help": "Destination folder (created; must be empty unless --overwrite).",
                                  **renamed("--output_dir", "--output")})
    export: bool = field(default=False, metadata={"help": "Convert our format back to the released layout."})
    chat_template: str = field(
        default="auto",
        metadata={"help": "Released chat format: 'vicuna' (Tarsier-7b/13b), 'yi' (Tarsier-34b) or 'auto' (from "
                  "the tokenizer's eos/bos tokens)."},
    )
    overwrite: bool = field(default=False, metadata={"help": "Replace a non-empty output folder."})


def main(argv: list[str] | None = None) -> int:
    parser = HfArgumentParser(ConvertArguments, **help_text(
        "Convert a released Tarsier or Tarsier2 checkpoint folder into this repository's format (or back with "
        "--export).",
        "tarsier-convert --model_name_or_path Tarsier-7b --output_dir tarsier-7b-hf",
        usage="%(prog)s --model_name_or_path FOLDER --output_dir FOLDER [--export] [--overwrite] [options]"))
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from tarsier_hf.hub import tarsier2  # imports this module, so not at its top

    try:
        if tarsier2.handles(args.input, export=args.export):
            output = tarsier2.run(args.input, args.output, export=args.export, chat_template=args.chat_template,
                                  overwrite=args.overwrite)
        elif args.export:
            output = export_released(args.input, args.output, overwrite=args.overwrite)
        else:
            output = convert_released(args.input, args.output, chat_template=args.chat_template,
                                      overwrite=args.overwrite)
    except CheckpointError as error:
        raise SystemExit(f"error: {error}") from None
    logger.info("wrote %s", output)
    return 0


if __name__ == "__main__":
    main()
