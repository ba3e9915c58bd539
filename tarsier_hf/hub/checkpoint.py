"""What a Tarsier checkpoint folder holds: the one list of required files, shared by conversion, training and
publishing.

A full checkpoint loads with `trust_remote_code=True`: `config.json` and `processor_config.json` carry an
`auto_map` naming the remote-code files, which travel with the weights together with the files those import
(`CODE_FILES`: `processing_tarsier.py` imports `video_processing_tarsier.py`, which no `auto_map` names). A Tarsier2
(Qwen2-VL) folder needs no model `auto_map` (transformers' own class loads it); its processor's remote code is
checked alike. A LoRA run of
`train_sft.py` writes an adapter folder instead (`adapter_config.json` + `adapter_model.safetensors`, with the
processor), which loads on its base model with peft.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
from pathlib import Path

from transformers.dynamic_module_utils import get_relative_imports
from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

import configuration_tarsier

# The remote-code modules, found where the running code imports them from (the repo root, or site-packages).
CODE_FILES = ("configuration_tarsier.py", "modeling_tarsier.py", "processing_tarsier.py", "video_processing_tarsier.py",
              "frame_sampling_tarsier.py", "media_loading_tarsier.py", "video_reader_tarsier.py",
              "media_limits_tarsier.py", "model_card_tarsier.py")
CODE_DIR = Path(configuration_tarsier.__file__).resolve().parent

INDEX_FILE = "model.safetensors.index.json"
ADAPTER_CONFIG = "adapter_config.json"
TRAINER_STATE = "trainer_state.json"  # the Trainer's log history and step count, written next to the final weights
# Both kinds of folder carry the processor (tokenizer, chat template, frame settings).
PROCESSOR_FILES = ("processor_config.json", "chat_template.jinja", "tokenizer_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
REQUIRED_FILES = ("config.json", "generation_config.json", *PROCESSOR_FILES)
ADAPTER_REQUIRED_FILES = (ADAPTER_CONFIG, "adapter_model.safetensors", *PROCESSOR_FILES)
# Not part of a checkpoint: training by-products next to the final weights (intermediate checkpoints, logs, skip
# logs, the trainer's state and arguments, and in a `checkpoint-N` folder its optimizer, scheduler, scaler and RNG
# states; the base model / merged copy a LoRA run writes beside its adapter: publish those folders separately),
# caches and partial downloads.
IGNORED = ("checkpoint-*", "runs", "base_model", "merged", "skipped_samples*.jsonl", "bad_rows.jsonl",
           "training_args.bin", TRAINER_STATE, "optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state*.pth",
           "__pycache__", ".*", "*.pyc", "*.lock", "*.tmp", "*.incomplete")


class CheckpointError(ValueError):
    """The folder is not a complete checkpoint; the message names the file and the cause."""


def copy_code_files(output_dir: str | os.PathLike) -> list[str]:
    """Copy the remote-code modules next to a checkpoint where they are missing (`save_pretrained` of a model
    loaded from them already writes them). Returns their paths in `output_dir`."""
    copied = []
    for name in CODE_FILES:
        target = Path(output_dir) / name
        if not target.exists():
            shutil.copyfile(CODE_DIR / name, target)
        copied.append(str(target))
    return copied


def read_json(path: Path) -> dict:
    """A JSON object from `path`; `CheckpointError` naming the file when it is missing or not JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: invalid JSON ({error})") from None


def _module_files(auto_map: dict, source: Path) -> set[str]:
    """`{"AutoModel": "modeling_tarsier.TarsierModel", ...}` -> `{"modeling_tarsier.py"}`."""
    files = set()
    for name, reference in auto_map.items():
        for ref in reference if isinstance(reference, (list, tuple)) else [reference]:
            if ref is None or "--" in ref:  # no class, or a class in another Hub repository
                continue
            if "." not in ref:
                raise CheckpointError(f"{source}: auto_map[{name!r}] = {ref!r} is not 'module.Class'")
            files.add(ref.rsplit(".", 1)[0] + ".py")
    return files


def _with_relative_imports(folder: Path, names: set[str]) -> set[str]:
    """`names` and, recursively, the modules they import relatively (`from .x import y`), as transformers' module
    cache copies them: `{"processing_tarsier.py"}` -> also `video_processing_tarsier.py`, `configuration_tarsier.py`."""
    needed, todo = set(), sorted(names)
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            if (folder / name).is_file():
                todo.extend(f"{module}.py" for module in get_relative_imports(folder / name))
    return needed


def _check_weights(folder: Path, files: list[str]) -> None:
    present, shards = set(files), sorted(name for name in files if name.endswith(".safetensors"))
    if INDEX_FILE in present:
        weight_map = read_json(folder / INDEX_FILE).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{folder / INDEX_FILE}: no weight_map")
        indexed = set(weight_map.values())
        absent = sorted(indexed - present)
        if absent:
            raise CheckpointError(f"{folder / INDEX_FILE}: lists shards that are missing: {absent}")
        stray = sorted(set(shards) - indexed)
        if stray:
            raise CheckpointError(f"{folder}: safetensors files not listed in {INDEX_FILE}: {stray}")
    elif shards != ["model.safetensors"]:
        raise CheckpointError(f"{folder}: no {INDEX_FILE} and no single model.safetensors (found {shards or 'none'})")


def check_checkpoint(folder: str | os.PathLike) -> list[str]:
    """Check that `folder` is a complete checkpoint (full or LoRA adapter); return the files that belong to it
    (sorted names, `IGNORED` left out).

    Raises:
        CheckpointError: naming the missing or inconsistent file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a folder")
    files: list[str] = []
    for path in sorted(folder.iterdir()):
        if any(fnmatch.fnmatch(path.name, pattern) for pattern in IGNORED):
            continue
        if path.is_dir():
            raise CheckpointError(f"{path}: unexpected sub-folder in a checkpoint folder")
        files.append(path.name)
    present = set(files)
    adapter = ADAPTER_CONFIG in present

    missing = [name for name in (ADAPTER_REQUIRED_FILES if adapter else REQUIRED_FILES) if name not in present]
    if not any(name in present for name in TOKENIZER_FILES):
        missing.append(" or ".join(TOKENIZER_FILES))
    if missing:
        raise CheckpointError(f"{folder}: missing {', '.join(missing)}")

    processor_map = read_json(folder / "processor_config.json").get("auto_map")
    if not isinstance(processor_map, dict) or "AutoProcessor" not in processor_map:
        raise CheckpointError(f"{folder / 'processor_config.json'}: no auto_map['AutoProcessor']")
    code = _module_files(processor_map, folder / "processor_config.json")
    if not adapter:
        config = read_json(folder / "config.json")
        auto_map = config.get("auto_map")
        if config.get("model_type") in CONFIG_MAPPING_NAMES:  # a transformers model (Qwen2-VL): its own class loads it
            auto_map = auto_map or {}
        elif not isinstance(auto_map, dict) or not auto_map:
            raise CheckpointError(f"{folder / 'config.json'}: no auto_map, so the model cannot load with "
                                  "trust_remote_code")
        code |= _module_files(auto_map, folder / "config.json")
        _check_weights(folder, files)
    absent_code = sorted(_with_relative_imports(folder, code) - present)
    if absent_code:
        raise CheckpointError(f"{folder}: code files named by auto_map (or imported by them) are missing: {absent_code}")
    return files
