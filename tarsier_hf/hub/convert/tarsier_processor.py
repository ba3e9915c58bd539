"""The processor side of a released Tarsier checkpoint: its tokenizer rows, chat format, image processor and
generation config, in this repository's terms and back (facts in `tarsier.py`'s docstring)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tokenizers import AddedToken
from transformers import CLIPImageProcessorPil, GenerationConfig, SiglipImageProcessorPil

from processing_tarsier import CHAT_TEMPLATES, FRAME_END_TOKEN, IMAGE_NEWLINE_TOKEN, IMAGE_TOKEN, VIDEO_TOKEN

from tarsier_hf.hub.checkpoint import CheckpointError

logger = logging.getLogger(__name__)

# What ends a finished assistant turn in the released conversation templates (tools/conversation.py).
CHAT_SEPARATORS = {"vicuna": "</s>", "yi": "<|endoftext|>"}
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


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
