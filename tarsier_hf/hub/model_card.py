"""Model cards (Hub metadata + usage) for Tarsier checkpoints: trained, converted, or of unknown origin."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCardData

from tarsier_hf.hub.checkpoint import CODE_FILES

# Hub metadata. `pipeline_tag` must be a task transformers' `pipeline` and the Hub widgets know: video models in
# transformers (LLaVA-NeXT-Video, Qwen2-VL) are served by `pipeline("image-text-to-text")`; the tags say "video".
PIPELINE_TAG = "image-text-to-text"
TAGS = ["tarsier", "video", "video-text-to-text", "video-description"]


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
        details: architecture facts to list (name -> value), e.g. from `card_details_from_folder`.
        license: the Hub license id (e.g. a released checkpoint's own); None leaves it out.
        origin: how the weights came to be, ending the card's first sentence (default: from `training`).
        notes: a closing Markdown paragraph (e.g. how to export a converted checkpoint back).
    """
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
    load = (
        "from peft import PeftModel\n"
        "from transformers import AutoModelForImageTextToText, AutoProcessor\n\n"
        f'base = AutoModelForImageTextToText.from_pretrained("{base_model}", trust_remote_code=True)\n'
        f'model = PeftModel.from_pretrained(base, "{model_name}").merge_and_unload()\n'
        f'processor = AutoProcessor.from_pretrained("{base_model}", trust_remote_code=True)'
        if is_adapter
        else "from transformers import AutoModelForImageTextToText, AutoProcessor\n\n"
        f'model = AutoModelForImageTextToText.from_pretrained("{model_name}", trust_remote_code=True)\n'
        f'processor = AutoProcessor.from_pretrained("{model_name}", trust_remote_code=True)'
    )
    if origin is None:
        origin = "fine-tuned with TRL's `SFTTrainer` by `train_sft.py`" if training is not None else "in transformers format"
    facts = [f"- Started from: {base_model}"] if base_model else []
    if datasets:
        facts.append(f"- Training data: {', '.join(datasets)}")
    body = f"""
# {model_name}

A Tarsier video description model (frames encoded one by one by a vision tower, projected by an MLP,
and modelled over time by the language model), {origin}.
{"".join(chr(10) + fact for fact in facts)}

## Use

The model and processor code travel with the weights (`{"`, `".join(CODE_FILES)}`), so loading needs
`trust_remote_code=True`:

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
        body += "\n## Model\n\n" + _table(details) + "\n"
    if training is not None:
        body += f"""
## Training

{_table(training)}

Recipe: Wang et al., *Tarsier: Recipes for Training and Evaluating Large Video Description Models* (2024),
section 3.2 and Appendix A.
"""
    if notes:
        body += "\n" + notes.strip() + "\n"
    return f"---\n{metadata.to_yaml()}\n---\n{body}"


def _table(values: dict[str, Any]) -> str:
    rows = "\n".join(f"| `{key}` | `{value if isinstance(value, str) else json.dumps(value)}` |"
                      for key, value in values.items())
    return "| option | value |\n|---|---|\n" + rows


def card_details_from_folder(folder: str | os.PathLike) -> dict[str, Any]:
    """Architecture facts for a card, read from a checkpoint's `config.json` and `processor_config.json`."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    vision, text = config.get("vision_config") or {}, config.get("text_config") or {}
    details = {
        "vision tower": vision.get("model_type"),
        "vision image_size / patch_size": f"{vision.get('image_size')} / {vision.get('patch_size')}",
        "language model": text.get("model_type"),
        "language model hidden_size / layers": f"{text.get('hidden_size')} / {text.get('num_hidden_layers')}",
        "use_frame_separators": config.get("use_frame_separators"),
    }
    processor_file = folder / "processor_config.json"
    if processor_file.is_file():
        processor = json.loads(processor_file.read_text(encoding="utf-8"))
        details["frames per video (default)"] = processor.get("num_frames")
        details["frame sampling (default)"] = processor.get("sampling")
    return {key: value for key, value in details.items() if value is not None}
