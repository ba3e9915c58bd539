"""Bad training rows: found before training with file:line and the reason, skipped and counted (or fatal under
--fail_fast), so a run never dies when a bad row comes up; checked on real files and a real train_sft.py run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.colour_clips import conversation_row

REPO = Path(__file__).resolve().parents[1]


def _user(text="Describe the video."):
    return {"role": "user", "content": [{"type": "video", "path": "videos/red.mp4"}, {"type": "text", "text": text}]}


# (line text, reason the report must give); line numbers are their position in the file, from 1.
BAD_LINES = [
    (json.dumps({"idx": 200, "messages": [_user()]}), "no assistant turn to train on"),
    (json.dumps({"idx": 201, "messages": []}), "'messages' is empty"),
    (json.dumps({"idx": 202, "messages": [{"content": "hi"}, {"role": "assistant", "content": "x"}]}),
     "message 0 has no 'role'"),
    (json.dumps({"idx": 203, "caption": "a red screen"}), "no 'messages'"),
    ('{"idx": 204, "messages": [{"role": "user"', "not valid JSON"),
    (json.dumps([1, 2]), "a JSON list, not an object"),
    (json.dumps({"idx": 206, "messages": [_user(), {"role": "assistant", "content": [{"type": "text", "text": " "}]}]}),
     "empty answer"),
]


@pytest.fixture
def rows_file(data_dir, tmp_path) -> tuple[Path, dict[int, str]]:
    """Two good rows at lines 1 and 2, then every kind of bad row (line -> expected reason), then a blank line."""
    good = [json.dumps(conversation_row(f"videos/{c}.mp4", f"The screen stays {c}.", i)) for i, c in
            enumerate(["red", "blue"])]
    lines = good + [line for line, _ in BAD_LINES] + [""]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, {3 + i: reason for i, (_, reason) in enumerate(BAD_LINES)}


def test_every_bad_row_is_named_with_file_line_and_reason_and_left_out(rows_file, data_dir):
    from tarsier_hf.training.conversation_dataset import ConversationDataset
    from tarsier_hf.training.dataset_spec import DatasetSpec

    path, expected = rows_file
    dataset = ConversationDataset([DatasetSpec(str(path), str(data_dir))])
    found = {int(row.where.rsplit(":", 1)[1]): row.reason for row in dataset.bad_rows}
    assert all(row.where.startswith(f"{path}:") for row in dataset.bad_rows)
    assert found.keys() == expected.keys()
    for line, reason in expected.items():
        assert reason in found[line], (line, found[line])
    assert len(dataset) == 2
    assert sorted(dataset[i]["idx"] for i in range(len(dataset))) == [0, 1]  # no bad row reaches __getitem__


def test_fail_fast_lists_every_bad_row(rows_file, data_dir):
    from tarsier_hf.training.conversation_dataset import ConversationDataset
    from tarsier_hf.training.dataset_spec import DatasetSpec
    from tarsier_hf.training.row_checks import BadRowsError

    path, expected = rows_file
    with pytest.raises(BadRowsError) as info:
        ConversationDataset([DatasetSpec(str(path), str(data_dir))], fail_fast=True)
    for line in expected:
        assert f"{path}:{line}:" in str(info.value)


def test_empty_file_is_named(tmp_path):
    from tarsier_hf.training.conversation_dataset import ConversationDataset
    from tarsier_hf.training.dataset_spec import DatasetSpec

    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match=r"empty\.jsonl: no rows \(the file is empty\)"):
        ConversationDataset([DatasetSpec(str(tmp_path / "empty.jsonl"))])


def _train(tiny_tarsier, data_dir, rows, output_dir, *extra):
    folder, _, _ = tiny_tarsier
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               PYTHONWARNINGS="ignore")
    env.pop("PYTHONPATH", None)
    cmd = [sys.executable, str(REPO / "train_sft.py"), "--model_name_or_path", str(folder),
           "--dataset_paths", str(rows), "--video_roots", str(data_dir), "--num_frames", "2",
           "--output_dir", str(output_dir), "--max_steps", "3", "--save_strategy", "no", "--learning_rate", "1e-3",
           "--per_device_train_batch_size", "2", "--bf16", "false", "--use_cpu", "true", "--report_to", "none",
           "--dataloader_num_workers", "0", "--max_length", "256", "--gradient_checkpointing", "false", *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=output_dir.parent)


@pytest.mark.slow
def test_training_run_survives_bad_rows_and_fail_fast_stops_before_training(tiny_tarsier, data_dir, rows_file,
                                                                              tmp_path):
    path, expected = rows_file
    result = _train(tiny_tarsier, data_dir, path, tmp_path / "run")
    assert result.returncode == 0, result.stderr[-4000:]
    state = json.loads((tmp_path / "run" / "trainer_state.json").read_text())
    assert state["global_step"] == 3  # 3 steps over 2 good rows: every epoch draws only good rows
    assert f"skipping {len(expected)} bad training row(s)" in result.stderr
    for line in expected:
        assert f"{path}:{line}:" in result.stderr
    recorded = [json.loads(x) for x in (tmp_path / "run" / "bad_rows.jsonl").read_text().splitlines()]
    assert [r["where"] for r in recorded] == [f"{path}:{line}" for line in sorted(expected)]

    stopped = _train(tiny_tarsier, data_dir, path, tmp_path / "strict", "--fail_fast", "true")
    assert stopped.returncode != 0
    assert f"{len(expected)} bad training row(s) (--fail_fast)" in stopped.stderr
    assert not (tmp_path / "strict" / "trainer_state.json").exists()


def test_bad_rows_of_every_layout_and_source_are_named_with_dataset_and_row(data_dir, tmp_path):
    """Rows read through `datasets` (a JSON list, parquet, an in-memory `Dataset`) are checked the same way, their
    place being the dataset and the row's position in it."""
    import datasets

    from tests.test_datasets_layouts import LLAVA_VIDEO_178K, SHAREGPT4VIDEO, WEBVID
    from tarsier_hf.training.conversation_dataset import ConversationDataset
    from tarsier_hf.training.dataset_spec import DatasetSpec
    from tarsier_hf.training.row_checks import BadRowsError

    llava = [*LLAVA_VIDEO_178K[:2], {**LLAVA_VIDEO_178K[2], "conversations": LLAVA_VIDEO_178K[2]["conversations"][:1]}]
    (tmp_path / "llava.json").write_text(json.dumps(llava))  # a JSON list, as LLaVA-Video-178K ships it
    datasets.Dataset.from_list([WEBVID[0], {**WEBVID[1], "name": "  "}]).to_parquet(str(tmp_path / "webvid.parquet"))
    in_memory = datasets.Dataset.from_list([SHAREGPT4VIDEO[0], {**SHAREGPT4VIDEO[1], "captions": [
        {"idx": "0", "content": "The first frame."}]}])
    specs = [DatasetSpec(str(tmp_path / "llava.json"), str(data_dir)),
             DatasetSpec(str(tmp_path / "webvid.parquet"), str(data_dir)), DatasetSpec(in_memory, str(data_dir))]
    dataset = ConversationDataset(specs)
    assert [(row.where, row.reason) for row in dataset.bad_rows] == [
        (f"{tmp_path / 'llava.json'} row 2", "no assistant turn to train on"),
        (f"{tmp_path / 'webvid.parquet'} row 1", "WebVid row without a caption in 'name'"),
        ("Dataset row 1", "ShareGPT4Video row without a whole-video caption (captions item with idx '-1')"),
    ]
    assert sorted(str(dataset[i]["idx"]) for i in range(len(dataset))) == sorted(
        str(i) for i in (LLAVA_VIDEO_178K[0]["id"], LLAVA_VIDEO_178K[1]["id"], WEBVID[0]["videoid"],
                         SHAREGPT4VIDEO[0]["video_id"]))
    with pytest.raises(BadRowsError, match=r"3 bad training row\(s\).*\n.*llava\.json row 2: no assistant"):
        ConversationDataset(specs, fail_fast=True)


