"""The Hub's published layouts, read unchanged from every kind of source, through the real collator.

Each layout's rows are written out here in the layout of the public dataset (the source is named above each), with
our own texts and the colour clips of `tests/colour_clips.py` as the videos, in the folder structure the dataset
uses. They are then read through `ConversationDataset` / `StreamingConversationDataset` from JSON, JSONL, parquet,
CSV, a `save_to_disk` folder and in-memory `datasets` objects, and encoded by `TarsierVideoCollator`: the answers
must come out as the assistant labels and every video must be decoded.
"""

from __future__ import annotations

import json
import shutil

import pytest

from tests.colour_clips import COLORS

# lmms-lab/LLaVA-Video-178K, e.g. 0_30_s_academic_v0_1/0_30_s_academic_v0_1_cap_processed.json (a JSON list):
# ShareGPT turns, `<image>` marks the video, `video` relative to the set's video folders, `data_source` the subset.
LLAVA_VIDEO_178K = [
    {"id": f"academic_{name}", "data_source": "0_30_s_academic_v0_1", "video": f"academic_source/{name}.mp4",
     "conversations": [
         {"from": "human", "value": "<image>\nPlease describe this video in detail."},
         {"from": "gpt", "value": f"A {name} screen with a dark bar moving from left to right."},
     ]}
    for name in COLORS
]

# omni-research/Tarsier2-Recap-585K, e.g. Oops/metadata.json (card features: idx, dataset, task, messages), items
# as in bytedance/tarsier@tarsier2 dataset/custom_data_parsers/standard_vision_parser.py (`data_temp`); read from
# JSON, every item carries the union of keys with nulls (like data/annotations/DREAM-1k.jsonl on that branch).
TARSIER2_RECAP_585K = [
    {"idx": f"oops_{i}", "dataset": "Oops", "task": "video/caption", "messages": [
        {"role": "user", "content": [
            {"type": "video", "video": {"video_file": f"Oops/videos/{name}.mp4"}, "text": None},
            {"type": "text", "text": "Describe the video in detail.", "video": None}]},
        {"role": "assistant", "content": [
            {"type": "text", "text": f"The picture is {name} while a black stripe slides across it.", "video": None}]},
    ]}
    for i, name in enumerate(COLORS)
]

# ShareGPT4Video/ShareGPT4Video, sharegpt4video_40k.jsonl: per-keyframe captions plus the whole-video caption with
# idx "-1"; videos come in zips named by `zip_folder` and are named `{video_id}.mp4`.
SHAREGPT4VIDEO = [
    {"video_id": f"mixkit-{name}-clip", "zip_folder": "mixkit_videos_1.zip", "timestamp": [0.0, 1.0],
     "keyframe": [0, 6],
     "captions": [{"idx": "0", "content": f"The first frame is {name}."},
                  {"idx": "1", "content": "The bar has moved to the right."},
                  {"idx": "-1", "content": f"The whole video shows a {name} background and a sliding bar."}]}
    for name in COLORS
]

# WebVid-10M results_*.csv (also TempoFunk/webvid-10M as CSV/parquet): videoid, contentUrl, duration, page_dir,
# name; downloads are laid out as `{page_dir}/{videoid}.mp4`.
WEBVID = [
    {"videoid": 1000 + i, "contentUrl": f"https://example.invalid/videos/{1000 + i}/preview.mp4",
     "duration": "PT00H00M02S", "page_dir": "000001_000050", "name": f"Stock footage of a {name} screen"}
    for i, name in enumerate(COLORS)
]


def _place_videos(data_dir, root, relative_paths):
    """Copy the colour clips to where a layout's rows expect them (`root / relative path`, colour by name)."""
    for path, name in zip(relative_paths, COLORS):
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(data_dir / "videos" / f"{name}.mp4", target)


