"""Tarsier2 through the same engine as Tarsier: a converted released checkpoint (tests/tarsier2_release.py, written
from the release's facts) is told apart by its config, loads without remote code, and describes real videos through
`tarsier-describe`, the batch driver and the DREAM-1K runner with the release's inference settings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tarsier_hf import families
from tarsier_hf.dream_s.video_writer import write_video

MAX_NEW_TOKENS = 6


def _moving_square(frames: int, height: int, width: int, colour: tuple[int, int, int]) -> list[np.ndarray]:
    clip = []
    for t in range(frames):
        frame = np.full((height, width, 3), 40, np.uint8)
        x = (t * 3) % (width - 12)
        frame[10:22, x : x + 12] = colour
        clip.append(frame)
    return clip


@pytest.fixture(scope="module")
def tarsier2_folder(released_tarsier2, tmp_path_factory) -> Path:
    from tarsier_hf.hub.convert.tarsier2 import convert_released_tarsier2

    return convert_released_tarsier2(released_tarsier2["path"], tmp_path_factory.mktemp("t2") / "tarsier2-hf")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    """A 20-frame clip (the release samples 16 of its frames) and an 11-frame one (it takes every frame)."""
    root = tmp_path_factory.mktemp("t2clips")
    paths = {"long": root / "long.mp4", "short": root / "short.mp4"}
    write_video(paths["long"], _moving_square(20, 56, 84, (220, 40, 40)), fps=10)
    write_video(paths["short"], _moving_square(11, 56, 56, (40, 40, 220)), fps=10)
    return paths


def test_the_family_comes_from_the_checkpoint(tarsier2_folder, released_tarsier2, tiny_tarsier):
    assert families.detect_family(tarsier2_folder) is families.QWEN2_VL
    assert families.detect_family(tiny_tarsier[0]) is families.TARSIER
    with pytest.raises(families.UnsupportedCheckpointError, match="tarsier-convert --model_name_or_path"):
        families.detect_family(released_tarsier2["path"])
    # each family's own frame policy when a run names none
    assert families.default_frame_sampling(tarsier2_folder).to_dict() == {"policy": "tarsier2", "num_frames": 16}
    assert families.default_frame_sampling(tiny_tarsier[0]).to_dict() == {"policy": "uniform", "num_frames": 8}


def test_a_converted_tarsier2_loads_with_the_builtin_class_and_the_torchvision_free_processor(tarsier2_folder):
    from transformers import Qwen2VLForConditionalGeneration

    from processing_tarsier2 import Tarsier2Processor
    from tarsier_hf.inference.engine import load_model_and_processor

    model, processor = load_model_and_processor(tarsier2_folder)
    assert type(model) is Qwen2VLForConditionalGeneration and isinstance(processor, Tarsier2Processor)
    assert model.config._attn_implementation == "sdpa"  # the release's flash_attention_2 request is not carried
    assert processor.video_processor.duplicate_frames and processor.video_processor.frame_pre_resize_max_pixels


def test_describe_batches_equal_one_by_one_and_follow_the_release_sampling(tarsier2_folder, clips, tmp_path):
    """Left-padded batches with M-RoPE give what each video gives alone; the sampled frames are the release's v1
    indices (16 of 20 with first and last; all 11 of the short clip, none repeated)."""
    from tarsier_hf.inference.describe import DescribeArguments, describe

    videos = [str(clips["long"]), str(clips["short"])]
    runs = {}
    for batch_size in (2, 1):
        args = DescribeArguments(checkpoint=str(tarsier2_folder), output=str(tmp_path / f"b{batch_size}.jsonl"),
                                 batch_size=batch_size, max_new_tokens=MAX_NEW_TOKENS, num_workers=0, no_progress=True)
        runs[batch_size] = describe(videos, args)
    batched, alone = ({v: runs[b][v]["prediction"] for v in videos} for b in (2, 1))
    assert all(alone.values()) and alone[videos[0]] != alone[videos[1]]
    assert batched == alone
    record = runs[2][videos[0]]
    assert record["frame_indices"] == [round(i * 19 / 15) for i in range(16)]
    assert runs[2][videos[1]]["frame_indices"] == list(range(11))
    assert record["run"]["frame_sampling"] == {"policy": "tarsier2", "num_frames": 16}


def test_the_release_preset_runs_dream1k_with_its_settings(tarsier2_folder, clips, tmp_path):
    """`tarsier-dream1k --model_preset tarsier2-7b`: 16 frames by the release's rule, greedy, 512 new tokens at most,
    recorded in every prediction; the video's pixels reach the model as one temporal patch per frame."""
    from tarsier_hf.eval.dream1k import main

    annotations = tmp_path / "dream.jsonl"
    rows = [{"idx": i, "dataset": "demo", "video_file": str(path), "text": {"prompt": "<video>\nDescribe the video "
             "in detail.", "response": "A square moves."}, "extra_info": {"events": ["A square moves."]}}
            for i, path in enumerate(clips.values())]
    annotations.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    status = main(["--checkpoint", str(tarsier2_folder), "--model_preset", "tarsier2-7b", "--annotations",
                   str(annotations), "--videos", str(tmp_path), "--output_dir", str(out), "--skip_scoring",
                   "--max_new_tokens", str(MAX_NEW_TOKENS), "--num_workers", "0"])
    assert status in (0, None)
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 2 and all(p.get("prediction") for p in predictions)
    run = predictions[0]["run"]
    assert run["frame_sampling"] == {"policy": "tarsier2", "num_frames": 16}
    assert run["generation"] == {"max_new_tokens": MAX_NEW_TOKENS, "do_sample": False}


