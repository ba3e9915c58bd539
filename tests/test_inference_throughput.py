"""tarsier_hf.inference.batch throughput parts: length-sorted batches, DataLoader workers decoding ahead, streamed JSONL;
and the throughput benchmark against transformers' LLaVA-NeXT-Video at tiny size."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from transformers import GenerationConfig

from tarsier_hf.inference.engine import VideoTextGenerator
from tests.test_eval_runner import build_tiny_checkpoint, write_stand_in_videos
from frame_sampling_tarsier import UniformSampling

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def loaded(smollm2_dir, tmp_path_factory):
    from tarsier_hf.inference.engine import load_model_and_processor

    return load_model_and_processor(build_tiny_checkpoint(smollm2_dir, tmp_path_factory.mktemp("tiny_throughput")))


def test_plan_batches_sorts_by_length_stably():
    from tarsier_hf.inference.batch import plan_batches
    from tarsier_hf.inference.engine import VideoRequest

    requests = [VideoRequest(str(i), f"{i}.mp4", "x" * n) for i, n in enumerate([5, 1, 5, 3, 1, 9, 3])]
    batches = plan_batches(requests, 3, length=lambda r: len(r.prompt))
    assert [[r.id for r in b] for b in batches] == [["1", "4", "3"], ["6", "0", "2"], ["5"]]
    assert [[r.id for r in b] for b in plan_batches(requests, 3)][0] == ["0", "1", "2"]  # no key: input order


class RecordingGenerator(VideoTextGenerator):
    """The real generator (every method runs unchanged), noting which process encoded each batch and how many
    records `output` held at each generate call."""

    output: Path
    lines_seen: list[int] = []
    pids: set[int] = set()

    def encode_batch(self, requests):
        encoded, errors = super().encode_batch(requests)
        for _, item in encoded:
            item["pid"] = os.getpid()
        return encoded, errors

    def collate(self, encoded):
        RecordingGenerator.pids |= {e["pid"] for e in encoded}
        return super().collate(encoded)

    def generate(self, batch, seed):
        output = RecordingGenerator.output
        RecordingGenerator.lines_seen.append(len(output.read_text().splitlines()) if output.exists() else 0)
        return super().generate(batch, seed)


def test_workers_decode_ahead_and_results_stream_identical_to_batch_one(loaded, tmp_path, monkeypatch):
    import tarsier_hf.inference.batch as inference

    model, processor = loaded
    videos = write_stand_in_videos(tmp_path / "v", [f"c{i}" for i in range(5)], seed=1)
    (tmp_path / "v" / "broken.mp4").write_text("not a video")
    prompts = ["Describe the video.", "Describe the video in detail, with every colour you see and how it moves."]
    requests = [inference.VideoRequest(f"r{i}", str(v), prompts[i % 2]) for i, v in enumerate(videos)]
    requests.append(inference.VideoRequest("bad", str(tmp_path / "v" / "broken.mp4"), prompts[0]))
    settings = inference.InferenceSettings(checkpoint="tiny", frame_sampling=UniformSampling(3),
                                           generation=GenerationConfig(max_new_tokens=6, do_sample=False))

    reference = inference.run_inference(requests, tmp_path / "one.jsonl", settings, batch_size=1, model=model,
                                        processor=processor, progress=False, num_workers=0)

    output = tmp_path / "fast.jsonl"
    RecordingGenerator.output = output
    monkeypatch.setattr(inference, "VideoTextGenerator", RecordingGenerator)
    fast = inference.run_inference(requests, output, settings, batch_size=2, model=model, processor=processor,
                                   progress=False, num_workers=2)
    assert RecordingGenerator.pids and os.getpid() not in RecordingGenerator.pids  # decoded in DataLoader workers
    assert RecordingGenerator.lines_seen == [0, 2, 4]  # each batch's records were in the file before the next generate

    assert fast.keys() == reference.keys()
    for key, record in reference.items():
        if "prediction" in record:
            assert fast[key]["prediction"] == record["prediction"], key
            assert fast[key]["frame_indices"] == record["frame_indices"]
    assert "not a readable video file" in fast["bad"]["error"]
    # sorted by prompt length (stable): the four short prompts fill two batches, the two long ones the third
    order = [json.loads(line)["id"] for line in output.read_text().splitlines()]
    assert order == ["r0", "r2", "r4", "bad", "r1", "r3"]


@pytest.mark.slow
def test_throughput_benchmark_runs_and_batched_outputs_equal_batch_one(tmp_path):
    from tests.training_runs import child_env
    import subprocess

    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_describe_throughput.py"), "--videos", "4",
           "--batch_size", "2", "--layers", "1", "--hidden", "64", "--new_tokens", "4", "--json", str(out)]
    result = subprocess.run(cmd, cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["identical"] is True and report["videos"] == 4
    assert "| plain loop, LlavaNextVideoForConditionalGeneration |" in result.stdout
    assert len(report["positions"]) == 2  # two prompt lengths, so sorting by length has work to do