@pytest.fixture(scope="module")
def layout_root(data_dir, tmp_path_factory):
    """Every layout's videos under one root, in each dataset's own folder structure."""
    root = tmp_path_factory.mktemp("layouts")
    _place_videos(data_dir, root, [r["video"] for r in LLAVA_VIDEO_178K])
    _place_videos(data_dir, root, [r["messages"][0]["content"][0]["video"]["video_file"] for r in TARSIER2_RECAP_585K])
    _place_videos(data_dir, root, [f"{r['video_id']}.mp4" for r in SHAREGPT4VIDEO])
    _place_videos(data_dir, root, [f"{r['page_dir']}/{r['videoid']}.mp4" for r in WEBVID])
    return root


def _answers(processor, batch) -> set[str]:
    return {processor.tokenizer.decode(row[row != -100]).removesuffix("<|im_end|>") for row in batch["labels"]}


def _encode_all(processor, dataset):
    from tarsier_hf.training.collator import TarsierVideoCollator
    from frame_sampling_tarsier import UniformSampling

    rows = list(dataset) if not hasattr(dataset, "__len__") else [dataset[i] for i in range(len(dataset))]
    batch = TarsierVideoCollator(processor, UniformSampling(2))(rows)
    assert int(batch["skipped_samples"]) == 0 and batch["num_frames"].tolist() == [2] * len(rows)
    return rows, batch


def test_each_published_layout_reads_unchanged_and_trains_on_its_answer(tiny_tarsier, layout_root, tmp_path):
    import datasets
    import pandas

    from tarsier_hf.training.conversation_dataset import ConversationDataset
    from tarsier_hf.training.dataset_spec import DatasetSpec

    _, _, processor = tiny_tarsier
    files = {
        "llava": tmp_path / "0_30_s_academic_v0_1_cap_processed.json",
        "recap": tmp_path / "metadata.json",
        "sharegpt4video": tmp_path / "sharegpt4video_40k.jsonl",
        "webvid": tmp_path / "results_2M_train.csv",
    }
    files["llava"].write_text(json.dumps(LLAVA_VIDEO_178K))  # the released files are JSON lists
    files["recap"].write_text(json.dumps(TARSIER2_RECAP_585K))
    files["sharegpt4video"].write_text("".join(json.dumps(r) + "\n" for r in SHAREGPT4VIDEO))
    pandas.DataFrame(WEBVID).to_csv(files["webvid"], index=False)

    expected = {
        "llava": ({r["conversations"][1]["value"] for r in LLAVA_VIDEO_178K}, "0_30_s_academic_v0_1", None),
        "recap": ({r["messages"][1]["content"][0]["text"] for r in TARSIER2_RECAP_585K}, "Oops", "video/caption"),
        "sharegpt4video": ({r["captions"][2]["content"] for r in SHAREGPT4VIDEO}, "sharegpt4video", "caption_detailed"),
        "webvid": ({r["name"] for r in WEBVID}, "webvid", "caption_short"),
    }
    for layout, path in files.items():
        dataset = ConversationDataset([DatasetSpec(str(path), str(layout_root))])
        rows, batch = _encode_all(processor, dataset)
        answers, source, task = expected[layout]
        assert _answers(processor, batch) == answers, layout
        assert {r["source"] for r in rows} == {source} and {r["task"] for r in rows} == {task}, layout
        user = rows[0]["messages"][0]["content"]
        assert user[0]["type"] == "video" and user[0]["path"].startswith(str(layout_root)), layout
        # caption layouts have no prompt: it comes from the task's pool (paper section 3.2.1)
        assert user[-1]["type"] == "text" and user[-1]["text"], layout

    # a mixture weights sources by the names the layouts give them
    mixed = ConversationDataset([DatasetSpec(str(files["webvid"]), str(layout_root)),
                                 DatasetSpec(str(files["llava"]), str(layout_root))],
                                source_weights={"webvid": 0.5, "0_30_s_academic_v0_1": 2})
    assert sorted(mixed.sources[i] for i in mixed.indices) == ["0_30_s_academic_v0_1"] * 8 + ["webvid"] * 2

    # the same WebVid table as parquet, and the LLaVA rows as a save_to_disk folder (Dataset and DatasetDict)
    pandas.DataFrame(WEBVID).to_parquet(tmp_path / "webvid.parquet")
    datasets.Dataset.from_list(LLAVA_VIDEO_178K).save_to_disk(str(tmp_path / "llava_disk"))
    datasets.DatasetDict({"caption": datasets.Dataset.from_list(LLAVA_VIDEO_178K)}).save_to_disk(str(tmp_path / "dd"))
    for spec, answers in ((DatasetSpec(str(tmp_path / "webvid.parquet"), str(layout_root)), expected["webvid"][0]),
                          (DatasetSpec(str(tmp_path / "llava_disk"), str(layout_root)), expected["llava"][0]),
                          (DatasetSpec(str(tmp_path / "dd"), str(layout_root), split="caption"), expected["llava"][0])):
        _, batch = _encode_all(processor, ConversationDataset([spec]))
        assert _answers(processor, batch) == answers, spec.path


