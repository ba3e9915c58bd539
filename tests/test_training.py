"""Tests of train_sft.py and training/: data readers, the video collator, recipes, and real (multi-process) runs.

The model is a tiny Tarsier (2-layer 64-hidden llama with the real SmolLM2 tokenizer, 28 px CLIP with 14 px
patches: 7 positions per frame) trained on real PyAV-encoded videos written by `write_video`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from tarsier_hf.hub.checkpoint import CODE_FILES, check_checkpoint
from tests.colour_clips import COLORS, conversation_row
from tests.training_runs import child_env, run_checked, sft_args, trainer_state, weights
from frame_sampling_tarsier import InstructionSampling, RandomSegmentsSampling, UniformSampling

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------------------
# Data readers, prompt pools, mixing
# ---------------------------------------------------------------------------------------------------------------


def test_normalize_reads_all_three_layouts(dream1k_path):
    from tarsier_hf.training.layouts import normalize_row

    ours = normalize_row(conversation_row("videos/a.mp4", "Yes.", 3), "/data")
    assert ours["messages"][0]["content"][0] == {"type": "video", "path": "/data/videos/a.mp4"}
    assert (ours["task"], ours["source"], ours["idx"]) == ("caption_short", "colors", 3)

    released = {
        "messages": [
            {"role": "user", "content": [{"type": "video", "video": {"video_file": "clips/b.mp4"}},
                                         {"type": "text", "text": "Describe the video in detail."}]},
            {"role": "assistant", "content": [{"type": "text", "text": "A dog runs."}]},
        ],
        "dataset": "webvid", "task": "video/caption", "idx": 9,
    }
    row = normalize_row(released, "/root")
    assert row["messages"][0]["content"][0] == {"type": "video", "path": "/root/clips/b.mp4"}
    assert row["source"] == "webvid"

    frames = dict(released, messages=[{"role": "user", "content": [
        {"type": "video", "video": {"video_file": ["f/1.jpg", "f/2.jpg"]}}]}, released["messages"][1]])
    assert normalize_row(frames, "/r")["messages"][0]["content"][0]["paths"] == ["/r/f/1.jpg", "/r/f/2.jpg"]

    dream = json.loads(dream1k_path.read_text().splitlines()[0])
    dream["video_file"] = "dream/1.mp4"
    row = normalize_row(dream, "/videos")
    user, assistant = row["messages"]
    assert user["content"][0] == {"type": "video", "path": "/videos/dream/1.mp4"}
    assert user["content"][1] == {"type": "text", "text": "Describe the video in detail."}
    assert assistant["content"][0]["text"] == dream["text"]["response"]
    assert row["source"] == dream["dataset"]

    with pytest.raises(ValueError, match="idx=5.*not a known layout"):
        normalize_row({"idx": 5, "caption": "x"}, None)
    with pytest.raises(ValueError, match="idx=6.*no file path"):
        normalize_row({"idx": 6, "messages": [{"role": "user", "content": [{"type": "video"}]},
                                              {"role": "assistant", "content": "a"}]}, None)


def test_prompt_pools_and_mixing_weights(tmp_path):
    import random

    from tarsier_hf.training.layouts import normalize_row
    from tarsier_hf.training.mixing import mixture_indices, parse_weights
    from tarsier_hf.training.prompt_pools import apply_prompt_pool, load_prompt_pools

    pools_file = tmp_path / "pools.json"
    pools_file.write_text(json.dumps({"count": ["How many?", "Count them."]}))
    pools = load_prompt_pools(pools_file)
    assert "caption_detailed" in pools and pools["count"] == ["How many?", "Count them."]
    row = normalize_row({"task": "count", "idx": 1, "messages": [
        {"role": "user", "content": [{"type": "video", "path": "v.mp4"}]},
        {"role": "assistant", "content": "3"}]}, None)
    seen = {apply_prompt_pool(json.loads(json.dumps(row)), pools, random.Random(s), False)["messages"][0]["content"][-1]["text"]
            for s in range(20)}
    assert seen == {"How many?", "Count them."}
    row["task"] = "unknown"
    with pytest.raises(ValueError, match="task 'unknown' has no prompt pool"):
        apply_prompt_pool(row, pools, random.Random(0), False)

    sources = ["webvid"] * 100 + ["ssv2"] * 10 + ["coco"] * 7
    indices = mixture_indices(sources, parse_weights(["webvid=0.3", "ssv2=2.5"]), seed=0)
    picked = [sources[i] for i in indices]
    assert (picked.count("webvid"), picked.count("ssv2"), picked.count("coco")) == (30, 25, 7)
    assert len(set(i for i in indices if sources[i] == "webvid")) == 30  # down-sampling draws without replacement
    with pytest.raises(ValueError, match="unknown sources"):
        mixture_indices(sources, {"kinetics": 2.0}, seed=0)
    with pytest.raises(ValueError, match="NAME=WEIGHT"):
        parse_weights(["webvid"])


def test_released_and_dream_layouts_load_mix_and_encode(tiny_tarsier, data_dir, tmp_path):
    """The released Tarsier layout and the DREAM-1K layout, read unchanged through `datasets`, feed the collator."""
    from tarsier_hf.training.collator import TarsierVideoCollator
    from tarsier_hf.training.conversation_dataset import ConversationDataset
    from tarsier_hf.training.dataset_spec import DatasetSpec

    released = [{"messages": [
        {"role": "user", "content": [{"type": "video", "video": {"video_file": f"videos/{name}.mp4"}},
                                     {"type": "text", "text": "Describe the video in detail."}]},
        {"role": "assistant", "content": [{"type": "text", "text": f"It is {name}."}]}],
        "dataset": "recap", "task": "video/caption", "idx": i} for i, name in enumerate(COLORS)]
    dream = [{"idx": 10 + i, "dataset": "DREAM/live_action", "video_file": f"videos/{name}.mp4",
              "text": {"prompt": "<video>\nDescribe the video in detail.", "response": f"All {name}."},
              "extra_info": {"n_events": 1}} for i, name in enumerate(COLORS)]
    (tmp_path / "released.jsonl").write_text("".join(json.dumps(r) + "\n" for r in released))
    (tmp_path / "dream.jsonl").write_text("".join(json.dumps(r) + "\n" for r in dream))
    dataset = ConversationDataset(
        [DatasetSpec(str(tmp_path / "released.jsonl"), str(data_dir)), DatasetSpec(str(tmp_path / "dream.jsonl"), str(data_dir))],
        source_weights={"recap": 0.5, "DREAM/live_action": 2.0},
    )
    assert sorted(dataset.sources[i] for i in dataset.indices) == ["DREAM/live_action"] * 8 + ["recap"] * 2
    _, _, processor = tiny_tarsier
    batch = TarsierVideoCollator(processor, InstructionSampling(8))([dataset[i] for i in range(len(dataset))])
    assert batch["num_frames"].tolist() == [8] * 10 and int(batch["skipped_samples"]) == 0
    answers = {processor.tokenizer.decode(row[row != -100]) for row in batch["labels"]}
    assert answers <= {f"It is {n}.<|im_end|>" for n in COLORS} | {f"All {n}.<|im_end|>" for n in COLORS}
    assert len(answers) >= 3


def test_length_column_lets_the_trainer_group_rows_of_similar_length(tiny_tarsier, data_dir, tmp_path):
    """The mixture's `length` column is each row's text in characters, and transformers' Trainer reads it for
    `train_sampling_strategy="group_by_length"`: its batches (through the real collator) pad less than random ones."""
    import copy

    from transformers import Trainer, TrainingArguments

    from tarsier_hf.training.collator import TarsierVideoCollator
    from tarsier_hf.training.conversation_dataset import ConversationDataset
    from tarsier_hf.training.dataset_spec import DatasetSpec

    words = np.random.default_rng(0).integers(1, 60, size=64)
    rows = [conversation_row(f"videos/{list(COLORS)[i % len(COLORS)]}.mp4", " ".join(["word"] * int(n)), i)
            for i, n in enumerate(words)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    dataset = ConversationDataset([DatasetSpec(str(tmp_path / "rows.jsonl"), str(data_dir))],
                                  source_weights={"colors": 1.5})  # repeats half the rows: one length per draw
    table = dataset.as_hf_dataset()
    text = [len("Describe the video.") + 5 * int(n) - 1 for n in words]  # prompt and answer, in characters
    assert table["length"][:] == [text[i] for i in dataset.indices] and len(table) == 96
    assert table[3]["row"]["idx"] == int(dataset.indices[3]) and table[3]["length"] == text[dataset.indices[3]]

    _, model, processor = tiny_tarsier
    padding = {}
    for strategy in ("random", "group_by_length"):
        args = TrainingArguments(str(tmp_path / strategy), per_device_train_batch_size=8, use_cpu=True, seed=0,
                                 train_sampling_strategy=strategy, remove_unused_columns=False, report_to="none")
        trainer = Trainer(model=copy.deepcopy(model), args=args, train_dataset=table,
                          data_collator=TarsierVideoCollator(processor, UniformSampling(2)))
        batches = list(trainer.get_train_dataloader())
        assert sum(len(b["input_ids"]) for b in batches) == 96 and all(int(b["skipped_samples"]) == 0 for b in batches)
        padding[strategy] = sum(b["attention_mask"].numel() for b in batches) / sum(int(b["attention_mask"].sum())
                                                                                   for b in batches)
    # measured: random batches pad these rows to 1.29x their tokens (frames and template included), grouped ones to
    # 1.13x (the Trainer sorts within mega-batches of 3 batches here, so some spread is left)
    assert padding["group_by_length"] < 1.16 < 1.25 < padding["random"], padding


# ---------------------------------------------------------------------------------------------------------------
# Collator
# ---------------------------------------------------------------------------------------------------------------


def test_collator_matches_processor_and_masks_assistant_only(tiny_tarsier, data_dir):
    from tarsier_hf.training.collator import TarsierVideoCollator
    from tarsier_hf.training.layouts import normalize_row

    _, _, processor = tiny_tarsier
    row = normalize_row(conversation_row("videos/red.mp4", "The screen stays red.", 0), str(data_dir))
    collator = TarsierVideoCollator(processor, UniformSampling(3))
    sample = collator.encode(row)

    text = processor.apply_chat_template(row["messages"], tokenize=False)
    reference = processor(text=text, videos=[str(data_dir / "videos/red.mp4")], frame_sampling=UniformSampling(3),
                          add_special_tokens=False)
    assert sample["input_ids"].tolist() == reference["input_ids"][0].tolist()
    torch.testing.assert_close(sample["pixel_values"], reference["pixel_values"])
    assert sample["num_frames"] == 3 == int(reference["num_frames"][0])

    labels = sample["labels"]
    trained = labels[labels != -100]
    assert processor.tokenizer.decode(trained) == "The screen stays red.<|im_end|>"
    visual = torch.isin(sample["input_ids"], torch.tensor(processor.frame_token_ids()))
    assert int(visual.sum()) == 3 * processor.tokens_per_frame
    assert (labels[visual] == -100).all()
    # Everything before the answer (system, user turn, frames) is masked.
    first = int((labels != -100).nonzero()[0])
    assert processor.tokenizer.decode(sample["input_ids"][:first]).endswith("<|im_start|>assistant\n")


def test_training_inference_and_reference_loss_encode_a_prompt_identically(tiny_tarsier, data_dir):
    """One path from video to tokens: the training collator, the inference engine and the reference loss all go
    through the processor, so the same conversation gets the same ids and pixels in all three."""
    from tarsier_hf.eval.reference_loss import score_references
    from tarsier_hf.inference.engine import InferenceSettings, VideoRequest, VideoTextGenerator
    from tarsier_hf.training.collator import TarsierVideoCollator
    from tarsier_hf.training.layouts import normalize_row
    from frame_sampling_tarsier import UniformSampling
    from video_reader_tarsier import VideoReader

    _, model, processor = tiny_tarsier
    raw = conversation_row("videos/green.mp4", "The screen stays green.", 0)
    row = normalize_row(raw, str(data_dir))
    trained = TarsierVideoCollator(processor, UniformSampling(3)).encode(row)
    prompt = next(item["text"] for item in row["messages"][0]["content"] if item["type"] == "text")
    generator = VideoTextGenerator(model, processor, InferenceSettings("tiny", frame_sampling=UniformSampling(3)))
    inferred = generator.encode(VideoRequest("0", str(data_dir / "videos/green.mp4"), prompt))
    # the generation prompt is the training sequence up to the answer, frames and all
    first_label = int((trained["labels"] != -100).nonzero()[0])
    assert inferred["input_ids"].tolist() == trained["input_ids"][:first_label].tolist()
    torch.testing.assert_close(inferred["pixel_values"], trained["pixel_values"], rtol=0, atol=0)
    with VideoReader(data_dir / "videos/green.mp4") as reader:
        assert inferred["frame_indices"] == UniformSampling(3).indices(reader.timestamps).tolist()
    # the reference loss scores exactly the training labels
    scored = score_references(model, processor, [raw], video_root=str(data_dir), num_frames=3)
    labels = trained["labels"][1:]
    assert [processor.tokenizer.decode([t]) for t in labels[labels != -100].tolist()] == scored[0].tokens


def test_collator_batches_images_multi_image_and_text_only(tiny_tarsier, data_dir, tmp_path):
    from PIL import Image

    from tarsier_hf.training.collator import TarsierVideoCollator

    from tarsier_hf.training.layouts import normalize_row

    _, _, processor = tiny_tarsier
    for name, colour in (("a.png", (255, 0, 0)), ("b.png", (0, 0, 255))):
        Image.new("RGB", (40, 30), colour).save(tmp_path / name)
    multi = normalize_row({"idx": 1, "messages": [
        {"role": "user", "content": [{"type": "image", "path": "a.png"}, {"type": "image", "path": "b.png"},
                                     {"type": "text", "text": "Which differs?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Colour."}]}]}, str(tmp_path))
    text_only = normalize_row({"idx": 2, "messages": [{"role": "user", "content": "Say hi."},
                                                      {"role": "assistant", "content": "Hi."}]}, None)
    video = normalize_row(conversation_row("videos/blue.mp4", "Blue.", 3), str(data_dir))
    collator = TarsierVideoCollator(processor, RandomSegmentsSampling((2, 4)), seed=1)
    batch = collator([multi, text_only, video])
    assert batch["num_frames"][:2].tolist() == [2, 0] and 2 <= int(batch["num_frames"][2]) <= 4
    assert batch["pixel_values"].shape == (int(batch["num_frames"].sum()), 3, 28, 28)
    lengths = batch["attention_mask"].sum(1)
    assert batch["input_ids"].shape == (3, int(lengths.max()))
    for i in range(3):  # padding is right, masked in labels
        assert (batch["labels"][i, lengths[i]:] == -100).all() and batch["attention_mask"][i, : lengths[i]].all()
    assert int(batch["skipped_samples"]) == 0
    # The batch runs through the model (features fill exactly the placeholders).
    _, model, _ = tiny_tarsier
    out = model(**{k: v for k, v in batch.items() if not k.startswith("skipped")})
    assert torch.isfinite(out.loss)


def test_collator_skips_bad_videos_and_too_long_samples(tiny_tarsier, data_dir, tmp_path):
    from tarsier_hf.training.collator import MediaError, SampleTooLongError, TarsierVideoCollator
    from tarsier_hf.training.conversation_dataset import ConversationDataset
    from tarsier_hf.training.dataset_spec import DatasetSpec

    _, _, processor = tiny_tarsier
    dataset = ConversationDataset([DatasetSpec(str(data_dir / "with_bad.jsonl"), str(data_dir))])
    log = tmp_path / "skipped.jsonl"
    collator = TarsierVideoCollator(processor, UniformSampling(2), dataset=dataset, skip_log=str(log))
    batch = collator([dataset[i] for i in range(len(dataset))])
    assert batch["input_ids"].shape[0] == 6  # the two bad samples were replaced by good ones
    assert int(batch["skipped_samples"]) == 2  # the batch's own failures are known before replacements are drawn
    reasons = [json.loads(line)["reason"] for line in log.read_text().splitlines()]
    assert any("corrupt.mp4" in r and "not a readable video" in r for r in reasons)
    assert any("missing.mp4" in r and "no such file" in r for r in reasons)

    with pytest.raises(MediaError, match="missing.mp4"):
        TarsierVideoCollator(processor, UniformSampling(2), fail_fast=True)([dataset[5]])

    good = dataset[0]
    length = len(collator.encode(good)["input_ids"])
    strict = TarsierVideoCollator(processor, UniformSampling(2), max_length=length - 1, on_too_long="error")
    with pytest.raises(SampleTooLongError, match=f"{length} tokens.*max_length={length - 1}"):
        strict([good])
    text_only = {"idx": 7, "source": "t", "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]},
                                                        {"role": "assistant", "content": [{"type": "text", "text": "Yo"}]}]}
    lenient = TarsierVideoCollator(processor, UniformSampling(2), max_length=length - 1,
                                   dataset=[good, text_only])  # good is mix_index 0: never drawn again
    batch = lenient([good])
    assert int(batch["skipped_too_long"]) == 1 and int(batch["num_frames"][0]) == 0


def _tiny_model(**overrides):
    from modeling_tarsier import TarsierForConditionalGeneration
    from tests.tiny_tarsier import tiny_config

    torch.manual_seed(0)
    return TarsierForConditionalGeneration(tiny_config(**overrides)).eval()


def test_set_trainable_parts():
    from tarsier_hf.training.freezing import set_trainable_parts

    model = _tiny_model()
    counts = set_trainable_parts(model)  # the paper's recipe
    assert counts["vision_tower"] == 0 and counts["projector"] == 0 and counts["language_model"] > 0
    counts = set_trainable_parts(model, train_projector=True, train_language_model=1)
    layers = model.model.language_model.layers
    assert all(p.requires_grad for p in layers[-1].parameters())
    assert not any(p.requires_grad for p in layers[0].parameters())
    assert not model.get_input_embeddings().weight.requires_grad and model.lm_head.weight.requires_grad
    assert counts["projector"] == sum(p.numel() for p in model.model.multi_modal_projector.parameters())
    with pytest.raises(ValueError, match="expected 1..2 layers"):
        set_trainable_parts(model, train_language_model=5)
    assert not hasattr(model, "set_trainable_parts")  # training policy lives in the training package (issue #37)


@pytest.mark.parametrize("tied", [True, False])
def test_set_trainable_parts_frozen_embeddings(tied):
    from tarsier_hf.training.freezing import set_trainable_parts
    from tests.tiny_tarsier import sample_ids

    model = _tiny_model(tie_word_embeddings=tied)
    counts = set_trainable_parts(model, train_vision_tower=True, train_projector=True, train_embeddings=False)
    assert not model.get_input_embeddings().weight.requires_grad and not model.lm_head.weight.requires_grad
    layers = model.model.language_model.layers
    assert all(p.requires_grad for layer in layers for p in layer.parameters())
    embeddings = model.get_input_embeddings().weight.numel()
    everything = sum(p.numel() for p in model.model.language_model.parameters())
    assert counts["language_model"] == everything - embeddings
    # a step changes the decoder layers and leaves the vocabulary exactly as it was
    before = model.get_input_embeddings().weight.clone(), model.lm_head.weight.clone(), layers[0].mlp.up_proj.weight.clone()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    ids = torch.tensor([sample_ids(model.config, 2)])
    pixels = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, pixel_values=pixels, num_frames=torch.tensor([2]), labels=ids).loss.backward()
    optimizer.step()
    assert torch.equal(before[0], model.get_input_embeddings().weight) and torch.equal(before[1], model.lm_head.weight)
    assert not torch.equal(before[2], layers[0].mlp.up_proj.weight)


def test_freezing_options_top_k_layers_and_lora_targets(tiny_tarsier, tmp_path):
    from peft import get_peft_model
    from trl import ModelConfig

    from train_sft import TarsierArguments, build_model, parse_llm_layers

    folder, _, _ = tiny_tarsier
    model, _, peft_config, _ = build_model(ModelConfig(model_name_or_path=str(folder)), TarsierArguments(), str(tmp_path))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert peft_config is None and trainable and not any("vision_tower" in n or "projector" in n for n in trainable)
    assert any("layers.0." in n for n in trainable) and any("embed_tokens" in n for n in trainable)

    model, _, _, _ = build_model(ModelConfig(model_name_or_path=str(folder)),
                                 TarsierArguments(train_llm_layers="1", train_projector=True), str(tmp_path))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("layers.1." in n for n in trainable) and not any("layers.0." in n for n in trainable)
    assert any("multi_modal_projector" in n for n in trainable) and not any("vision_tower" in n for n in trainable)

    model, _, _, _ = build_model(ModelConfig(model_name_or_path=str(folder)),
                                 TarsierArguments(train_embeddings=False, train_vision_tower=True), str(tmp_path))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("layers.0." in n for n in trainable) and any("vision_tower" in n for n in trainable)
    assert not any("embed_tokens" in n or "lm_head" in n for n in trainable)

    # TRL's --use_peft / --lora_r through TRL's get_peft_config; the default targets are the LLM's projections
    model, _, peft_config, _ = build_model(ModelConfig(model_name_or_path=str(folder), use_peft=True, lora_r=4),
                                           TarsierArguments(), str(tmp_path))
    assert peft_config.r == 4
    peft_model = get_peft_model(model, peft_config)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and "language_model" in n for n in trainable)
    # --dtype and --attn_implementation (TRL's ModelConfig) reach the loaded model
    model, _, _, _ = build_model(ModelConfig(model_name_or_path=str(folder), dtype="bfloat16",
                                             attn_implementation="eager"), TarsierArguments(), str(tmp_path))
    assert model.dtype == torch.bfloat16 and model.config._attn_implementation == "eager"
    with pytest.raises(ValueError, match="'all', 'none' or an integer"):
        parse_llm_layers("top")


# ---------------------------------------------------------------------------------------------------------------
# The command line: TRL's argument classes, --help, refused options
# ---------------------------------------------------------------------------------------------------------------


def test_help_lists_trl_options_and_marks_refused_ones():
    """`python train_sft.py --help` in a real subprocess (it crashed on the `{% generation %}` in a help text)."""
    result = subprocess.run([sys.executable, str(REPO / "train_sft.py"), "--help"], capture_output=True, text=True,
                            env=child_env(), timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    text = " ".join(result.stdout.split())
    for option in ("--dataset_name", "--dataset_train_split", "--dataset_streaming", "--use_peft", "--lora_r",
                   "--dtype", "--attn_implementation", "--vision_model", "--frame_sampling", "--loss_head"):
        assert option in text, option
    assert "{% generation %} markers" in text
    assert "--packing [PACKING] Not applicable to video SFT (refused)" in text
    assert "--dataset_text_field DATASET_TEXT_FIELD, --dataset-text-field DATASET_TEXT_FIELD Not applicable" in text


def test_trl_argument_names_parse_and_inapplicable_options_are_refused(tmp_path):
    from trl import ModelConfig, ScriptArguments

    from train_sft import TarsierArguments, dataset_specs, make_parser
    from tarsier_hf.training.arguments import check_sft_config

    script_args, training_args, model_args, tarsier_args = make_parser().parse_args_and_config([
        "--dataset_name", "lmms-lab/LLaVA-Video-178K", "--dataset_config", "0_30_s_academic_v0_1",
        "--dataset_train_split", "caption", "--dataset_streaming", "true", "--dataset_paths", "extra.jsonl",
        "--video_roots", "/videos", "--model_name_or_path", "ckpt", "--use_peft", "true", "--lora_r", "8",
        "--dtype", "bfloat16", "--attn_implementation", "sdpa", "--output_dir", str(tmp_path), "--use_cpu", "true",
        "--bf16", "false", "--frame_sampling", "instruction",
    ])
    assert isinstance(script_args, ScriptArguments) and isinstance(model_args, ModelConfig)
    assert isinstance(tarsier_args, TarsierArguments) and tarsier_args.frame_sampling == "instruction"
    assert (model_args.use_peft, model_args.lora_r, model_args.dtype, model_args.attn_implementation) == (
        True, 8, "bfloat16", "sdpa")
    specs = dataset_specs(script_args, tarsier_args, script_args.dataset_train_split)
    assert [(s.path, s.name, s.split, s.streaming, s.video_root) for s in specs] == [
        ("lmms-lab/LLaVA-Video-178K", "0_30_s_academic_v0_1", "caption", True, "/videos"),
        ("extra.jsonl", None, "caption", True, "/videos")]
    check_sft_config(training_args)  # nothing refused was set

    for option, value in (("--packing", "true"), ("--dataset_text_field", "prompt"), ("--padding_free", "true")):
        _, refused, _, _ = make_parser().parse_args_and_config(
            ["--output_dir", str(tmp_path), "--use_cpu", "true", "--bf16", "false", option, value])
        with pytest.raises(ValueError, match=rf"{option} .*: "):
            check_sft_config(refused)
    from train_sft import check_data_arguments

    (tmp_path / "train.jsonl").write_text("{}\n")
    parsed = make_parser().parse_args_and_config(["--dataset_paths", str(tmp_path / "train.jsonl"), "--output_dir",
                                                  str(tmp_path), "--use_cpu", "true", "--eval_strategy", "steps"])
    with pytest.raises(ValueError, match=r"\['train'\] have no splits to take --dataset_test_split test"):
        check_data_arguments(parsed[0], parsed[1], parsed[3])  # it would evaluate on the training rows
    parsed = make_parser().parse_args_and_config(["--dataset_name", "x.jsonl", "--dataset_streaming", "true",
                                                  "--output_dir", str(tmp_path), "--use_cpu", "true"])
    with pytest.raises(ValueError, match="set --max_steps"):
        check_data_arguments(parsed[0], parsed[1], parsed[3])
    # through the real entry point: the run stops before loading anything, with the reason
    result = subprocess.run([sys.executable, str(REPO / "train_sft.py"), "--packing", "true", "--output_dir",
                             str(tmp_path), "--use_cpu", "true", "--bf16", "false", "--dataset_paths", "x.jsonl"],
                            capture_output=True, text=True, env=child_env(), timeout=300, cwd=tmp_path)
    assert result.returncode != 0 and "--packing True: packing concatenates" in result.stderr


def test_plain_sft_trainer_with_video_sft_config_trains_and_without_it_says_what_to_set(tiny_tarsier, data_dir,
                                                                                         tmp_path):
    """A user's own `SFTTrainer` + our collator: `video_sft_config` gives the two settings; without them, advice."""
    import copy

    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from tarsier_hf.training.arguments import video_sft_config
    from tarsier_hf.training.collator import TarsierVideoCollator
    from tarsier_hf.training.layouts import normalize_row

    _, model, processor = tiny_tarsier
    rows = [normalize_row(conversation_row(f"videos/{name}.mp4", f"The screen stays {name}.", i), str(data_dir))
            for i, name in enumerate(COLORS)]
    dataset = Dataset.from_list(rows)
    collator = TarsierVideoCollator(processor, UniformSampling(2))
    common = dict(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", max_steps=2,
                  per_device_train_batch_size=2, gradient_checkpointing=False, save_strategy="no")
    args = video_sft_config(**common)
    assert isinstance(args, SFTConfig) and args.remove_unused_columns is False
    assert args.dataset_kwargs == {"skip_prepare_dataset": True}
    trainer = SFTTrainer(model=copy.deepcopy(model), args=args, train_dataset=dataset, data_collator=collator,
                         processing_class=processor)
    state = trainer.train()
    assert state.global_step == 2 and state.training_loss > 0

    # without remove_unused_columns=False the Trainer drops every column (and says so itself)
    plain = SFTConfig(**common, dataset_kwargs={"skip_prepare_dataset": True})
    with pytest.raises(ValueError, match=r"remove_unused_columns=False"):
        SFTTrainer(model=copy.deepcopy(model), args=plain, train_dataset=dataset, data_collator=collator,
                   processing_class=processor).train()
    # rows that reach the collator tokenised or pruned (no `messages`): the collator says what to set
    with pytest.raises(ValueError, match=r"remove_unused_columns=False.*skip_prepare_dataset.*video_sft_config"):
        collator([{"input_ids": [1, 2, 3], "attention_mask": [1, 1, 1]}])
    with pytest.raises(ValueError, match="packing"):
        video_sft_config(**common, packing=True)


