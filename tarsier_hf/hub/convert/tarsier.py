"""Convert a released Tarsier checkpoint (Tarsier-7b / Tarsier-34b) into this repository's format, and back.

    # released layout -> ours (loads with AutoModelForImageTextToText / AutoProcessor, trust_remote_code=True)
    tarsier-convert --model_name_or_path Tarsier-7b --output_dir tarsier-7b-hf
    # ours -> released layout (for engines that serve the released layout, e.g. vLLM's Tarsier support)
    tarsier-convert --model_name_or_path tarsier-7b-hf --output_dir Tarsier-7b-released --export

This module holds the two directions; `tarsier_layout.py` maps the weight names and config.json,
`tarsier_processor.py` the tokenizer rows, chat format, image processor and generation config, and `shards.py`
streams the weights shard by shard (peak memory near the largest shard, so a 34B checkpoint converts on a machine
that could never hold it; export -> convert reproduces the converted folder byte for byte).

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
  (our `UniformSampling`); `tasks/inference_benchmark.py`: 8 frames by default, greedy, 512 new tokens.
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

import logging
import re
from pathlib import Path

from transformers import AutoTokenizer

from configuration_tarsier import TarsierConfig
from processing_tarsier import FRAME_END_TOKEN, IMAGE_NEWLINE_TOKEN, IMAGE_TOKEN, VIDEO_TOKEN, TarsierProcessor

from tarsier_hf.hub.checkpoint import CheckpointError, copy_code_files, read_json
from tarsier_hf.hub.convert.folders import CARRIED_FILES, copy_present, load_tokenizer, prepare_output, write_json
from tarsier_hf.hub.convert.shards import check_weights_fit, list_shards, stream_shards, tensor_shapes
from tarsier_hf.hub.convert.tarsier_layout import (drop_rebuilt, ours_to_released, read_released_config,
                                                   released_config_from_tarsier, released_to_ours, released_value,
                                                   tarsier_config_from_released)
from tarsier_hf.hub.convert.tarsier_processor import (CHAT_SEPARATORS, CLIP_MEAN, CLIP_STD, build_generation_config,
                                                      build_image_processor, detect_chat_format, map_special_tokens,
                                                      released_chat_template, released_tokenizer_fields,
                                                      write_legacy_bpe_merges)
from tarsier_hf.hub.model_card import render_model_card

logger = logging.getLogger(__name__)


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


def convert_released(input_dir, output_dir, chat_template: str = "auto", overwrite: bool = False) -> Path:
    """Released Tarsier folder -> our folder (config, weights, tokenizer, processor, generation config, code,
    model card). Returns the output path."""
    source, output = Path(input_dir), Path(output_dir)
    released = read_released_config(source)
    shards = list_shards(source)
    shapes = tensor_shapes(shards, drop_rebuilt(released_to_ours, log=False))
    tokenizer = load_tokenizer(source)
    vocab_size = released["text_config"].get("vocab_size", released.get("vocab_size"))
    if vocab_size is None:
        raise CheckpointError(f"{source / 'config.json'}: text_config.vocab_size is missing")
    token_ids = map_special_tokens(
        tokenizer,
        released_value(released, "image_token_index"),
        released_value(released, "image_newline_idx"),
        released_value(released, "image_new_idx"),
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

    prepare_output(output, overwrite, source)
    stream_shards(shards, output, drop_rebuilt(released_to_ours), "converting shards")
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

    prepare_output(output, overwrite, source)
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
