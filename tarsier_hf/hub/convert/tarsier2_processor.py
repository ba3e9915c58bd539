"""The processor side of a released Tarsier2 checkpoint: its token ids, chat template (read, rebuilt as Qwen2-VL's
ChatML and checked to render alike) and pixel bounds (facts in `tarsier2.py`'s docstring)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from jinja2 import TemplateError
from transformers import Qwen2VLConfig

from tarsier_hf.hub.checkpoint import CheckpointError, read_json

# config.json id key -> the Qwen2-VL token it must name in the tokenizer.
TOKEN_KEYS = {
    "image_token_id": "<|image_pad|>",
    "video_token_id": "<|video_pad|>",
    "vision_start_token_id": "<|vision_start|>",
    "vision_end_token_id": "<|vision_end|>",
}
PREPROCESSOR_FILE = "preprocessor_config.json"


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

