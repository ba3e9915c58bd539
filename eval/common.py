"""Shared by the benchmark runners: model/generation and judge options, finding video files, and the steps around
generation."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from tarsier_hf.eval.autodq.pipeline import build_judge
from tarsier_hf.eval.autodq.scoring import get_config
from tarsier_hf.eval.prompts import get_preset
from tarsier_hf.inference.batch import get_state, run_inference
from tarsier_hf.inference.engine import GenerationArguments, InferenceSettings, inference_sampling
from video_processing_tarsier import VIDEO_EXTENSIONS, FrameSampling


@dataclass(kw_only=True)
class ModelArguments(GenerationArguments):
    """Which checkpoint runs and how it generates."""

    checkpoint: str = field(metadata={"help": "Tarsier checkpoint folder or Hub id."})
    model_preset: str = field(default="tarsier-7b", metadata={"help": "Frames/prompt preset of tarsier_hf.eval.prompts (§5.1)."})
    num_frames: int | None = field(default=None, metadata={"help": "Frames per video (default: the preset's)."})
    limit: int | None = field(default=None, metadata={"help": "Only the first N samples (smoke runs)."})

    def inference_settings(self, num_frames: int | None, fps: float | None = None) -> InferenceSettings:
        """The run's settings: `num_frames` frames by the preset's policy, or the preset's `fps` when no count is
        given."""
        policy = FrameSampling.from_dict({"policy": get_preset(self.model_preset).frame_sampling})
        return InferenceSettings(
            checkpoint=self.checkpoint, frame_sampling=inference_sampling(num_frames, fps, default=policy),
            system_prompt=self.system_prompt, dtype=self.dtype, generation=self.generation_config(), seed=self.seed,
        )


@dataclass
class JudgeArguments:
    """The LLM judge (AutoDQ and the Video-ChatGPT QA protocol share its client, cache and retries)."""

    judge: str = field(default="openai", metadata={"help": "openai (any OpenAI-compatible endpoint) or transformers."})
    judge_model: str | None = field(default=None, metadata={"help": "Judge model name (default gpt-3.5-turbo-0125)."})
    judge_base_url: str | None = field(default=None, metadata={"help": "e.g. http://127.0.0.1:8000/v1"})
    judge_api_key: str | None = field(default=None, metadata={"help": "Defaults to $OPENAI_API_KEY."})
    judge_endpoint_kind: str | None = field(default=None, metadata={"help": "Recorded label: openai, vllm, ..."})
    judge_preset: str = field(default="robust", metadata={"help": "AutoDQ preset: robust or official."})
    judge_max_tokens: int | None = field(default=None, metadata={"help": "Override the preset's max tokens."})
    judge_max_parse_attempts: int | None = field(default=None, metadata={"help": "Re-asks after unreadable answers."})
    judge_cache: str | None = field(default=None, metadata={"help": "SQLite judge cache (default ~/.cache/tarsier)."})
    judge_concurrency: int | None = field(
        default=None, metadata={"help": "Samples in flight (default 4; 1 for a judge on this machine)."})
    judge_timeout: float | None = field(
        default=None, metadata={"help": "Seconds per judge request (default 60; 600 for a judge on this machine)."})
    judge_max_retries: int | None = field(
        default=None, metadata={"help": "Attempts per judge request on transient errors (default 6; 2 locally)."})
    judge_device: str = field(default="cpu", metadata={"help": "Device of an in-process transformers judge."})
    skip_scoring: bool = field(default=False, metadata={"help": "Only generate; score later."})

    def autodq_config(self):
        overrides = {}
        if self.judge_max_tokens is not None:
            overrides["max_tokens"] = self.judge_max_tokens
        if self.judge_max_parse_attempts is not None:
            overrides["max_parse_attempts"] = self.judge_max_parse_attempts
        return get_config(self.judge_preset, **overrides)

    def build(self, config=None):
        """A `ChatJudge` (tarsier_hf.eval.autodq.judge) with the persistent cache and bounded retries."""
        config = config or self.autodq_config()
        return build_judge(
            self.judge, config, judge_model=self.judge_model, base_url=self.judge_base_url,
            api_key=self.judge_api_key, endpoint_kind=self.judge_endpoint_kind, timeout=self.judge_timeout,
            max_retries=self.judge_max_retries, cache_path=self.judge_cache, device=self.judge_device,
        )


def find_video_file(videos: str | os.PathLike, *names: str) -> Path | None:
    """The first file `videos/NAME`, else `videos/NAME.EXT` (EXT one of the processor's `VIDEO_EXTENSIONS`, in
    sorted order), over `names` in order; None when no candidate exists."""
    videos = Path(videos)
    for name in names:
        for candidate in [videos / name, *(videos / f"{name}{ext}" for ext in sorted(VIDEO_EXTENSIONS))]:
            if candidate.is_file():
                return candidate
    return None


# -- what every benchmark runner does around generation -------------------------------------------------------------


def generate_predictions(requests, output_dir, model_args: ModelArguments, settings: InferenceSettings, model=None,
                         processor=None, progress: bool = True, state=None) -> dict[str, dict] | None:
    """Run (or resume) generation into `output_dir/predictions.jsonl`; the records by id, or `None` off rank 0."""
    state = state or get_state()
    outputs = run_inference(requests, Path(output_dir) / "predictions.jsonl", settings, model_args.batch_size,
                            model=model, processor=processor, progress=progress, state=state)
    return outputs if state.is_main_process else None


def predictions_of(outputs: dict[str, dict]) -> dict[str, str]:
    """`{id: prediction}` of the records that have one (failed videos have an `error` instead)."""
    return {k: r["prediction"] for k, r in outputs.items() if "prediction" in r}


def unreadable_videos(outputs: dict[str, dict]) -> list[dict]:
    """`[{"id", "error"}]` of the records whose video could not be read."""
    return [{"id": k, "error": r["error"]} for k, r in outputs.items() if "error" in r]


def result_header(benchmark: str, task: str, model_name: str | None, model_args: ModelArguments,
                  settings: InferenceSettings) -> dict:
    """The fields that open every benchmark's `results.json`: what ran, on which checkpoint, with which frames."""
    return {"benchmark": benchmark, "task": task, "model": model_name or str(model_args.checkpoint),
            "checkpoint": str(model_args.checkpoint), "frames": settings.frames, "run": settings.to_dict()}
