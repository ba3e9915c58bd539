"""Publish a converted Tarsier folder to the Hugging Face Hub.

    python -m tools.hub_publish --folder tarsier-7b-hf --repo_id me/tarsier-7b-hf [--private] [--dry_run]

`push_to_hub` first builds the exact folder it will upload (`prepare_upload_folder`): it checks that the
checkpoint is complete and loadable as remote code (config with `auto_map` and the code files it names, every
shard of the weight index, tokenizer, processor config, chat template, generation config) and copies only the
checkpoint's files into a staging folder, leaving out caches and hidden files. A folder without a model card,
or with only the placeholder card `push_to_hub` writes ("Model Card for Model ID"), gets a Tarsier card generated
from its config (`training.model_card`). Only then does it create the repository and upload that staging folder
in one commit. `--dry_run` stops after the staging
folder, so what would be uploaded can be inspected without a network connection or a token.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

INDEX_FILE = "model.safetensors.index.json"
REQUIRED_FILES = (
    "config.json",
    "generation_config.json",
    "processor_config.json",
    "chat_template.jinja",
    "tokenizer_config.json",
)
CARD_FILE = "README.md"
# The heading of huggingface_hub's default card template (huggingface_hub/templates/modelcard_template.md) when no
# model id is given, which is what transformers' `push_to_hub` uploads for a folder without a card
# (transformers/utils/hub.py, `create_and_tag_model_card`).
PLACEHOLDER_CARD_HEADING = "# Model Card for Model ID"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
SKIPPED_DIRS = {"__pycache__", ".git", ".cache", ".ipynb_checkpoints"}
SKIPPED_SUFFIXES = (".pyc", ".lock", ".tmp", ".incomplete")


class PublishError(ValueError):
    """The folder is not a complete checkpoint; the message names the file and the cause."""


@dataclass
class UploadPlan:
    """What `push_to_hub` uploads (or would upload, with `dry_run`)."""

    repo_id: str
    folder: Path
    files: list[str]
    private: bool = False
    revision: str | None = None
    commit_message: str = ""
    commit_url: str | None = None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise PublishError(f"{path}: file not found") from None
    except json.JSONDecodeError as error:
        raise PublishError(f"{path}: invalid JSON ({error})") from None


def _module_files(auto_map: dict, source: Path) -> set[str]:
    """`{"AutoModel": "modeling_tarsier.TarsierModel", ...}` -> `{"modeling_tarsier.py"}`."""
    files = set()
    for name, reference in auto_map.items():
        references = reference if isinstance(reference, (list, tuple)) else [reference]
        for ref in references:
            if ref is None:
                continue
            if "--" in ref:  # a class in another Hub repository
                continue
            if "." not in ref:
                raise PublishError(f"{source}: auto_map[{name!r}] = {ref!r} is not 'module.Class'")
            files.add(ref.rsplit(".", 1)[0] + ".py")
    return files


def check_checkpoint(folder: str | os.PathLike) -> list[str]:
    """Check that `folder` is a complete, remote-code-loadable checkpoint; return the files to upload (sorted).

    Raises:
        PublishError: naming the missing or inconsistent file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise PublishError(f"{folder}: not a folder")
    files: list[str] = []
    for path in sorted(folder.iterdir()):
        if path.is_dir():
            if path.name in SKIPPED_DIRS or path.name.startswith("."):
                continue
            raise PublishError(f"{path}: unexpected sub-folder in a checkpoint folder")
        if path.name.startswith(".") or path.name.endswith(SKIPPED_SUFFIXES):
            continue
        files.append(path.name)
    present = set(files)

    missing = [name for name in REQUIRED_FILES if name not in present]
    if not any(name in present for name in TOKENIZER_FILES):
        missing.append(" or ".join(TOKENIZER_FILES))
    if missing:
        raise PublishError(f"{folder}: missing {', '.join(missing)}")

    config = _read_json(folder / "config.json")
    auto_map = config.get("auto_map")
    if not isinstance(auto_map, dict) or not auto_map:
        raise PublishError(f"{folder / 'config.json'}: no auto_map, so the model cannot load with trust_remote_code")
    code = _module_files(auto_map, folder / "config.json")
    processor_map = _read_json(folder / "processor_config.json").get("auto_map")
    if not isinstance(processor_map, dict) or "AutoProcessor" not in processor_map:
        raise PublishError(f"{folder / 'processor_config.json'}: no auto_map['AutoProcessor']")
    code |= _module_files(processor_map, folder / "processor_config.json")
    absent_code = sorted(code - present)
    if absent_code:
        raise PublishError(f"{folder}: auto_map names code files that are missing: {absent_code}")

    shards = sorted(name for name in files if name.endswith(".safetensors"))
    if INDEX_FILE in present:
        weight_map = _read_json(folder / INDEX_FILE).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise PublishError(f"{folder / INDEX_FILE}: no weight_map")
        indexed = set(weight_map.values())
        absent = sorted(indexed - present)
        if absent:
            raise PublishError(f"{folder / INDEX_FILE}: lists shards that are missing: {absent}")
        stray = sorted(set(shards) - indexed)
        if stray:
            raise PublishError(f"{folder}: safetensors files not listed in {INDEX_FILE}: {stray}")
    elif shards != ["model.safetensors"]:
        raise PublishError(f"{folder}: no {INDEX_FILE} and no single model.safetensors (found {shards or 'none'})")
    return files


