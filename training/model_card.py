"""Model card and upload folder for `push_to_hub` of a trained Tarsier."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

CODE_FILES = ("configuration_tarsier.py", "modeling_tarsier.py", "processing_tarsier.py")
# What `push_to_hub` leaves out of the output folder: intermediate checkpoints, logs, the skip log, and the base
# model / merged copy a LoRA run writes next to its adapter (push those folders separately if wanted).
UPLOAD_IGNORE = ["checkpoint-*", "checkpoint-*/*", "runs/*", "skipped_samples*.jsonl", "*.lock", ".cache/*",
                 "base_model/*", "merged/*", "training_args.bin"]


def render_model_card(
    model_name: str,
    base_model: str | None,
    datasets: list[str],
    training: dict[str, Any],
    is_adapter: bool = False,
) -> str:
    """
    Markdown model card with Hub YAML metadata: what the model is, how to load it, how it was trained.

    Args:
        model_name: the repository name shown as title.
        base_model: the checkpoint training started from (or a description of the parts it was built from).
        datasets: dataset paths / Hub ids used for training.
        training: hyperparameters and recipe options to list (name -> value).
        is_adapter: the folder holds a LoRA adapter rather than full weights.
    """
    meta = ["---", "library_name: " + ("peft" if is_adapter else "transformers"), "pipeline_tag: video-text-to-text"]
    meta += ["tags:", "- tarsier", "- video-description", "- trl", "- sft"]
    if base_model and "/" in base_model and not os.path.exists(base_model):
        meta.append(f"base_model: {base_model}")
    hub_datasets = [d for d in datasets if d.count("/") == 1 and not os.path.exists(d)]
    if hub_datasets:
        meta += ["datasets:"] + [f"- {d}" for d in hub_datasets]
    meta.append("---")
    rows = "\n".join(f"| `{key}` | `{json.dumps(value) if not isinstance(value, str) else value}` |"
                     for key, value in training.items())
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
    body = f"""
# {model_name}

A Tarsier video description model (frames encoded one by one by a frozen vision tower, projected by an MLP,
and modelled over time by the language model), fine-tuned with TRL's `SFTTrainer` by `train_sft.py`.

- Started from: {base_model or "unknown"}
- Training data: {", ".join(datasets) or "unknown"}

## Use

The model and processor code travel with the weights (`{"`, `".join(CODE_FILES)}`), so loading needs
`trust_remote_code=True`:

```python
{load}

conversation = [{{"role": "user", "content": [{{"type": "video", "path": "clip.mp4"}},
                                              {{"type": "text", "text": "Describe the video in detail."}}]}}]
text = processor.apply_chat_template(conversation, add_generation_prompt=True)
inputs = processor(text=text, videos=["clip.mp4"], num_frames=8)
output = model.generate(**inputs, max_new_tokens=256)
print(processor.tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```

## Training

| option | value |
|---|---|
{rows}

Recipe: Wang et al., *Tarsier: Recipes for Training and Evaluating Large Video Description Models* (2024),
section 3.2 and Appendix A.
"""
    return "\n".join(meta) + "\n" + body


def prepare_hub_folder(output_dir: str | os.PathLike, card: str) -> list[str]:
    """
    Write the model card into `output_dir` and return the files `push_to_hub` would upload (relative paths).

    Raises `FileNotFoundError` when the folder lacks weights, config or the processor.
    """
    output_dir = Path(output_dir)
    (output_dir / "README.md").write_text(card, encoding="utf-8")
    import fnmatch

    files = sorted(
        str(p.relative_to(output_dir))
        for p in output_dir.rglob("*")
        if p.is_file() and not any(fnmatch.fnmatch(str(p.relative_to(output_dir)), pat) for pat in UPLOAD_IGNORE)
    )
    is_adapter = "adapter_config.json" in files
    needed = ["adapter_config.json"] if is_adapter else ["config.json", "processor_config.json", *CODE_FILES]
    missing = [name for name in needed if name not in files]
    if not any(f.endswith((".safetensors", ".bin")) for f in files):
        missing.append("*.safetensors")
    if missing:
        raise FileNotFoundError(f"{output_dir}: cannot push, missing {missing}")
    return files


def push_folder(output_dir: str | os.PathLike, repo_id: str, private: bool | None = None, token: str | None = None) -> str:
    """Create the Hub repository if needed and upload the prepared folder. Returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id, folder_path=str(output_dir), ignore_patterns=UPLOAD_IGNORE,
        commit_message="Upload Tarsier trained with train_sft.py",
    )
    return str(getattr(commit, "commit_url", commit))