def test_the_video_tensors_the_engine_builds_are_the_release_layout(tarsier2_folder, clips):
    """One request through the engine: every sampled frame is given twice (grid t = frames), its tokens are the
    grid's t*h*w/4 `<|video_pad|>` positions, and M-RoPE's token types mark them as video."""
    from tarsier_hf.inference.engine import InferenceSettings, VideoRequest, VideoTextGenerator, load_model_and_processor

    model, processor = load_model_and_processor(tarsier2_folder)
    settings = InferenceSettings(checkpoint=str(tarsier2_folder),
                                 frame_sampling=families.default_frame_sampling(tarsier2_folder))
    generator = VideoTextGenerator(model, processor, settings)
    item = generator.encode(VideoRequest("a", str(clips["long"]), "Describe the video in detail."))
    (t, h, w), = item["video_grid_thw"].tolist()
    assert t == 16 and len(item["frame_indices"]) == 16
    video_positions = item["input_ids"] == processor.video_token_id
    assert int(video_positions.sum()) == t * h * w // 4
    assert torch.equal(item["mm_token_type_ids"] == 2, video_positions)
    assert item["pixel_values_videos"].shape == (t * h * w, 3 * 2 * 14 * 14)


def test_text_after_a_video_resumes_where_the_release_puts_it(tarsier2_folder):
    """A video of t=5 temporal patches on a 1x2 merged grid: the release (and Qwen2-VL's own code, transformers
    4.4x) resumes the text at the run's largest position + 1 (3 + max(5, 1, 2) = 8); transformers 5.23's
    `get_rope_index` resumes at 3 + max(1, 2) = 5, inside the video's temporal positions. The loader gives the
    release's positions in the forward and in generation; the plain class still gives 5.23's (if this assertion
    fails, transformers changed its rule and tarsier_hf/mrope.py can go)."""
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLModel

    from tarsier_hf.inference.engine import load_model_and_processor

    model, _ = load_model_and_processor(tarsier2_folder)
    video = (5 * 1 * 2)
    ids = torch.tensor([[0] + [7, 8, 9] + [3] * video + [10, 11]])
    types = torch.tensor([[0] + [0, 0, 0] + [2] * video + [0, 0]])
    mask = torch.tensor([[0] + [1] * (3 + video + 2)])  # left padding is skipped
    grid = torch.tensor([[5, 2, 4]])
    positions, deltas = model.model.get_rope_index(ids, types, video_grid_thw=grid, attention_mask=mask)
    temporal = [0, 1, 2] + [3 + t for t in range(5) for _ in range(2)]
    assert positions[0, 0, 1:].tolist() == temporal + [8, 9]
    assert positions[1, 0, 1:].tolist() == [0, 1, 2] + [3] * video + [8, 9]
    assert positions[2, 0, 1:].tolist() == [0, 1, 2] + [3, 4] * 5 + [8, 9]
    assert deltas.tolist() == [[10 - 15]]
    library, _ = Qwen2VLModel.get_rope_index(model.model, ids, types, video_grid_thw=grid, attention_mask=mask)
    assert library[0, 0, -2:].tolist() == [5, 6]


@pytest.mark.slow
def test_tarsier_serve_answers_with_the_engine_s_description(tarsier2_folder, clips, tmp_path):
    """`tarsier-serve` on the converted folder (no --trust_remote_code): a video by path under the allowed folder
    and the same video as a data: URI get the greedy description the engine writes for that video."""
    import base64

    import openai

    from tarsier_hf.inference.describe import DescribeArguments, describe
    from tests.test_serving import start_server, stop_server

    video = str(clips["long"])
    args = DescribeArguments(checkpoint=str(tarsier2_folder), output=str(tmp_path / "d.jsonl"), batch_size=1,
                             max_new_tokens=MAX_NEW_TOKENS, num_workers=0, no_progress=True)
    expected = describe([video], args)[video]["prediction"]
    server, url = start_server([str(tarsier2_folder), "--served_model_name", "t2", "--device", "cpu",
                                "--allowed_local_media_path", str(clips["long"].parent)], tmp_path / "serve.log")
    try:
        client = openai.OpenAI(base_url=url, api_key="EMPTY", timeout=120, max_retries=0)
        data_uri = "data:video/mp4;base64," + base64.b64encode(clips["long"].read_bytes()).decode()
        for source in (video, data_uri):
            response = client.chat.completions.create(
                model="t2", max_tokens=MAX_NEW_TOKENS, temperature=0,
                messages=[{"role": "user", "content": [{"type": "video_url", "video_url": {"url": source}},
                                                       {"type": "text", "text": "Describe the video in detail."}]}])
            assert response.choices[0].message.content.strip() == expected
    finally:
        stop_server(server)
