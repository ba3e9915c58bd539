"""Stage 0 (`tarsier_hf.training.vision_pretraining`): frame facts -> a CLIP tower folder that a Tarsier loads unchanged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tarsier_hf.training.vision_pretraining import FrameLabelDataset, frames_to_pixels, read_frame_labels
from video_processing_tarsier import build_image_processor, preprocess_frames

REPO = Path(__file__).resolve().parents[1]
TOWER = {"model_type": "clip_vision_model", "image_size": 32, "patch_size": 16, "hidden_size": 32,
         "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}


def test_bad_rows_name_the_file_and_line(tmp_path):
    path = tmp_path / "stage0.jsonl"
    path.write_text(json.dumps({"video": "a.mp4", "frame": 0, "labels": ["red circle"]}) + "\n"
                    + json.dumps({"video": "a.mp4", "frame": 1, "labels": "red circle"}) + "\n")
    with pytest.raises(ValueError, match=r"stage0\.jsonl:2: .*labels must be a list of strings"):
        read_frame_labels(str(path), str(tmp_path))
    path.write_text("\n")
    with pytest.raises(ValueError, match="no rows"):
        read_frame_labels(str(path), str(tmp_path))


def test_targets_are_multi_hot_over_the_sorted_label_names():
    import numpy as np

    frames = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    frames[1, :, :4] = 255  # left half white: the pixels must be the processor's, frame by frame
    pixels = frames_to_pixels(frames, image_size=8, chunk=1)
    dataset = FrameLabelDataset(pixels, [["red circle", "red row top"], ["blue square"]])
    assert dataset.label_names == ["blue square", "red circle", "red row top"]
    assert dataset[0]["labels"].tolist() == [0.0, 1.0, 1.0] and dataset[1]["labels"].tolist() == [1.0, 0.0, 0.0]
    expected = preprocess_frames(frames, build_image_processor("clip", 8))
    assert pixels.shape == (2, 3, 8, 8) and torch.equal(pixels, expected)
    assert not torch.equal(dataset[0]["pixel_values"], dataset[1]["pixel_values"])
    with pytest.raises(ValueError, match="2 frames but 1 label lists"):
        FrameLabelDataset(pixels, [["red circle"]])


@pytest.mark.slow
def test_stage0_cli_saves_a_tower_that_tarsier_loads_bit_identically(tmp_path, smollm2_dir):
    """DREAM-S frames and facts -> `python -m tarsier_hf.training.vision_pretraining` (Trainer, a few steps) -> a
    `clip_vision_model` folder -> `build_from_parts` puts exactly those weights into the Tarsier's tower."""
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from tarsier_hf.dream_s import BuildConfig, build_dataset
    from tarsier_hf.training.model_builder import build_from_parts

    data = tmp_path / "data"
    build_dataset(BuildConfig(out=str(data), num_train=4, num_test=1), progress=False)
    rows = [json.loads(line) for line in (data / "stage0.jsonl").read_text().splitlines()]
    assert len(rows) == 4 * 16 and all(row["labels"] for row in rows)
    (tmp_path / "tower.json").write_text(json.dumps(TOWER))
    out = tmp_path / "stage0"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "tarsier_hf.training.vision_pretraining", "--frames_file", str(data / "stage0.jsonl"),
         "--video_root", str(data), "--vision_config", str(tmp_path / "tower.json"), "--output_dir", str(out),
         "--max_steps", "3", "--per_device_train_batch_size", "8", "--use_cpu", "true", "--report_to", "none",
         "--save_strategy", "no"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert AutoConfig.from_pretrained(out).model_type == "clip_vision_model"
    saved = load_file(str(out / "model.safetensors"))
    model, _ = build_from_parts(str(out), str(smollm2_dir), chat_template="chatml", use_frame_separators=False)
    tower = model.model.vision_tower.state_dict()
    assert set(tower) == set(saved)
    assert all(torch.equal(tower[k], saved[k]) for k in saved)
