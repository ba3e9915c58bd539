"""The model card of a Tarsier checkpoint (`README.md`: Hub YAML metadata, what the model is, how to load it, how
it was trained).

It is remote code beside `modeling_tarsier.py`, which imports it relatively, because a checkpoint carries its card
from `TarsierForConditionalGeneration.save_pretrained` on and remote code cannot import the tarsier_hf package; so
`save_pretrained`, `push_to_hub`, train_sft.py and tarsier-publish (through tarsier_hf.hub.model_card) write one and
the same card.
"""

import json
import os
from typing import Any


CARD_FILE = "README.md"
# Hub metadata. `pipeline_tag` must be a task transformers' `pipeline` and the Hub widgets know: video models in
# transformers (LLaVA-NeXT-Video, Qwen2-VL) are served by `pipeline("image-text-to-text")`; the tags say "video".
PIPELINE_TAG = "image-text-to-text"
TAGS = ["tarsier", "video", "video-text-to-text", "video-description"]
# The heading of huggingface_hub's default card template (huggingface_hub/templates/modelcard_template.md) when no
# model id is given, which is what transformers' `push_to_hub` writes for a repository without a card
# (transformers/utils/hub.py, `create_and_tag_model_card`).
PLACEHOLDER_CARD_HEADING = "# Model Card for Model ID"


def is_placeholder_card(path: str | os.PathLike) -> bool:
    """True when the card at `path` is huggingface_hub's placeholder."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        return PLACEHOLDER_CARD_HEADING in handle.read()


def card_details(config: dict) -> dict[str, Any]:
    """Architecture facts for a card, from a checkpoint's `config.json` (as a dict)."""
    vision, text = config.get("vision_config") or {}, config.get("text_config") or {}
    details = {
        "vision tower": vision.get("model_type"),
        "vision image_size / patch_size": (f"{vision.get('image_size')} / {vision.get('patch_size')}"
                                           if vision.get("image_size") else None),
        "language model": text.get("model_type"),
        "language model hidden_size / layers": f"{text.get('hidden_size')} / {text.get('num_hidden_layers')}",
        "use_frame_separators": config.get("use_frame_separators"),
    }
    return {key: value for key, value in details.items() if value is not None}


def render_model_card(
    model_name: str,
    base_model: str | None = None,
    datasets: list[str] | tuple[str, ...] = (),
    training: dict[str, Any] | None = None,
    is_adapter: bool = False,
    details: dict[str, Any] | None = None,
    license: str | None = None,
    origin: str | None = None,
    notes: str | None = None,
    qwen2_vl: bool = False,
) -> str:
    """
    Markdown model card with Hub YAML metadata: what the model is, how to load it, how it was trained.

    Args:
        model_name: the repository name shown as title and used in the loading snippet.
        base_model: the checkpoint training started from (or a description of the parts it was built from).
        datasets: dataset paths / Hub ids used for training.
        training: hyperparameters and recipe options to list (name -> value), for a model trained by
            `train_sft.py`; None for a checkpoint of unknown training (no training section, no TRL tags).
        is_adapter: the folder holds a LoRA adapter rather than full weights.
        details: architecture facts to list (name -> value), e.g. from `card_details`.
        license: the Hub license id (e.g. a released checkpoint's own); None leaves it out.
        origin: how the weights came to be, ending the card's first sentence (default: from `training`).
        notes: a closing Markdown paragraph (e.g. how to export a converted checkpoint back).
        qwen2_vl: a Tarsier2 / Qwen2-VL checkpoint: transformers' own model class loads it without remote code.
    """
    from huggingface_hub import ModelCardData

    hub_base = base_model if base_model and "/" in base_model and not os.path.exists(base_model) else None
    hub_datasets = [d for d in datasets if d.count("/") == 1 and not os.path.exists(d)]
    metadata = ModelCardData(
        library_name="peft" if is_adapter else "transformers",
        pipeline_tag=PIPELINE_TAG,
        tags=TAGS + (["trl", "sft"] if training is not None else []),
        base_model=hub_base,
        datasets=hub_datasets or None,
        license=license,
    )
    remote = "" if qwen2_vl else ", trust_remote_code=True"
    load = (
        "from peft import PeftModel\n"
        "from transformers import AutoModelForImageTextToText, AutoProcessor\n\n"
        f'base = AutoModelForImageTextToText.from_pretrained("{base_model}"{remote})\n'
        f'model = PeftModel.from_pretrained(base, "{model_name}").merge_and_unload()\n'
        f'processor = AutoProcessor.from_pretrained("{base_model}", trust_remote_code=True)'
        if is_adapter
        else "from transformers import AutoModelForImageTextToText, AutoProcessor\n\n"
        f'model = AutoModelForImageTextToText.from_pretrained("{model_name}"{remote})\n'
        f'processor = AutoProcessor.from_pretrained("{model_name}", trust_remote_code=True)'
    )
    what = ("A Tarsier2 video description model (Qwen2-VL: a vision transformer over 2-frame temporal patches whose "
            "merged patches the language model reads with multimodal rotary positions)" if qwen2_vl else
            "A Tarsier video description model (frames encoded one by one by a vision tower, projected by an MLP,\n"
            "and modelled over time by the language model)")
    use = ("The model is transformers' own `Qwen2VLForConditionalGeneration`; the processor's torchvision-free code\n"
           "(`processing_tarsier2.py`) travels with the weights and loads with `trust_remote_code=True`:" if qwen2_vl
           else "The model and processor code travel with the weights (the `*_tarsier.py` files), so loading needs\n"
           "`trust_remote_code=True`:")
    if origin is None:
        origin = "fine-tuned with TRL's `SFTTrainer` by `train_sft.py`" if training is not None else "in transformers format"
    facts = [f"- Started from: {base_model}"] if base_model else []
    if datasets:
        facts.append(f"- Training data: {', '.join(datasets)}")
    body = f"""
# {model_name}

{what}, {origin}.
{"".join(chr(10) + fact for fact in facts)}

## Use

{use}

```python
{load}

conversation = [{{"role": "user", "content": [{{"type": "video", "path": "clip.mp4"}},
                                              {{"type": "text", "text": "Describe the video in detail."}}]}}]
inputs = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True, return_dict=True,
                                       return_tensors="pt")
output = model.generate(**inputs, max_new_tokens=256, do_sample=False)
print(processor.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0])
```

Serve it on an OpenAI-compatible endpoint with `tarsier-serve {model_name}` (from the tarsier-hf code).
"""
    if details:
        body += "\n## Model\n\n" + _card_table(details) + "\n"
    if training is not None:
        body += f"""
## Training

{_card_table(training)}

Recipe: Wang et al., *Tarsier: Recipes for Training and Evaluating Large Video Description Models* (2024),
section 3.2 and Appendix A.
"""
    if notes:
        body += "\n" + notes.strip() + "\n"
    return f"---\n{metadata.to_yaml()}\n---\n{body}"


def _card_table(values: dict[str, Any]) -> str:
    rows = "\n".join(f"| `{key}` | `{value if isinstance(value, str) else json.dumps(value)}` |"
                      for key, value in values.items())
    return "| option | value |\n|---|---|\n" + rows


__all__ = ["CARD_FILE", "PIPELINE_TAG", "PLACEHOLDER_CARD_HEADING", "TAGS", "card_details", "is_placeholder_card",
           "render_model_card"]
