"""Model cards: Hub metadata that transformers and the Hub understand, and `tarsier_hf.hub.publish` writing a card for
a folder that has none (a plain `save_pretrained`) or only `push_to_hub`'s placeholder."""

from __future__ import annotations

import shutil

import pytest
from huggingface_hub import ModelCard, ModelCardData

from tarsier_hf.hub import publish as hub_publish
from tarsier_hf.hub.checkpoint import CODE_FILES, CheckpointError, check_checkpoint
from tarsier_hf.hub.model_card import render_model_card


def _check_metadata(card_text: str) -> ModelCard:
    from transformers.pipelines import SUPPORTED_TASKS

    card = ModelCard(card_text)  # parsed by huggingface_hub as the Hub does
    assert card.data.pipeline_tag in SUPPORTED_TASKS  # a task `pipeline(...)` accepts
    assert card.data.pipeline_tag == "image-text-to-text"
    assert "video" in card.data.tags and card.data.library_name == "transformers"
    return card


def test_trained_card_metadata():
    card = _check_metadata(render_model_card("me/tarsier-tiny", "org/base", ["org/data", "local.jsonl"],
                                             training={"learning_rate": 2e-5, "sampling": "random_segments"}))
    assert card.data.base_model == "org/base" and card.data.datasets == ["org/data"]
    assert {"trl", "sft"} <= set(card.data.tags)
    assert "## Training" in card.text and "random_segments" in card.text


@pytest.fixture()
def plain_folder(tiny_tarsier, tmp_path):
    """A copy of a checkpoint written by plain `save_pretrained`, without the card it writes (as folders saved
    before `save_pretrained` wrote one)."""
    folder, _, _ = tiny_tarsier
    copy = tmp_path / "tarsier-plain"
    shutil.copytree(folder, copy)
    (copy / "README.md").unlink()
    return copy


def test_hub_publish_generates_a_card_for_a_folder_without_one(plain_folder, tmp_path):
    plan = hub_publish.push_to_hub(plain_folder, "someone/tarsier-tiny", staging_dir=tmp_path / "up", dry_run=True)
    assert "README.md" in plan.files
    card = _check_metadata((plan.folder / "README.md").read_text())
    assert "# someone/tarsier-tiny" in card.text
    assert 'AutoModelForImageTextToText.from_pretrained("someone/tarsier-tiny", trust_remote_code=True)' in card.text
    assert "clip_vision_model" in card.text and "llama" in card.text  # architecture read from config.json
    assert "## Training" not in card.text and "trl" not in card.data.tags  # training unknown: nothing claimed
    assert not (plain_folder / "README.md").exists()  # the source folder is left as it was


def test_hub_publish_replaces_the_push_to_hub_placeholder(plain_folder, tmp_path):
    # Exactly what transformers' `push_to_hub` writes for a repository without a card
    # (transformers/utils/hub.py, create_and_tag_model_card).
    placeholder = ModelCard.from_template(
        ModelCardData(tags=[], library_name="transformers"),
        model_description="This is the model card of a 🤗 transformers model that has been pushed on the Hub. "
        "This model card has been automatically generated.",
    )
    placeholder.save(plain_folder / "README.md")
    staging = hub_publish.prepare_upload_folder(plain_folder, tmp_path / "up", model_name="someone/x")
    card = _check_metadata((staging / "README.md").read_text())
    assert "Model Card for Model ID" not in card.text and "# someone/x" in card.text


def test_hub_publish_keeps_a_real_card(plain_folder, tmp_path):
    own = "---\nlicense: apache-2.0\n---\n# My Tarsier\n\nHand-written.\n"
    (plain_folder / "README.md").write_text(own)
    staging = hub_publish.prepare_upload_folder(plain_folder, tmp_path / "up")
    assert (staging / "README.md").read_text() == own


def test_one_file_list_for_trained_converted_and_adapter_folders(plain_folder):
    """`check_checkpoint` is what training, conversion and publishing all check against: training by-products are
    left out, a LoRA adapter folder needs its adapter files and the processor, and each gap is named."""
    (plain_folder / "checkpoint-5").mkdir()
    (plain_folder / "runs").mkdir()
    (plain_folder / "bad_rows.jsonl").write_text("{}\n")
    (plain_folder / "training_args.bin").write_bytes(b"\0")
    files = check_checkpoint(plain_folder)
    assert {"config.json", "model.safetensors", "processor_config.json", "chat_template.jinja", *CODE_FILES} <= set(files)
    assert not {"checkpoint-5", "runs", "bad_rows.jsonl", "training_args.bin"} & set(files)

    (plain_folder / "stray").mkdir()
    with pytest.raises(CheckpointError, match=r"stray: unexpected sub-folder"):
        check_checkpoint(plain_folder)
    (plain_folder / "stray").rmdir()

    # No auto_map names video_processing_tarsier.py, but processing_tarsier.py imports it (`from .video_processing_
    # tarsier import ...`), so transformers' module cache needs it beside the checkpoint.
    moved = (plain_folder / "video_processing_tarsier.py").rename(plain_folder.parent / "video_processing_tarsier.py")
    with pytest.raises(CheckpointError, match=r"\(or imported by them\) are missing: \['video_processing_tarsier\.py'\]"):
        check_checkpoint(plain_folder)
    moved.rename(plain_folder / "video_processing_tarsier.py")

    # A LoRA run's folder (train_sft.py --use_peft): adapter + processor, no full weights or model config.
    adapter = plain_folder.parent / "adapter"
    adapter.mkdir()
    for name in ("processor_config.json", "chat_template.jinja", "tokenizer_config.json", "tokenizer.json", *CODE_FILES):
        shutil.copy(plain_folder / name, adapter / name)
    (adapter / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    with pytest.raises(CheckpointError, match=r"missing adapter_model\.safetensors"):
        check_checkpoint(adapter)
    shutil.copy(plain_folder / "model.safetensors", adapter / "adapter_model.safetensors")
    assert "adapter_model.safetensors" in check_checkpoint(adapter)
    (adapter / "processor_config.json").unlink()
    with pytest.raises(CheckpointError, match=r"missing processor_config\.json"):
        check_checkpoint(adapter)
