"""Publish a Tarsier checkpoint folder (converted, or trained by `train_sft.py`) to the Hugging Face Hub.

    python -m tarsier_hf.hub.publish --folder tarsier-7b-hf --repo_id me/tarsier-7b-hf [--private] [--dry_run]

`push_to_hub` first builds the exact folder it will upload (`prepare_upload_folder`): it checks
(`tarsier_hf.hub.checkpoint.check_checkpoint`) that the checkpoint is complete and loadable as remote code (config with `auto_map` and the code files it names, every
shard of the weight index, tokenizer, processor config, chat template, generation config) and copies only the
checkpoint's files into a staging folder, leaving out training by-products, caches and hidden files. A folder without a model card,
or with only the placeholder card `push_to_hub` writes ("Model Card for Model ID"), gets a Tarsier card generated
from its config (`tarsier_hf.hub.model_card`). Only then does it create the repository and upload that staging folder
in one commit. `--dry_run` stops after the staging
folder, so what would be uploaded can be inspected without a network connection or a token.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import HfApi
from transformers import HfArgumentParser

from tarsier_hf.hub.checkpoint import CheckpointError, check_checkpoint
from tarsier_hf.hub.model_card import card_details_from_folder, render_model_card

logger = logging.getLogger(__name__)

CARD_FILE = "README.md"
# The heading of huggingface_hub's default card template (huggingface_hub/templates/modelcard_template.md) when no
# model id is given, which is what transformers' `push_to_hub` uploads for a folder without a card
# (transformers/utils/hub.py, `create_and_tag_model_card`).
PLACEHOLDER_CARD_HEADING = "# Model Card for Model ID"


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
            raise CheckpointError(f"{staging}: staging folder exists and is not empty")
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
        card = render_model_card(model_name or source.resolve().name, details=card_details_from_folder(source))
        (staging / CARD_FILE).write_text(card, encoding="utf-8")
        logger.info("%s: no model card, generated %s", source, staging / CARD_FILE)
    return staging


def push_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    staging_dir: str | os.PathLike | None = None,
    private: bool | None = False,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str = "Upload Tarsier checkpoint (converted with tarsier_hf/hub/convert.py)",
    dry_run: bool = False,
    model_name: str | None = None,
) -> UploadPlan:
    """Prepare the upload folder, then create `repo_id` (if needed) and upload the folder in one commit.

    Args:
        folder: a converted checkpoint folder.
        repo_id: `"namespace/name"` on the Hub.
        staging_dir: where the upload folder is built (a temporary folder when None).
        private, token, revision, commit_message: passed to `huggingface_hub` (`private=None`: the account's default).
        dry_run: stop after preparing the folder (no network access).
        model_name: the title of a generated card (default: `repo_id`).

    Returns:
        The `UploadPlan` (staging folder, file list, and the commit URL once uploaded).
    """
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"repo_id {repo_id!r} must look like 'namespace/name'")
    staging = prepare_upload_folder(folder, staging_dir, model_name=model_name or repo_id)
    plan = UploadPlan(repo_id=repo_id, folder=staging, files=sorted(p.name for p in staging.iterdir()),
                      private=private, revision=revision, commit_message=commit_message)
    if dry_run:
        logger.info("dry run: %d files in %s would go to %s", len(plan.files), staging, repo_id)
        return plan
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    commit = api.upload_folder(repo_id=repo_id, folder_path=str(staging), repo_type="model", revision=revision,
                               commit_message=commit_message)
    plan.commit_url = getattr(commit, "commit_url", None) or str(commit)
    return plan


@dataclass
class PublishArguments:
    """Command-line arguments of `python -m tarsier_hf.hub.publish`."""

    folder: str = field(metadata={"help": "Converted checkpoint folder."})
    repo_id: str = field(metadata={"help": "Hub repository, 'namespace/name'."})
    private: bool = field(default=False, metadata={"help": "Create the repository as private."})
    revision: str | None = field(default=None, metadata={"help": "Branch to commit to."})
    staging_dir: str | None = field(default=None, metadata={"help": "Where to build the upload folder."})
    dry_run: bool = field(default=False, metadata={"help": "Only build and list the upload folder."})


def main(argv: list[str] | None = None) -> int:
    """`tarsier-publish`: checks and uploads the folder (`push_to_hub`), prints the files and the commit URL;
    returns the exit status."""
    (args,) = HfArgumentParser(PublishArguments).parse_args_into_dataclasses(args=argv)
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
