"""`tarsier_hf/inference/describe.py`: videos, folders and lists -> JSONL descriptions with a tiny random Tarsier checkpoint;
unreadable videos are reported with their reason and skipped; a second run resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_eval_runner import build_tiny_checkpoint, write_stand_in_videos


@pytest.fixture(scope="module")
def tiny_checkpoint(smollm2_dir, tmp_path_factory) -> Path:
    return build_tiny_checkpoint(smollm2_dir, tmp_path_factory.mktemp("tiny_tarsier_describe"))


def test_collect_videos_from_files_folders_and_lists(tmp_path):
    from tarsier_hf.inference.describe import collect_videos

    folder = tmp_path / "clips"
    (folder / "sub").mkdir(parents=True)
    for name in ("b.mp4", "a.MKV", "notes.txt", "sub/c.webm"):
        (folder / name).write_bytes(b"x")
    single = tmp_path / "single.mov"
    single.write_bytes(b"x")
    listing = tmp_path / "list.txt"
    listing.write_text("# my clips\nclips/b.mp4\n\n/abs/elsewhere.mp4\n")
    found = collect_videos([str(folder), str(listing), str(single)])
    assert found == [str(folder / "a.MKV"), str(folder / "b.mp4"), "/abs/elsewhere.mp4", str(single)]
    assert str(folder / "sub" / "c.webm") in collect_videos([str(folder)], recursive=True)
    with pytest.raises(FileNotFoundError, match="missing.mp4: no such video file, folder or list"):
        collect_videos([str(tmp_path / "missing.mp4")])


@pytest.mark.slow
def test_describe_command(tiny_checkpoint, tmp_path, capsys):
    from tarsier_hf.inference.describe import main

    folder = tmp_path / "videos"
    write_stand_in_videos(folder, ["clip_a", "clip_b"], seed=3)
    (folder / "broken.mp4").write_text("a text file renamed .mp4\n")
    (folder / "empty.mp4").write_bytes(b"")
    other = write_stand_in_videos(tmp_path / "other", ["clip_c"], seed=4)[0]
    listing = tmp_path / "list.txt"
    listing.write_text(f"{other.parent.name}/{other.name}\n")
    output = tmp_path / "descriptions.jsonl"
    argv = [
        str(folder), str(listing), "--checkpoint", str(tiny_checkpoint), "--output", str(output),
        "--num_frames", "3", "--prompt", "What happens in the video?", "--max_new_tokens", "5",
        "--do_sample", "--temperature", "0.8", "--seed", "3", "--batch_size", "2",
    ]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "3 of 5 videos described" in captured.out
    assert "2 video(s) skipped" in captured.err
    assert f"{folder / 'broken.mp4'}: not a readable video file" in captured.err
    assert f"{folder / 'empty.mp4'}: the file is empty (0 bytes)" in captured.err
    assert "video/s" in captured.err or "s/video" in captured.err  # the tqdm progress bar

    records = [json.loads(line) for line in output.read_text().splitlines()]
    described = {Path(r["video"]).name: r for r in records if "prediction" in r}
    assert sorted(described) == ["clip_a.mp4", "clip_b.mp4", "clip_c.mp4"]
    for record in described.values():
        assert isinstance(record["prediction"], str) and record["prompt"] == "What happens in the video?"
        assert record["num_frames"] == 3 and len(record["frame_indices"]) == 3
        assert record["frame_indices"][0] == 0  # uniform sampling keeps the first frame
        generation = record["run"]["generation"]
        assert generation["do_sample"] is True and generation["temperature"] == 0.8 and generation["max_new_tokens"] == 5
        assert record["run"]["checkpoint"] == str(tiny_checkpoint)
    errors = {Path(r["video"]).name: r["error"] for r in records if "error" in r}
    assert set(errors) == {"broken.mp4", "empty.mp4"}

    # Running the same command again redoes nothing that finished (only the unreadable videos are retried).
    assert main(argv) == 0
    again = [json.loads(line) for line in output.read_text().splitlines()]
    assert again[: len(records)] == records
    assert all("error" in r for r in again[len(records):]) and len(again) == len(records) + 2
