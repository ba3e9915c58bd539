"""Model cards: Hub metadata that transformers and the Hub understand, and `tarsier_hf.hub.publish` writing a card for
a folder that has none (a plain `save_pretrained`) or only `push_to_hub`'s placeholder."""

from __future__ import annotations

import shutil

import pytest
from huggingface_hub import ModelCard, ModelCardData

from tarsier_hf.hub import publish as hub_publish
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
    """A copy of a checkpoint written by plain `save_pretrained` (no README.md)."""
    folder, _, _ = tiny_tarsier
    copy = tmp_path / "tarsier-plain"
    shutil.copytree(folder, copy)
    assert not (copy / "README.md").exists()
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