def test_streamed_rows_are_checked_as_they_stream(rows_file, data_dir, tmp_path):
    """A stream skips each bad row as it comes up (place and reason logged to the JSONL record, good rows still
    yielded in order), or stops at the first one under fail_fast; rows streamed through `datasets` are named by
    dataset and position."""
    import datasets

    from tarsier_hf.training.conversation_dataset import StreamingConversationDataset
    from tarsier_hf.training.dataset_spec import DatasetSpec
    from tarsier_hf.training.row_checks import BadRowsError

    path, expected = rows_file
    log = tmp_path / "bad_rows.jsonl"
    stream = StreamingConversationDataset([DatasetSpec(str(path), str(data_dir))], bad_rows_log=log)
    assert [row["idx"] for row in stream] == [0, 1]
    assert [row.where for row in stream.bad_rows] == [f"{path}:{line}" for line in sorted(expected)]
    for row in stream.bad_rows:
        assert expected[int(row.where.rsplit(":", 1)[1])] in row.reason
    assert [json.loads(line)["where"] for line in log.read_text().splitlines()] == [r.where for r in stream.bad_rows]

    strict = iter(StreamingConversationDataset([DatasetSpec(str(path), str(data_dir))], fail_fast=True))
    assert [next(strict)["idx"], next(strict)["idx"]] == [0, 1]  # rows before the first bad one still stream
    with pytest.raises(BadRowsError, match=rf"{path}:3: no assistant turn"):
        next(strict)

    good = conversation_row("videos/red.mp4", "The screen stays red.", 0)
    rows = datasets.Dataset.from_list([good, {"idx": 1, "messages": [_user()]}, good]).to_iterable_dataset()
    streamed = StreamingConversationDataset([DatasetSpec(rows, str(data_dir))])
    assert len(list(streamed)) == 2
    assert [(r.where, r.reason) for r in streamed.bad_rows] == [
        ("IterableDataset row 1", "no assistant turn to train on")]

    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match=r"empty\.jsonl: no rows \(the file is empty\)"):
        StreamingConversationDataset([DatasetSpec(str(tmp_path / "empty.jsonl"))])