# ---------------------------------------------------------------------------------------------------------------
# Recipes
# ---------------------------------------------------------------------------------------------------------------


def test_recipes_carry_appendix_a_and_accelerate_configs_load():
    from accelerate.commands.config.config_args import load_config_from_file

    from train_sft import make_parser

    expected = {"stage1": (1000, 100000, 288 // 48, [8, 32], "random_segments"),
                "stage2": (1500, 10000, 96 // 16, [8], "instruction")}
    for stage, (warmup, steps, per_device, frames, sampling) in expected.items():
        _, args, model_args, data_args = make_parser().parse_args_and_config(
            ["--config", str(REPO / "recipes" / f"{stage}.yaml"), "--bf16", "false", "--use_cpu", "true"]
        )
        assert (args.learning_rate, args.adam_beta1, args.adam_beta2, args.adam_epsilon) == (2e-5, 0.9, 0.999, 1e-6)
        assert (args.weight_decay, args.max_grad_norm, str(args.lr_scheduler_type.value)) == (0.01, 1.0, "cosine")
        assert (args.warmup_steps, args.max_steps, args.per_device_train_batch_size) == (warmup, steps, per_device)
        assert (data_args.num_frames, data_args.frame_sampling) == (frames, sampling)
        assert (data_args.train_vision_tower, data_args.train_projector, data_args.train_llm_layers) == (
            False, False, "all")
    for name in ("ddp", "deepspeed_zero2", "deepspeed_zero3", "fsdp"):
        config = load_config_from_file(str(REPO / "recipes" / "accelerate" / f"{name}.yaml"))
        assert config.mixed_precision == "bf16"


# ---------------------------------------------------------------------------------------------------------------
# End to end: real runs of train_sft.py
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_distributed_run_learns_skips_bad_videos_and_keeps_frozen_parts(distributed_run, tiny_tarsier):
    output_dir, result = distributed_run
    folder, _, _ = tiny_tarsier
    state = trainer_state(output_dir)
    logs = [entry for entry in state["log_history"] if "loss" in entry]
    assert state["global_step"] == 10 and len(logs) == 10
    # Two ranks share the 6 rows (3 each = 2 batches of <= 2), so 10 steps are 5 epochs; one process would need
    # 3 batches an epoch and reach 3.33.
    assert state["log_history"][-1]["epoch"] == pytest.approx(5.0)
    losses = [entry["loss"] for entry in logs]
    assert np.mean(losses[-3:]) < losses[0] - 1.0, losses
    assert logs[-1]["mean_token_accuracy"] > logs[0]["mean_token_accuracy"]

    # Bad files: never fatal, counted in the logs, and named in the skip log with their cause.
    assert logs[-1]["skipped_samples"] >= 2
    skipped = [json.loads(line) for line in (output_dir / "skipped_samples.jsonl").read_text().splitlines()]
    assert {s["idx"] for s in skipped} == {100, 101} and {s["rank"] for s in skipped} <= {0, 1}
    assert "skipping sample idx=10" in result.stderr

    before, after = weights(folder), weights(output_dir)
    frozen = [k for k in before if "vision_tower" in k or "multi_modal_projector" in k]
    trained = [k for k in before if "language_model.layers" in k]
    assert frozen and trained
    for key in frozen:
        assert torch.equal(before[key], after[key]), key
    assert sum(not torch.equal(before[k], after[k]) for k in trained) == len(trained)

    assert (output_dir / "checkpoint-5").is_dir() and (output_dir / "checkpoint-10").is_dir()
    card = (output_dir / "README.md").read_text()
    assert "pipeline_tag: image-text-to-text" in card and "random_segments" in card
    files = check_checkpoint(output_dir)
    for name in ("config.json", "model.safetensors", "processor_config.json", "chat_template.jinja", "README.md",
                 *CODE_FILES):
        assert name in files
    assert not any(f.startswith("checkpoint-") or f.startswith("skipped") for f in files)


@pytest.mark.slow
def test_resume_continues_from_saved_step(distributed_run, data_dir, tmp_path):
    output_dir, _ = distributed_run
    resumed = tmp_path / "resumed"
    shutil.copytree(output_dir, resumed)
    shutil.rmtree(resumed / "checkpoint-10")
    cmd = [sys.executable, str(REPO / "train_sft.py"), "--model_name_or_path", str(resumed / "checkpoint-5"),
           "--max_steps", "7", "--save_steps", "5", "--learning_rate", "5e-3", "--resume_from_checkpoint", "last",
           "--gradient_checkpointing", "false", *sft_args(data_dir, resumed)]
    run_checked(cmd, cwd=tmp_path)
    state = trainer_state(resumed)
    steps = [entry["step"] for entry in state["log_history"] if "loss" in entry]
    assert state["global_step"] == 7
    assert steps == [1, 2, 3, 4, 5, 6, 7]  # history up to 5 restored from the checkpoint, then 6 and 7 trained


FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder, video = sys.argv[1], sys.argv[2]
    assert not any("modeling_tarsier" in m for m in sys.modules)
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    conversation = [{"role": "user", "content": [{"type": "video", "path": video},
                                                 {"type": "text", "text": "Describe the video."}]}]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=text, videos=[video], num_frames=2, add_special_tokens=False)
    out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1]:]
    print(json.dumps({"module": type(model).__module__, "new_tokens": len(new),
                      "text": processor.tokenizer.decode(new, skip_special_tokens=True)}))
    """
)


@pytest.mark.slow
def test_checkpoint_loads_with_remote_code_in_fresh_process_and_generates(distributed_run, data_dir, tmp_path):
    output_dir, _ = distributed_run
    script = tmp_path / "load.py"
    script.write_text(FRESH_PROCESS)
    result = run_checked([sys.executable, str(script), str(output_dir), str(data_dir / "videos/red.mp4")], cwd=tmp_path)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["module"].startswith("transformers_modules")
    assert 1 <= report["new_tokens"] <= 6


LORA_MERGE = textwrap.dedent(
    """
    import json, sys
    import torch
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    base_dir, adapter_dir, merged_dir = sys.argv[1:4]
    torch.manual_seed(0)
    ids = torch.randint(0, 1000, (1, 12))
    base = AutoModelForImageTextToText.from_pretrained(base_dir, trust_remote_code=True)
    with torch.no_grad():
        base_logits = base(input_ids=ids).logits
    peft_model = PeftModel.from_pretrained(base, adapter_dir)
    with torch.no_grad():
        adapter_logits = peft_model(input_ids=ids).logits
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(merged_dir)
    AutoProcessor.from_pretrained(adapter_dir, trust_remote_code=True).save_pretrained(merged_dir)
    reloaded = AutoModelForImageTextToText.from_pretrained(merged_dir, trust_remote_code=True)
    with torch.no_grad():
        merged_logits = reloaded(input_ids=ids).logits
    print(json.dumps({"adapter_changes": float((adapter_logits - base_logits).abs().max()),
                      "merge_error": float((merged_logits - adapter_logits).abs().max())}))
    """
)


@pytest.mark.slow
def test_lora_run_saves_adapter_that_merges_and_reloads(tiny_tarsier, data_dir, tmp_path):
    folder, _, _ = tiny_tarsier
    output_dir = tmp_path / "lora"
    cmd = [sys.executable, str(REPO / "train_sft.py"), "--model_name_or_path", str(folder), "--use_peft", "true",
           "--lora_r", "4", "--max_steps", "3", "--save_steps", "100", "--learning_rate", "1e-2",
           "--gradient_checkpointing", "true", *sft_args(data_dir, output_dir, data="good.jsonl")]
    run_checked(cmd, cwd=tmp_path)
    adapter = json.loads((output_dir / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(folder)
    from safetensors.torch import load_file

    keys = list(load_file(str(output_dir / "adapter_model.safetensors")))
    assert keys and all("language_model" in k and "lora_" in k for k in keys)  # LLM only: no vision, no projector
    script = tmp_path / "merge.py"
    script.write_text(LORA_MERGE)
    result = run_checked([sys.executable, str(script), str(folder), str(output_dir), str(tmp_path / "merged")], cwd=tmp_path)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["adapter_changes"] > 1e-4
    assert report["merge_error"] < 1e-4


@pytest.mark.slow
def test_same_seed_builds_and_trains_the_same_model_from_parts(parts_dir, data_dir, tmp_path):
    """Built from parts, the fresh vision tower / projector / token rows follow --seed: two runs are identical."""
    outputs = {}
    for run, seed in (("a", 0), ("b", 0), ("c", 1)):
        output_dir = tmp_path / run
        cmd = [sys.executable, str(REPO / "train_sft.py"), "--vision_model", str(parts_dir / "vision.json"),
               "--language_model", str(parts_dir / "llm"), "--chat_template", "chatml", "--train_vision_tower", "true",
               "--train_projector", "true", "--max_steps", "2", "--save_strategy", "no", "--learning_rate", "1e-3",
               *sft_args(data_dir, output_dir, data="good.jsonl")]
        cmd[cmd.index("--seed") + 1] = str(seed)
        run_checked(cmd, cwd=tmp_path)
        outputs[run] = weights(output_dir)
    assert outputs["a"].keys() == outputs["b"].keys()
    assert all(torch.equal(outputs["a"][k], outputs["b"][k]) for k in outputs["a"])
    projector = [k for k in outputs["a"] if "multi_modal_projector" in k]
    assert projector and any(not torch.equal(outputs["a"][k], outputs["c"][k]) for k in projector)


def test_projector_file_loads_into_a_model_with_frame_embeddings(parts_dir, tmp_path):
    """`--projector_path` gives the MLP's weights; frame embeddings (`num_frame_embeddings`) stay fresh, and any
    other key that does not fit is an error naming the file."""
    from safetensors.torch import save_file

    from tarsier_hf.training.model_builder import build_from_parts

    vision, llm = str(parts_dir / "vision.json"), str(parts_dir / "llm")
    source, _ = build_from_parts(vision, llm, chat_template="chatml")
    mlp = {f"multi_modal_projector.{k}": v.contiguous() for k, v in source.model.multi_modal_projector.state_dict().items()}
    save_file(mlp, tmp_path / "projector.safetensors")
    model, _ = build_from_parts(vision, llm, str(tmp_path / "projector.safetensors"), chat_template="chatml",
                                num_frame_embeddings=4)
    projector = model.model.multi_modal_projector
    for key, value in mlp.items():
        torch.testing.assert_close(projector.state_dict()[key.split(".", 1)[1]], value)
    assert projector.frame_embedding.weight.shape == (4, model.config.text_config.hidden_size)
    save_file({**mlp, "multi_modal_projector.extra.weight": torch.zeros(2)}, tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match=r"bad\.safetensors: projector weights do not fit .*extra\.weight"):
        build_from_parts(vision, llm, str(tmp_path / "bad.safetensors"), chat_template="chatml")


def test_plain_loss_head_matches_fused_loss_and_gradients(tiny_tarsier, data_dir, tmp_path):
    """`--loss_head plain` (LM head only at labelled positions) gives TRL's fused loss and the same gradients."""
    import copy

    from datasets import Dataset

    from tarsier_hf.training.collator import TarsierVideoCollator

    from tarsier_hf.training.layouts import normalize_row
    from tarsier_hf.training.freezing import set_trainable_parts
    from tarsier_hf.training.trainer import TarsierSFTConfig, TarsierSFTTrainer

    _, model, processor = tiny_tarsier
    rows = [normalize_row(conversation_row(f"videos/{name}.mp4", f"The screen stays {name}.", i), str(data_dir))
            for i, name in enumerate(("red", "green"))]
    rows[1]["messages"][1]["content"][0]["text"] = "The screen stays green for a long time."  # unequal lengths: padding
    collator = TarsierVideoCollator(processor, UniformSampling(3))
    batch = collator(rows)

    results = {}
    for head in ("fused", "plain"):
        copy_ = copy.deepcopy(model)
        set_trainable_parts(copy_, train_vision_tower=True, train_projector=True, train_language_model=True)
        args = TarsierSFTConfig(output_dir=str(tmp_path / head), use_cpu=True, bf16=False, report_to="none",
                                loss_head=head, remove_unused_columns=False,
                                dataset_kwargs={"skip_prepare_dataset": True})
        trainer = TarsierSFTTrainer(model=copy_, args=args, train_dataset=Dataset.from_list([{"x": 0}]),
                                    data_collator=collator, processing_class=processor)
        copy_.train()
        inputs = {k: v.clone() for k, v in batch.items()}
        loss = trainer.compute_loss(copy_, inputs)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in copy_.named_parameters() if p.grad is not None}
        trainer.log({})  # the batch's metrics, as the Trainer logs them
        accuracy = trainer.state.log_history[-1]["mean_token_accuracy"]
        # gradient accumulation: the sum is divided by the tokens of the whole accumulated batch
        scaled = trainer.compute_loss(copy_, {k: v.clone() for k, v in batch.items()}, num_items_in_batch=torch.tensor(100))
        results[head] = (loss.detach(), grads, accuracy, scaled.detach())

    (fused_loss, fused_grads, fused_acc, fused_scaled), (plain_loss, plain_grads, plain_acc, plain_scaled) = (
        results["fused"], results["plain"])
    assert torch.isfinite(plain_loss) and plain_loss > 0
    torch.testing.assert_close(plain_loss, fused_loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(plain_scaled, fused_scaled, atol=1e-5, rtol=1e-5)
    assert plain_acc == pytest.approx(fused_acc)
    assert plain_grads.keys() == fused_grads.keys()
    # the video reaches the loss: the vision tower and projector get non-zero gradients
    for part in ("model.vision_tower.", "model.multi_modal_projector."):
        assert sum(float(g.abs().sum()) for k, g in plain_grads.items() if k.startswith(part)) > 0, part
    for name, grad in plain_grads.items():
        torch.testing.assert_close(grad, fused_grads[name], atol=1e-5, rtol=1e-4, msg=name)
    with pytest.raises(ValueError, match="loss_head"):
        TarsierSFTConfig(output_dir=str(tmp_path / "bad"), use_cpu=True, loss_head="chunky")


def test_vision_learning_rate_gives_vision_tower_and_projector_their_own_rate(tiny_tarsier, tmp_path):
    import copy

    from datasets import Dataset

    from tarsier_hf.training.freezing import set_trainable_parts
    from tarsier_hf.training.trainer import TarsierSFTConfig, TarsierSFTTrainer

    _, model, processor = tiny_tarsier
    model = copy.deepcopy(model)
    set_trainable_parts(model, train_vision_tower=True, train_projector=True, train_language_model=True)
    args = TarsierSFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", learning_rate=1e-4,
                            vision_learning_rate=3e-3, remove_unused_columns=False,
                            dataset_kwargs={"skip_prepare_dataset": True})
    trainer = TarsierSFTTrainer(model=model, args=args, train_dataset=Dataset.from_list([{"x": 0}]),
                                processing_class=processor)
    optimizer = trainer.create_optimizer()
    rate_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert len(rate_of) == len(trainable)  # every trainable parameter in exactly one group
    for name, param in trainable:
        visual = name.startswith(("model.vision_tower.", "model.multi_modal_projector."))
        assert rate_of[id(param)] == (3e-3 if visual else 1e-4), name


