"""tarsier_hf.eval.reference_loss: teacher-forced reference loss with the own video vs another video, on real PyAV clips."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from tarsier_hf.eval.reference_loss import mean_token_nll, nll_by_class, score_references
from tests.colour_clips import conversation_row


def _rows(data_dir):
    return [json.loads(line) for line in (data_dir / "good.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def colour_reader(tiny_tarsier, data_dir):
    """The tiny Tarsier after memorising which colour each clip shows (so it can only be right by looking)."""
    from tarsier_hf.training.collator import TarsierVideoCollator
    from tarsier_hf.training.layouts import normalize_row
    from frame_sampling_tarsier import UniformSampling

    _, model, processor = tiny_tarsier
    model = copy.deepcopy(model).train()
    rows = [normalize_row(r, str(data_dir)) for r in _rows(data_dir)]
    collator = TarsierVideoCollator(processor, UniformSampling(4), fail_fast=True)
    batch = collator(rows)
    batch.pop("skipped_samples"), batch.pop("skipped_too_long")
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(60):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), processor


def test_own_video_scores_like_the_training_loss(colour_reader, data_dir):
    from tarsier_hf.training.collator import TarsierVideoCollator
    from tarsier_hf.training.layouts import normalize_row
    from frame_sampling_tarsier import UniformSampling

    model, processor = colour_reader
    rows = _rows(data_dir)
    scored = score_references(model, processor, rows, video_root=str(data_dir), num_frames=4)
    assert [s.idx for s in scored] == [str(r["idx"]) for r in rows]
    assert [s.video for s in scored] == [str(data_dir / r["messages"][0]["content"][0]["path"]) for r in rows]
    # the scored tokens are the answer and the end-of-turn token, and their mean is the model's own loss
    assert "".join(scored[0].tokens) == "The screen stays red.<|im_end|>"
    collator = TarsierVideoCollator(processor, UniformSampling(4), fail_fast=True)
    batch = collator([normalize_row(r, str(data_dir)) for r in rows])
    batch.pop("skipped_samples"), batch.pop("skipped_too_long")
    with torch.no_grad():
        expected = model(**batch).loss.item()
    assert mean_token_nll(scored) == pytest.approx(expected, rel=1e-4)


def test_other_video_costs_a_model_that_reads_the_frames(colour_reader, tiny_tarsier, data_dir):
    model, processor = colour_reader
    rows = _rows(data_dir)
    own = score_references(model, processor, rows, video_root=str(data_dir), num_frames=4)
    other = score_references(model, processor, rows, video_root=str(data_dir), num_frames=4, shift=1)
    assert [s.video for s in other] == [s.video for s in own[1:] + own[:1]]
    # the colour word is where the frames matter: cheap with the own clip, expensive with another colour's clip
    colour_own = [s.nll[3] for s in own]
    colour_other = [s.nll[3] for s in other]
    assert [s.tokens[3].strip() for s in own] == ["red", "green", "blue", "white"]
    assert max(colour_own) < 0.5 and min(colour_other) > 2.0, (colour_own, colour_other)
    assert mean_token_nll(other) > mean_token_nll(own) + 0.5
    # per class: the colour word carries the gap, and the class means weight back to the overall mean
    classes = nll_by_class(own, other, lambda tokens: ["colour" if i == 3 else "other" for i in range(len(tokens))])
    assert classes["colour"]["tokens"] == 4
    assert classes["colour"]["other_video"] - classes["colour"]["own_video"] > 2.0
    overall = sum(c["own_video"] * c["tokens"] for c in classes.values()) / sum(c["tokens"] for c in classes.values())
    assert overall == pytest.approx(mean_token_nll(own))
    with pytest.raises(ValueError, match="not of the same reference"):
        nll_by_class(own, own[1:] + own[:1], lambda tokens: ["x"] * len(tokens))
    # an untrained model has nothing to read: both videos cost about the same
    _, untrained, _ = tiny_tarsier
    gap = mean_token_nll(score_references(untrained, processor, rows, str(data_dir), 4, shift=1)) - mean_token_nll(
        score_references(untrained, processor, rows, str(data_dir), 4))
    assert abs(gap) < 0.05


def test_bad_rows_are_named(colour_reader, data_dir):
    model, processor = colour_reader
    two_videos = conversation_row("videos/red.mp4", "Red.", "two")
    two_videos["messages"][0]["content"].insert(0, {"type": "video", "path": "videos/blue.mp4"})
    with pytest.raises(ValueError, match="idx=two: .*exactly one video"):
        score_references(model, processor, [two_videos], video_root=str(data_dir))
    with pytest.raises(ValueError, match="needs at least two rows"):
        score_references(model, processor, _rows(data_dir)[:1], video_root=str(data_dir), shift=1)
    missing = conversation_row("videos/missing.mp4", "Gone.", "gone")
    with pytest.raises(Exception, match="missing.mp4"):
        score_references(model, processor, [missing], video_root=str(data_dir))


def test_in_memory_clips_score_as_their_files(colour_reader, data_dir):
    """`videos=` (frames held in memory, as the tiny sweep passes them) goes through the same sampling and encoding
    as the files: every frame of each clip decoded once, then scored from the array."""
    from video_reader_tarsier import VideoReader

    model, processor = colour_reader
    rows = _rows(data_dir)
    clips = {}
    for row in rows:
        path = row["messages"][0]["content"][0]["path"]
        with VideoReader(data_dir / path) as reader:
            clips[path] = reader.get_frames(range(reader.num_frames))
    from_files = score_references(model, processor, rows, video_root=str(data_dir), num_frames=4)
    from_memory = score_references(model, processor, rows, num_frames=4, videos=clips)
    assert [s.tokens for s in from_memory] == [s.tokens for s in from_files]
    for a, b in zip(from_memory, from_files):
        assert a.nll == pytest.approx(b.nll, abs=1e-4)