def test_in_memory_and_streamed_datasets(tiny_tarsier, layout_root, tmp_path):
    import datasets

    from tarsier_hf.training.conversation_dataset import ConversationDataset, StreamingConversationDataset
    from tarsier_hf.training.dataset_spec import DatasetSpec

    _, _, processor = tiny_tarsier
    in_memory = datasets.Dataset.from_list(SHAREGPT4VIDEO)
    _, batch = _encode_all(processor, ConversationDataset([DatasetSpec(in_memory, str(layout_root))]))
    assert _answers(processor, batch) == {r["captions"][2]["content"] for r in SHAREGPT4VIDEO}

    # streaming a local JSONL through datasets.load_dataset(..., streaming=True), and an IterableDataset object
    path = tmp_path / "recap.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in TARSIER2_RECAP_585K))
    streamed = StreamingConversationDataset([DatasetSpec(str(path), str(layout_root)),
                                             DatasetSpec(datasets.Dataset.from_list(WEBVID).to_iterable_dataset(),
                                                         str(layout_root))])
    rows, batch = _encode_all(processor, streamed)
    assert [r["source"] for r in rows] == ["Oops", "webvid"] * 4  # interleaved row by row
    assert _answers(processor, batch) == ({r["messages"][1]["content"][0]["text"] for r in TARSIER2_RECAP_585K}
                                          | {r["name"] for r in WEBVID})
    # weights act per row: 0 drops a source, 2 repeats it
    weighted = StreamingConversationDataset([DatasetSpec(str(path), str(layout_root))], source_weights={"Oops": 2})
    assert len(list(weighted)) == 8
    dropped = StreamingConversationDataset([DatasetSpec(str(path), str(layout_root))], source_weights={"Oops": 0})
    assert list(dropped) == []
    with pytest.raises(ValueError, match="can only be streamed"):
        ConversationDataset([DatasetSpec(in_memory.to_iterable_dataset(), str(layout_root))])


def test_layout_errors_name_the_row_and_the_cause():
    from tarsier_hf.training.layouts import normalize_row

    bad_turn = {"id": "v1", "video": "a.mp4", "conversations": [{"from": "robot", "value": "<image>\nHi"}]}
    with pytest.raises(ValueError, match=r"idx=\?.*conversations\[0\] needs 'from'"):
        normalize_row(bad_turn, None, origin="llava.json")
    too_many = {"id": "v2", "video": "a.mp4", "conversations": [
        {"from": "human", "value": "<image> and <video>?"}, {"from": "gpt", "value": "x"}]}
    with pytest.raises(ValueError, match="more <image>/<video> markers"):
        normalize_row(too_many, None)
    no_whole = {"video_id": "v3", "captions": [{"idx": "0", "content": "frame"}]}
    with pytest.raises(ValueError, match="whole-video caption"):
        normalize_row(no_whole, None)
    clip = {"idx": 4, "messages": [
        {"role": "user", "content": [{"type": "video", "video": {"video_file": "a.mp4", "start_time": 1.0}}]},
        {"role": "assistant", "content": [{"type": "text", "text": "x"}]}]}
    with pytest.raises(ValueError, match=r"idx=4.*start_time.*not supported"):
        normalize_row(clip, None)
    with pytest.raises(ValueError, match="not a known layout"):
        normalize_row({"idx": 5, "caption": "x"}, None)