@pytest.mark.slow
def test_streamed_training_run_skips_and_records_bad_rows(tiny_tarsier, data_dir, rows_file, tmp_path):
    """`--dataset_streaming true`: the run trains on the good rows; the bad ones land in bad_rows.jsonl (with
    DataLoader workers writing them) and are counted as skipped_rows in the model card; --fail_fast stops it."""
    path, expected = rows_file
    streaming = ("--dataset_streaming", "true", "--dataloader_num_workers", "1")
    result = _train(tiny_tarsier, data_dir, path, tmp_path / "run", *streaming)
    assert result.returncode == 0, result.stderr[-4000:]
    assert json.loads((tmp_path / "run" / "trainer_state.json").read_text())["global_step"] == 3
    recorded = [json.loads(x)["where"] for x in (tmp_path / "run" / "bad_rows.jsonl").read_text().splitlines()]
    # 3 steps x 2 rows over a stream of 2 good rows: it is read (at least) 3 times, each pass records the bad rows
    assert recorded and set(recorded) == {f"{path}:{line}" for line in expected}
    assert recorded[:len(expected)] == [f"{path}:{line}" for line in sorted(expected)]
    assert f"| `skipped_rows` | `{len(recorded)}` |" in (tmp_path / "run" / "README.md").read_text()

    stopped = _train(tiny_tarsier, data_dir, path, tmp_path / "strict", *streaming, "--fail_fast", "true")
    assert stopped.returncode != 0
    assert f"bad training row (--fail_fast): {path}:3: no assistant turn" in stopped.stderr


def test_media_are_looked_up_once_before_training_and_a_partly_missing_mixture_warns(data_dir, tmp_path, monkeypatch,
                                                                                     caplog):
    """`check_media`: rows that share a clip (several tasks of one video) look it up once; some missing files warn
    with the count and the place, and none on disk is `MissingMediaError`."""
    from tarsier_hf.training import row_checks
    from tarsier_hf.training.conversation_dataset import ConversationDataset
    from tarsier_hf.training.dataset_spec import DatasetSpec
    from tarsier_hf.training.row_checks import MissingMediaError

    rows = [conversation_row("videos/red.mp4", "Red.", 0), conversation_row("videos/red.mp4", "Still red.", 1),
            conversation_row("videos/gone.mp4", "Never read.", 2)]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    looked_up = []
    real_exists = os.path.exists
    monkeypatch.setattr(os.path, "exists", lambda p: looked_up.append(p) or real_exists(p))
    with caplog.at_level("WARNING", logger=row_checks.__name__):
        dataset = ConversationDataset([DatasetSpec(str(path), str(data_dir))], check_media=True)
    media = [p for p in looked_up if p.endswith(".mp4")]
    assert sorted(media) == sorted({str(data_dir / "videos/red.mp4"), str(data_dir / "videos/gone.mp4")})
    assert "1 of 3 rows name a media file that does not exist" in caplog.text and f"{path}:3" in caplog.text
    assert len(dataset) == 3  # they stay in the mixture: the collator skips them as they come

    monkeypatch.setattr(os.path, "exists", real_exists)
    with pytest.raises(MissingMediaError, match="none of the 3 rows with media has its files on disk"):
        ConversationDataset([DatasetSpec(str(path), str(tmp_path))], check_media=True)