def needs_model_card(folder: str | os.PathLike) -> bool:
    """True when `folder` has no `README.md`, or only the placeholder card of `push_to_hub`."""
    card = Path(folder) / CARD_FILE
    return not card.is_file() or PLACEHOLDER_CARD_HEADING in card.read_text(encoding="utf-8", errors="replace")


def prepare_upload_folder(
    folder: str | os.PathLike, staging_dir: str | os.PathLike | None = None, model_name: str | None = None
) -> Path:
    """Check `folder` and copy exactly the files to upload into `staging_dir` (a new temporary folder if None).

    Files are hard-linked when the file system allows it (no extra disk for multi-GB shards), copied otherwise.
    When the folder has no real model card, one is generated into the staging folder (the source folder is not
    changed), titled `model_name` (default: the folder name).

    Returns:
        The staging folder; its content is what `push_to_hub` uploads.
    """
    files = check_checkpoint(folder)
    source = Path(folder)
    if staging_dir is None:
        staging = Path(tempfile.mkdtemp(prefix="tarsier-upload-"))
    else:
        staging = Path(staging_dir)
        if staging.exists() and any(staging.iterdir()):
            raise PublishError(f"{staging}: staging folder exists and is not empty")
        staging.mkdir(parents=True, exist_ok=True)
    generate_card = needs_model_card(source)
    for name in files:
        if name == CARD_FILE and generate_card:
            continue
        try:
            os.link(source / name, staging / name)
        except OSError:
            shutil.copy2(source / name, staging / name)
    if generate_card:
        from training.model_card import card_details_from_folder, render_model_card

        card = render_model_card(model_name or source.resolve().name, details=card_details_from_folder(source))
        (staging / CARD_FILE).write_text(card, encoding="utf-8")
        logger.info("%s: no model card, generated %s", source, staging / CARD_FILE)
    return staging


def push_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    staging_dir: str | os.PathLike | None = None,
    private: bool = False,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str = "Upload Tarsier checkpoint (converted with tools/convert_tarsier_checkpoint.py)",
    dry_run: bool = False,
) -> UploadPlan:
    """Prepare the upload folder, then create `repo_id` (if needed) and upload the folder in one commit.

    Args:
        folder: a converted checkpoint folder.
        repo_id: `"namespace/name"` on the Hub.
        staging_dir: where the upload folder is built (a temporary folder when None).
        private, token, revision, commit_message: passed to `huggingface_hub`.
        dry_run: stop after preparing the folder (no network access).

    Returns:
        The `UploadPlan` (staging folder, file list, and the commit URL once uploaded).
    """
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise PublishError(f"repo_id {repo_id!r} must look like 'namespace/name'")
    staging = prepare_upload_folder(folder, staging_dir, model_name=repo_id)
    plan = UploadPlan(repo_id=repo_id, folder=staging, files=sorted(p.name for p in staging.iterdir()),
                      private=private, revision=revision, commit_message=commit_message)
    if dry_run:
        logger.info("dry run: %d files in %s would go to %s", len(plan.files), staging, repo_id)
        return plan
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    commit = api.upload_folder(repo_id=repo_id, folder_path=str(staging), repo_type="model", revision=revision,
                               commit_message=commit_message)
    plan.commit_url = getattr(commit, "commit_url", None) or str(commit)
    return plan


@dataclass
class PublishArguments:
    """Command-line arguments of `python -m tools.hub_publish`."""

    folder: str = field(metadata={"help": "Converted checkpoint folder."})
    repo_id: str = field(metadata={"help": "Hub repository, 'namespace/name'."})
    private: bool = field(default=False, metadata={"help": "Create the repository as private."})
    revision: str | None = field(default=None, metadata={"help": "Branch to commit to."})
    staging_dir: str | None = field(default=None, metadata={"help": "Where to build the upload folder."})
    dry_run: bool = field(default=False, metadata={"help": "Only build and list the upload folder."})


def main(argv: list[str] | None = None) -> UploadPlan:
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(PublishArguments).parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        plan = push_to_hub(args.folder, args.repo_id, staging_dir=args.staging_dir, private=args.private,
                           revision=args.revision, dry_run=args.dry_run)
    except PublishError as error:
        raise SystemExit(f"error: {error}") from None
    for name in plan.files:
        print(plan.folder / name)
    if plan.commit_url:
        print(plan.commit_url)
    return plan


if __name__ == "__main__":
    main()