def test_plain_loss_head_runs_under_the_trainers_mixed_precision(tiny_tarsier, data_dir, tmp_path):
    """`--bf16` reaches the decoder with `--loss_head plain`, which calls the unwrapped model (not accelerate's
    autocast-wrapped forward): its linear layers compute in bfloat16, and the loss stays close to float32's."""
    import copy

    from datasets import Dataset

    from tarsier_hf.training.collator import TarsierVideoCollator
    from tarsier_hf.training.layouts import normalize_row
    from tarsier_hf.training.trainer import TarsierSFTConfig, TarsierSFTTrainer

    _, model, processor = tiny_tarsier
    rows = [normalize_row(conversation_row(f"videos/{name}.mp4", f"The screen stays {name}.", i), str(data_dir))
            for i, name in enumerate(("red", "green"))]
    batch = TarsierVideoCollator(processor, UniformSampling(3))(rows)
    losses, dtypes = {}, {}
    for bf16 in (False, True):
        copy_ = copy.deepcopy(model)
        args = TarsierSFTConfig(output_dir=str(tmp_path / str(bf16)), use_cpu=True, bf16=bf16, report_to="none",
                                loss_head="plain", remove_unused_columns=False,
                                dataset_kwargs={"skip_prepare_dataset": True})
        trainer = TarsierSFTTrainer(model=copy_, args=args, train_dataset=Dataset.from_list([{"x": 0}]),
                                    data_collator=TarsierVideoCollator(processor, UniformSampling(3)),
                                    processing_class=processor)
        seen = []
        first_linear = next(m for m in copy_.model.language_model.modules() if isinstance(m, torch.nn.Linear))
        hook = first_linear.register_forward_hook(lambda module, args, output: seen.append(output.dtype))
        losses[bf16] = trainer.compute_loss(copy_, {k: v.clone() for k, v in batch.items()}).detach()
        hook.remove()
        dtypes[bf16] = set(seen)
    assert dtypes == {False: {torch.float32}, True: {torch.bfloat16}}
    assert losses[True].dtype == torch.float32  # the cross-entropy is taken in float32
    torch.testing.assert_close(losses[True], losses[False], atol=0.05, rtol=0.02)


def test_a_text_only_checkpoint_is_refused_before_anything_loads(data_dir, tmp_path):
    """train_sft.py trains video models: a causal LM folder stops with the one error that says so (not an
    AttributeError of the data check that runs before the model, which reads the processor's video token)."""
    folder = tmp_path / "text-lm"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    cmd = [sys.executable, str(REPO / "train_sft.py"), "--model_name_or_path", str(folder), "--max_steps", "1",
           *sft_args(data_dir, tmp_path / "out", data="good.jsonl")]
    done = subprocess.run(cmd, cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ValueError: ") and "a text-only causal_lm checkpoint" in last, done.stderr[-3000:]
