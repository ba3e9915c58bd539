"""The one JSON Lines reader (tarsier_hf/jsonl.py) and the one video-file lookup of the benchmark runners."""

from __future__ import annotations

import pytest

from tarsier_hf.eval.common import find_video_file
from tarsier_hf.jsonl import iter_jsonl, read_jsonl_objects


def test_every_bad_line_is_named_by_file_and_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n\n{"a": \n[1, 2]\n"text"\n{"a": 2}\n', encoding="utf-8")
    assert list(iter_jsonl(path)) == [
        (1, {"a": 1}, None),
        (3, None, "not valid JSON (Expecting value at column 7)"),  # after `{"a": `
        (4, None, "a JSON list, not an object"),
        (5, None, "a JSON str, not an object"),
        (6, {"a": 2}, None),
    ]
    rows = read_jsonl_objects(path, KeyError)
    assert next(rows) == (1, {"a": 1})
    with pytest.raises(KeyError, match=rf"{path}:3: not valid JSON"):
        next(rows)


def test_find_video_file_tries_names_then_extensions(tmp_path):
    for name in ("b.webm", "b.mp4", "c", "d.mkv"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "e.mp4").mkdir()  # a folder is not a video file
    assert find_video_file(tmp_path, "c") == tmp_path / "c"  # the name as given first
    assert find_video_file(tmp_path, "b") == tmp_path / "b.mp4"  # extensions in sorted order
    assert find_video_file(tmp_path, "a", "d") == tmp_path / "d.mkv"  # names in order
    assert find_video_file(tmp_path, "e") is None and find_video_file(tmp_path) is None