def test_sharegpt_images_text_only_and_markers_in_place():
    """Images by a list in `image`, markers inside the text, a system turn, and a text-only ShareGPT row."""
    from tarsier_hf.training.layouts import normalize_row

    row = normalize_row({"id": 7, "image": ["a.jpg", "b.jpg"], "conversations": [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "Compare <image> with <image>."},
        {"from": "gpt", "value": "Same."}]}, "/root")
    system, user, assistant = row["messages"]
    assert system == {"role": "system", "content": [{"type": "text", "text": "Be brief."}]}
    assert user["content"] == [{"type": "text", "text": "Compare"}, {"type": "image", "path": "/root/a.jpg"},
                               {"type": "text", "text": "with"}, {"type": "image", "path": "/root/b.jpg"},
                               {"type": "text", "text": "."}]
    assert assistant["content"] == [{"type": "text", "text": "Same."}]
    text_only = normalize_row({"id": 8, "conversations": [{"from": "human", "value": "Hi"},
                                                          {"from": "gpt", "value": "Hello"}]}, None)
    assert [m["role"] for m in text_only["messages"]] == ["user", "assistant"]
    # Tarsier2's frame-list video and a JSON-string `messages` column (a Hub viewer config)
    frames = normalize_row({"idx": 9, "messages": json.dumps([
        {"role": "user", "content": [{"type": "video", "video": {"image_file": ["f/1.jpg", "f/2.jpg"]}}]},
        {"role": "assistant", "content": {"type": "text", "text": "Two frames."}}])}, "/r")
    assert frames["messages"][0]["content"][0] == {"type": "video", "paths": ["/r/f/1.jpg", "/r/f/2.jpg"]}
    assert frames["messages"][1]["content"] == [{"type": "text", "text": "Two frames."}]


@pytest.mark.slow
def test_train_sft_streams_a_published_layout_by_dataset_name(tiny_tarsier, layout_root, tmp_path):
    """`train_sft.py --dataset_name FILE --dataset_streaming true`: TRL's option names, a real run, LLaVA-Video rows."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    folder, _, _ = tiny_tarsier
    data = tmp_path / "0_30_s_academic_v0_1_cap_processed.json"
    data.write_text(json.dumps(LLAVA_VIDEO_178K))
    output_dir = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [sys.executable, str(Path(__file__).resolve().parents[1] / "train_sft.py"), "--model_name_or_path",
         str(folder), "--dataset_name", str(data), "--dataset_streaming", "true", "--video_roots", str(layout_root),
         "--frame_sampling", "uniform", "--num_frames", "2", "--max_steps", "3", "--per_device_train_batch_size", "2",
         "--output_dir", str(output_dir), "--bf16", "false", "--use_cpu", "true", "--report_to", "none",
         "--save_strategy", "no", "--logging_steps", "1", "--dataloader_num_workers", "1",
         "--gradient_checkpointing", "false", "--learning_rate", "1e-3"],
        capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    state = json.loads((output_dir / "trainer_state.json").read_text())
    logs = [entry for entry in state["log_history"] if "loss" in entry]
    assert state["global_step"] == 3 and len(logs) == 3 and all(entry["num_tokens"] > 0 for entry in logs)
    assert "lmms-lab" not in (output_dir / "README.md").read_text() and data.name in (output_dir / "README.md").read_text()
