"""tarsier_hf.tiny_recipe.sweep: a reduced sweep of two configurations trains, scores from real generations, and resumes."""

from __future__ import annotations

import json
import math

import pytest

from tarsier_hf.tiny_recipe.sweep import SweepConfig, main, read_configs

TINY = {"num_train": 8, "num_test": 4, "llm_layers": 1, "stage1_steps": 2, "stage2_steps": 2, "batch_size": 2,
        "num_frames": 4, "max_new_tokens": 8, "learning_rate": 3e-4}


def test_sweep_samples_in_memory_clips_with_the_recipe_policies():
    """The sweep samples its in-memory 16-frame clips with the shared FrameSampling objects (no sampler of its own):
    stage 2 and scoring take uniform frames, first and last included; stage 1 one random frame per segment."""
    import numpy as np

    from tarsier_hf.tiny_recipe.sweep import stage1_sampling
    from frame_sampling_tarsier import UniformSampling
    from media_loading_tarsier import load_video

    clip = np.arange(16, dtype=np.uint8)[:, None, None, None].repeat(4, 1).repeat(4, 2).repeat(3, 3)
    frame_numbers = lambda sample: sample.frames[:, 0, 0, 0].tolist()  # noqa: E731 - each frame holds its index
    assert frame_numbers(load_video(clip, UniformSampling(8))) == [0, 2, 4, 6, 9, 11, 13, 15]
    # one frame: the first, as the released rule and the recipe's single_frame run (it was the middle frame here)
    assert frame_numbers(load_video(clip, UniformSampling(1))) == [0]
    sampling = stage1_sampling(SweepConfig(num_frames=8))
    rng = np.random.default_rng(0)
    for _ in range(20):
        picks = frame_numbers(load_video(clip, sampling, rng=rng))
        assert all(2 * i <= p < 2 * i + 2 for i, p in enumerate(picks))


def test_configs_reject_unknown_fields(tmp_path):
    path = tmp_path / "sweep.jsonl"
    path.write_text(json.dumps({"tag": "a", "lr": 1e-3}) + "\n")
    with pytest.raises(ValueError, match=r"line 1: unknown SweepConfig fields \['lr'\]"):
        read_configs(str(path))
    assert read_configs('{"tag": "b", "learning_rate": 0.001}') == [SweepConfig(tag="b", learning_rate=1e-3)]


@pytest.mark.slow
def test_reduced_sweep_scores_and_resumes(tmp_path, smollm2_dir, capsys):
    configs = tmp_path / "sweep.jsonl"
    configs.write_text("\n".join(json.dumps({**TINY, **extra}) for extra in (
        {"tag": "frozen-embeddings", "embedding_learning_rate": 0, "eval_every": 1},
        {"tag": "single-frame", "num_frames": 1, "max_subjects": 1, "max_events": 1},
    )) + "\n")
    output = tmp_path / "results.jsonl"
    args = ["--configs", str(configs), "--output", str(output), "--parts_dir", str(tmp_path / "parts"),
            "--device", "cpu", "--data_workers", "1"]
    assert main(args) == 0
    results = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["config"]["tag"] for r in results] == ["frozen-embeddings", "single-frame"]
    for result in results:
        assert 0.0 <= result["f1"] <= 1.0 and len(result["examples"]) == 3
        assert all(isinstance(text, str) for text in result["examples"])
        assert result["nll_own_video"] > 0 and result["nll_other_video"] > 0
        classes = result["nll_by_word_class"]
        assert {"colour", "shape", "other"} <= set(classes)
        assert all(math.isfinite(c["own_video"]) and math.isfinite(c["other_video"]) for c in classes.values())
    assert [c["stage2_step"] for c in results[0]["curve"]] == [1, 2]
    assert results[1]["curve"] == []
    assert results[1]["config"]["max_events"] == 1 and results[1]["nll_by_word_class"]["colour"]["tokens"] > 0
    # an interrupted sweep resumes: done tags are skipped, nothing is recomputed
    capsys.readouterr()
    assert main(args) == 0
    assert "frozen-embeddings: already in" in capsys.readouterr().out
    assert len(output.read_text().splitlines()) == 2
