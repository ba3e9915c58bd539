"""Publish a Tarsier checkpoint folder (converted, or trained by `train_sft.py`) to the Hugging Face Hub.

    python -m tarsier_hf.hub.publish --model_name_or_path tarsier-7b-hf --repo_id me/tarsier-7b-hf [--private] [--dry_run]

`push_to_hub` first builds the exact folder it will upload (`prepare_upload_folder`): it checks
(`tarsier_hf.hub.checkpoint.check_checkpoint`) that the checkpoint is complete and loadable as remote code (config with `auto_map` and the code files it names, every
shard of the weight index, tokenizer, processor config, chat template, generation config) and copies only the
checkpoint's files into a staging folder, leaving out training by-products (trainer state, optimizer, logs),
caches and hidden files. The card is the one the folder carries (`save_pretrained` writes one, and so do
train_sft.py and tarsier-convert), re-titled for the repository when it is the unedited generated card; a folder
without a card, or with only the placeholder card `push_to_hub` writes ("Model Card for Model ID"), gets the same
card generated from its config (`tarsier_hf.hub.model_card`). Only then does it create the repository and upload
that staging folder, model and processor together, in one commit whose message says what the folder is
(`describe_checkpoint`: trained by train_sft.py and how many steps, a LoRA adapter, a converted release).
`--dry_run` stops after the staging folder, so what would be uploaded, and with which message, can be inspected
without a network connection or a token.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import HfApi
from transformers import HfArgumentParser

from tarsier_hf.cli import help_text, renamed
from tarsier_hf.hub.checkpoint import ADAPTER_CONFIG, TRAINER_STATE, CheckpointError, check_checkpoint, read_json
from tarsier_hf.hub.model_card import (CARD_FILE, card_details_from_folder, generated_card_title, is_placeholder_card,
                                       render_model_card)

logger = logging.getLogger(__name__)


@dataclass
class UploadPlan:
    """What `push_to_hub` uploads (or would upload, with `dry_run`)."""

    repo_id: str
    folder: Path
    files: list[str]
    private: bool | None = False
    revision: str | None = None
    commit_message: str = ""
    commit_url: str | None = None


def card_to_upload(folder: str | os.PathLike, model_name: str) -> str | None:
    """The card to upload instead of the folder's own `README.md`, or None to upload the folder's own.

    A folder without a card, or with only the placeholder of `push_to_hub` (or of peft's `save_pretrained`), gets
    the generated card titled `model_name` (for a LoRA adapter: loading on the base model its `adapter_config.json`
    names); so does a folder whose card is the unedited generated card of another title (what `save_pretrained`
    wrote, titled by the folder's name). Any other card (trained, converted, hand-written) is kept.
    """
    folder = Path(folder)
    card, config = folder / CARD_FILE, folder / "config.json"
    if card.is_file() and not is_placeholder_card(card):
        if not config.is_file():
            return None
        title = generated_card_title(card.read_text(encoding="utf-8", errors="replace"), card_details_from_folder(folder))
        if title is None or title == model_name:
            return None
    if (folder / ADAPTER_CONFIG).is_file():
        base = read_json(folder / ADAPTER_CONFIG).get("base_model_name_or_path")
        return render_model_card(model_name, base_model=base, is_adapter=True)
    qwen2_vl = read_json(config).get("model_type") == "qwen2_vl"  # a Tarsier2: transformers' own model class
    return render_model_card(model_name, details=card_details_from_folder(folder), qwen2_vl=qwen2_vl)


def _card_text(folder: Path) -> str:
    card = folder / CARD_FILE
    return card.read_text(encoding="utf-8", errors="replace") if card.is_file() else ""


def describe_checkpoint(folder: str | os.PathLike) -> str:
    """What the folder is, as a commit message: a LoRA adapter or full weights, trained by train_sft.py (with its
    step count from `trainer_state.json`, or known from its card's `sft` tag), converted from a released
    checkpoint (its card says so), or neither."""
    folder = Path(folder)
    what = "LoRA adapter" if (folder / ADAPTER_CONFIG).is_file() else "checkpoint"
    card = _card_text(folder)
    front = re.match(r"---\n(.*?)\n---\n", card, re.S)
    state = folder / TRAINER_STATE
    if state.is_file():
        try:
            steps = json.loads(state.read_text(encoding="utf-8")).get("global_step")
        except json.JSONDecodeError:
            steps = None
        return f"Upload Tarsier {what} trained with train_sft.py" + (f" ({steps} steps)" if steps else "")
    if front and re.search(r"^- sft$", front.group(1), re.M):
        return f"Upload Tarsier {what} trained with train_sft.py"
    if re.search(r"\bconverted\b", card[front.end() if front else 0:][:1000]):
        return f"Upload Tarsier {what} converted from a released checkpoint with tarsier-convert"
    return f"Upload Tarsier {what}"


def prepare_upload_folder(
    folder: str | os.PathLike, staging_dir: str | os.PathLike | None = None, model_name: str | None = None
) -> Path:
    """Check `folder` and copy exactly the files to upload into `staging_dir` (a new temporary folder if None).

    Files are hard-linked when the file system allows it (no extra disk for multi-GB shards), copied otherwise.
    The card is chosen by `card_to_upload` (a generated one is written into the staging folder, titled
    `model_name`, default: the folder name; the source folder is not changed).

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
            raise CheckpointError(f"{staging}: staging folder exists and is not empty")
        staging.mkdir(parents=True, exist_ok=True)
    title = model_name or source.resolve().name
    card = card_to_upload(source, title)
    for name in files:
        if name == CARD_FILE and card is not None:
            continue
        try:
            os.link(source / name, staging / name)
        except OSError:
            shutil.copy2(source / name, staging / name)
    if card is not None:
        (staging / CARD_FILE).write_text(card, encoding="utf-8")
        logger.info("%s: model card for %s generated into %s", source, title, staging / CARD_FILE)
    return staging


def push_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    staging_dir: str | os.PathLike | None = None,
    private: bool | None = False,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    dry_run: bool = False,
    model_name: str | None = None,
) -> UploadPlan:
    """Prepare the upload folder, then create `repo_id` (if needed) and upload the folder in one commit.

    Args:
        folder: a checkpoint folder (trained, converted, or saved with `save_pretrained`), model and processor.
        repo_id: `"namespace/name"` on the Hub.
        staging_dir: where the upload folder is built (a temporary folder when None).
        private, token, revision: passed to `huggingface_hub` (`private=None`: the account's default).
        commit_message: default: what the folder is (`describe_checkpoint`).
        dry_run: stop after preparing the folder (no network access).
        model_name: the title of a generated card (default: `repo_id`).

    Returns:
        The `UploadPlan` (staging folder, file list, and the commit URL once uploaded).
    """
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"repo_id {repo_id!r} must look like 'namespace/name'")
    staging = prepare_upload_folder(folder, staging_dir, model_name=model_name or repo_id)
    plan = UploadPlan(repo_id=repo_id, folder=staging, files=sorted(p.name for p in staging.iterdir()),
                      private=private, revision=revision, commit_message=commit_message or describe_checkpoint(folder))
    if dry_run:
        logger.info("dry run: %d files in %s would go to %s in one commit: %r", len(plan.files), staging, repo_id,
                    plan.commit_message)
        return plan
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    commit = api.upload_folder(repo_id=repo_id, folder_path=str(staging), repo_type="model", revision=revision,
                               commit_message=plan.commit_message)
    plan.commit_url = getattr(commit, "commit_url", None) or str(commit)
    return plan


@dataclass
class PublishArguments:
    """Command-line arguments of `python -m tarsier_hf.hub.publish`."""

    folder: str = field(metadata={"help": "Checkpoint folder (trained, converted or saved with save_pretrained).",
                                  **renamed("--model_name_or_path", "--folder")})
    repo_id: str = field(metadata={"help": "Hub repository, 'namespace/name'."})
    private: bool = field(default=False, metadata={"help": "Create the repository as private."})
    revision: str | None = field(default=None, metadata={"help": "Branch to commit to."})
    staging_dir: str | None = field(default=None, metadata={"help": "Where to build the upload folder."})
    dry_run: bool = field(default=False, metadata={"help": "Only build and list the upload folder."})


def main(argv: list[str] | None = None) -> int:
    """`tarsier-publish`: checks and uploads the folder (`push_to_hub`), prints the files and the commit URL;
    returns the exit status."""
    parser = HfArgumentParser(PublishArguments, **help_text(
        "Check a checkpoint folder and upload it, with its model card, to a Hugging Face Hub repository in one commit.",
        "tarsier-publish --model_name_or_path tarsier-7b-hf --repo_id me/tarsier-7b-hf --dry_run",
        usage="%(prog)s --model_name_or_path FOLDER --repo_id NAMESPACE/NAME [--private] [--dry_run] [options]"))
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        plan = push_to_hub(args.folder, args.repo_id, staging_dir=args.staging_dir, private=args.private,
                           revision=args.revision, dry_run=args.dry_run)
    except (CheckpointError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    for name in plan.files:
        print(plan.folder / name)
    if plan.commit_url:
        print(plan.commit_url)
    return 0


if __name__ == "__main__":
    main()
