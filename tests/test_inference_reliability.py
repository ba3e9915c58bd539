"""tarsier_hf.inference.batch and tarsier_hf.inference.describe under bad input, as real subprocess runs on a tiny random checkpoint:
the exit status says when nothing succeeded, the failure count is always printed, a checkpoint's own code files
never run unless --trust_remote_code is given, and every input (folders named like videos, dangling links) shows
up in the output with its error."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tarsier_hf.hub.checkpoint import CODE_FILES
from tests.test_eval_runner import build_tiny_checkpoint, write_stand_in_videos
from tests.training_runs import child_env

REPO = Path(__file__).resolve().parents[1]
GENERATE = ["--num_frames", "2", "--max_new_tokens", "3", "--dtype", "float32"]


@pytest.fixture(scope="module")
def planted_checkpoint(smollm2_dir, tmp_path_factory) -> tuple[Path, Path]:
    """A tiny checkpoint whose saved code files each write a marker file when imported."""
    root = tmp_path_factory.mktemp("planted")
    checkpoint = build_tiny_checkpoint(smollm2_dir, root / "checkpoint")
    marker = root / "code_ran"
    marker.mkdir()
    for name in CODE_FILES:
        assert (checkpoint / name).is_file(), f"{name} was not saved with the checkpoint"
        with open(checkpoint / name, "a") as handle:
            handle.write(f"\nopen({str(marker / name)!r}, 'w').write('ran')\n")
    return checkpoint, marker


def _run(args, cwd) -> subprocess.CompletedProcess:
    env = dict(child_env(), HF_MODULES_CACHE=str(Path(cwd) / "modules"))
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _requests(path: Path, videos: list[Path]) -> Path:
    path.write_text("".join(json.dumps({"id": v.name, "video": str(v), "prompt": "Describe."}) + "\n" for v in videos))
    return path


@pytest.mark.slow
def test_inference_exit_status_and_failure_count(planted_checkpoint, tmp_path):
    checkpoint, _ = planted_checkpoint
    (tmp_path / "broken.mp4").write_text("not a video\n")
    good = write_stand_in_videos(tmp_path / "clips", ["good"])[0]
    bad = _requests(tmp_path / "bad.jsonl", [tmp_path / "broken.mp4", tmp_path / "missing.mp4"])
    result = _run(["-m", "tarsier_hf.inference.batch", "--checkpoint", str(checkpoint), "--requests", str(bad),
                   "--output", str(tmp_path / "bad_out.jsonl"), *GENERATE], tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "0/2 predictions" in result.stdout and "(2 failed" in result.stdout
    mixed = _requests(tmp_path / "mixed.jsonl", [good, tmp_path / "broken.mp4"])
    result = _run(["-m", "tarsier_hf.inference.batch", "--checkpoint", str(checkpoint), "--requests", str(mixed),
                   "--output", str(tmp_path / "mixed_out.jsonl"), *GENERATE], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1/2 predictions" in result.stdout and "(1 failed" in result.stdout
    assert "broken.mp4: not a readable video file" in result.stderr


@pytest.mark.slow
def test_checkpoint_code_runs_only_with_trust_remote_code(planted_checkpoint, tmp_path):
    checkpoint, marker = planted_checkpoint
    shutil.rmtree(marker, ignore_errors=True)
    marker.mkdir()
    video = write_stand_in_videos(tmp_path / "clips", ["clip"])[0]
    requests = _requests(tmp_path / "requests.jsonl", [video])
    result = _run(["-m", "tarsier_hf.inference.batch", "--checkpoint", str(checkpoint), "--requests", str(requests),
                   "--output", str(tmp_path / "ours.jsonl"), *GENERATE], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1/1 predictions" in result.stdout
    assert sorted(os.listdir(marker)) == []  # the repository's classes loaded it: no checkpoint code ran

    result = _run(["-m", "tarsier_hf.inference.describe", str(video), "--checkpoint", str(checkpoint), "--output",
                   str(tmp_path / "described.jsonl"), *GENERATE], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(os.listdir(marker)) == []

    result = _run(["-m", "tarsier_hf.inference.batch", "--checkpoint", str(checkpoint), "--requests", str(requests),
                   "--output", str(tmp_path / "remote.jsonl"), "--trust_remote_code", "true", *GENERATE], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "configuration_tarsier.py" in os.listdir(marker)  # asked for: the checkpoint's own code ran


@pytest.mark.slow
def test_describe_reports_every_input_folders_named_like_videos_and_dangling_links(planted_checkpoint, tmp_path):
    checkpoint, _ = planted_checkpoint
    folder = tmp_path / "videos"
    write_stand_in_videos(folder, ["clip"])
    (folder / "x.mp4").mkdir()
    (folder / "gone.mp4").symlink_to(tmp_path / "deleted.mp4")
    output = tmp_path / "out.jsonl"
    result = _run(["-m", "tarsier_hf.inference.describe", str(folder), "--checkpoint", str(checkpoint), "--output", str(output),
                   *GENERATE], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1 of 3 videos described" in result.stdout
    records = {Path(r["video"]).name: r for r in map(json.loads, output.read_text().splitlines())}
    assert sorted(records) == ["clip.mp4", "gone.mp4", "x.mp4"]
    assert "prediction" in records["clip.mp4"]
    assert records["x.mp4"]["error"] == f"{folder / 'x.mp4'}: is a folder, not a video file"
    assert "gone.mp4: dangling symbolic link" in records["gone.mp4"]["error"]
    for name in ("x.mp4", "gone.mp4"):
        assert f"{folder / name}:" in result.stderr


def test_collect_videos_keeps_entries_that_will_fail(tmp_path):
    from tarsier_hf.inference.describe import collect_videos

    folder = tmp_path / "videos"
    (folder / "x.mp4").mkdir(parents=True)
    (folder / "x.mp4" / "inner.mp4").write_bytes(b"x")
    (folder / "gone.mp4").symlink_to(tmp_path / "deleted.mp4")
    (folder / "notes.txt").write_text("not a video")
    assert collect_videos([str(folder)]) == [str(folder / "gone.mp4"), str(folder / "x.mp4")]
    # recursive: a folder named like a video is searched, not reported
    assert collect_videos([str(folder)], recursive=True) == [str(folder / "gone.mp4"), str(folder / "x.mp4" / "inner.mp4")]
    assert collect_videos([str(folder / "gone.mp4")]) == [str(folder / "gone.mp4")]  # named explicitly: kept too


def test_resume_refuses_a_file_whose_later_records_have_other_settings(tmp_path):
    """Every finished record is checked, not only the first: a file whose second record was written with another
    seed is refused, naming that record and the differing setting."""
    from tarsier_hf.inference.batch import check_same_run, completed
    from tarsier_hf.jsonl import append_jsonl, read_jsonl

    run = {"checkpoint": "ckpt", "frame_sampling": {"policy": "uniform", "num_frames": 8}, "seed": 0}
    output = tmp_path / "predictions.jsonl"
    append_jsonl(output, [{"id": "a", "prediction": "x", "run": run},
                          {"id": "b", "prediction": "y", "run": {**run, "seed": 1}}])
    with pytest.raises(ValueError, match=r"id='b': seed differ.*seed=1 there vs 0 now"):
        check_same_run(output, completed(read_jsonl(output)), run)
    check_same_run(output, completed(read_jsonl(output)[:1]), run)  # the matching record alone resumes
