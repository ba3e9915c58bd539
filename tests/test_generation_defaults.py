"""Generation defaults a transformers user relies on without reading our docs.

- A saved Tarsier processor pads on the left, as transformers' VLM processors do for generation
  (e.g. `models/llava/processing_llava.py`, `models/internvl/processing_internvl.py`: `"padding_side": "left"`),
  so `model.generate` on a batch of two different videos through the README snippet gives, per sample, what
  the sample gives alone.
- Generated model cards carry a `pipeline_tag` that transformers' `pipeline` knows.
"""

from __future__ import annotations

import json

import pytest
import torch

from tests.colour_clips import write_colour_clips
from tests.sensitive_tarsier import input_sensitive_copy


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return write_colour_clips(tmp_path_factory.mktemp("clips")) / "videos"


@pytest.fixture(scope="module")
def loaded(tiny_tarsier, tmp_path_factory):
    """An input-sensitive tiny Tarsier as a user loads it: Auto classes, remote code, nothing of ours imported."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder = input_sensitive_copy(tiny_tarsier[0], tmp_path_factory.mktemp("sensitive") / "tarsier")
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    return folder, model.eval(), processor


def test_saved_processor_pads_left(loaded):
    folder, _, processor = loaded
    assert processor.tokenizer.padding_side == "left"
    assert json.loads((folder / "processor_config.json").read_text())["padding_side"] == "left"
    batch = processor(text=["a", "a longer prompt"], return_tensors="pt")
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][0, -1] == 1


def test_padding_side_can_still_be_chosen(loaded):
    _, _, processor = loaded
    batch = processor(text=["a", "a longer prompt"], padding_side="right", return_tensors="pt")
    assert batch["attention_mask"][0, 0] == 1 and batch["attention_mask"][0, -1] == 0


def _readme_generate(model, processor, conversations):
    """The README's "Using a model" snippet, with a list of conversations instead of one."""
    inputs = processor.apply_chat_template(conversations, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    return processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def test_batched_generate_equals_one_by_one(loaded, clips):
    _, model, processor = loaded
    conversations = [
        [{"role": "user", "content": [{"type": "video", "path": str(clips / "red.mp4")},
                                      {"type": "text", "text": "Describe the video."}]}],
        [{"role": "user", "content": [{"type": "video", "path": str(clips / "blue.mp4")},
                                      {"type": "text", "text": "Describe the video in detail, every event in order."}]}],
    ]
    torch.manual_seed(0)
    alone = [_readme_generate(model, processor, [c])[0] for c in conversations]
    batched = _readme_generate(model, processor, conversations)
    assert all(alone) and alone[0] != alone[1]  # the two samples get different answers, so equality means something
    assert batched == alone


def test_generation_options_are_generation_config_attributes():
    """The decoding flags of every generating command are transformers' GenerationConfig options (top_k and
    repetition_penalty included), documented with GenerationConfig's own help, and end up in one GenerationConfig
    that `model.generate` receives and every result records."""
    from transformers import GenerationConfig, HfArgumentParser

    from tarsier_hf.inference.batch import InferenceArguments

    parser = HfArgumentParser(InferenceArguments)
    helps = {action.dest: action.help for action in parser._actions}
    assert helps["top_k"].startswith("GenerationConfig: The number of highest probability vocabulary tokens")
    (args,) = parser.parse_args_into_dataclasses(args=[
        "--checkpoint", "c", "--requests", "r.jsonl", "--output", "o.jsonl", "--do_sample", "--top_k", "5",
        "--repetition_penalty", "1.3", "--temperature", "0.7", "--fps", "2"])
    settings = args.settings()
    assert isinstance(settings.generation, GenerationConfig)
    assert (settings.generation.top_k, settings.generation.repetition_penalty) == (5, 1.3)
    assert settings.to_dict()["generation"] == {"max_new_tokens": 512, "do_sample": True, "temperature": 0.7,
                                                "top_k": 5, "repetition_penalty": 1.3}
    assert settings.to_dict()["frame_sampling"] == {"policy": "fps", "fps": 2.0, "max_frames": 64}
    # greedy by default (the paper's evaluation), and unset options are left to the checkpoint
    (default,) = parser.parse_args_into_dataclasses(
        args=["--checkpoint", "c", "--requests", "r", "--output", "o", "--fps", "1"])
    assert default.settings().to_dict()["generation"] == {"max_new_tokens": 512, "do_sample": False}
    (contradictory,) = parser.parse_args_into_dataclasses(args=[
        "--checkpoint", "c", "--requests", "r", "--output", "o", "--temperature", "0.7", "--fps", "1"])
    with pytest.raises(ValueError, match="temperature"):  # sampling options without --do_sample
        contradictory.settings()
