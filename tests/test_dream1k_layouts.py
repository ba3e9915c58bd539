"""DREAM-1K in both published layouts: the first release (`text.prompt` / `text.response`) and the later
`messages` layout of Tarsier2's annotation files, with its renamed categories, read by `tarsier_hf.eval.dream1k` unchanged."""

from __future__ import annotations

import json

import pytest

# bytedance/tarsier, branch tarsier2, data/annotations/DREAM-1k.jsonl, its first record as published (the
# `<placeholder>` is filled with the local video path by the user; the category is `movie_animation`).
TARSIER2_DREAM_1 = {
    "messages": [
        {"content": [{"reference": None, "text": None, "type": "video", "video": {"video_file": "<placeholder>"}},
                     {"reference": None, "text": "Describe the video in detail.", "type": "text", "video": None}],
         "role": "user"},
        {"content": [{"reference": "A character emerges from smoke and fire, then half knelt on the ground and made "
                                   "a gesture to give instructions, while another group of characters rushed forward "
                                   "and grabbed two green monsters.",
                      "text": "", "type": "text", "video": None}],
         "role": "assistant"}],
    "dataset": "DREAM/movie_animation", "task": "video/caption", "idx": 1,
    "extra_info": {"duration": 5.09,
                   "events": ["A character emerges from smoke and fire.", "The character half kneels on the ground.",
                              "The character makes a gesture to give instructions.",
                              "A group of characters rushes forward.",
                              "The group of characters grabs two green monsters."],
                   "n_events": 5, "n_shots": 2, "n_subjects": 4},
    "vid": 1,
}
# The same file names the first release's `shorts` and `stock` categories `vertical_video` and `videvo`.
RENAMED = {"DREAM/vertical_video": "DREAM/shorts", "DREAM/videvo": "DREAM/stock"}


def test_messages_layout_reads_like_the_first_release(dream1k_path, tmp_path):
    from tarsier_hf.eval.dream1k import build_requests, load_annotations

    first = json.loads(dream1k_path.read_text().splitlines()[0])  # the first release's record 1
    path = tmp_path / "DREAM-1k.jsonl"
    path.write_text(json.dumps(TARSIER2_DREAM_1) + "\n")
    (record,) = load_annotations(path)
    assert record["text"]["response"] == first["text"]["response"]
    assert record["text"]["prompt"] == first["text"]["prompt"]  # "<video>\nDescribe the video in detail."
    assert record["extra_info"]["events"] == first["extra_info"]["events"]
    assert (record["idx"], record["dataset"], record["vid"]) == (first["idx"], first["dataset"], first["vid"])
    # the placeholder is not a path: the video is found by idx, as for the first release
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "1.mp4").write_bytes(b"")
    requests, missing = build_requests([record], str(tmp_path / "videos"), "Describe the video in detail.")
    assert not missing and requests[0].video.endswith("1.mp4")

    broken = dict(TARSIER2_DREAM_1, messages=TARSIER2_DREAM_1["messages"][:1])
    path.write_text(json.dumps(broken) + "\n")
    with pytest.raises(ValueError, match=r"record 0 \(idx=1\).*assistant"):
        load_annotations(path)


def test_renamed_and_new_categories_reach_table3():
    from tarsier_hf.eval.report import category_key, table3_markdown

    assert {new: category_key(new) for new in RENAMED} == {new: category_key(old) for new, old in RENAMED.items()}

    scores = {"per_category": {"DREAM/vertical_video": {"f1": 0.5, "precision": 0.4, "recall": 0.6},
                               "DREAM/videvo": {"f1": 0.3, "precision": 0.2, "recall": 0.4},
                               "DREAM/drone": {"f1": 0.1, "precision": 0.1, "recall": 0.1}},
              "overall": {"f1": 0.3, "precision": 0.25, "recall": 0.35}}
    table = table3_markdown([("m", scores)])
    header, _, row = table.splitlines()[:3]
    columns = [c.strip() for c in header.strip("|").split("|")]
    cells = dict(zip(columns, [c.strip() for c in row.strip("|").split("|")]))
    assert cells["Shorts"] == "50.0/40.0/60.0" and cells["Stock"] == "30.0/20.0/40.0"
    assert cells["drone"] == "10.0/10.0/10.0"  # a category the paper does not name gets its own column
    assert cells["Live-action"] == "-"


def test_annotations_have_no_workspace_default(capsys):
    """Where DREAM-1K lies is the user's to say: no default path (it used to point into this workspace)."""
    from tarsier_hf.eval.dream1k import main

    with pytest.raises(SystemExit):
        main(["--videos", "videos", "--output_dir", "out", "--checkpoint", "tarsier"])
    assert "the following arguments are required: --annotations" in capsys.readouterr().err
