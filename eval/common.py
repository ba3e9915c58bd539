"""Shared by the benchmark runners: model/generation, judge and logging options, finding video files, the checks
made before the long work (`preflight`), and the steps around generation.

A run can take hours; everything it needs is checked in its first seconds, before the model loads: the output
folder is writable, every video of the annotations exists (the missing ones are listed in one report; a run none
of whose videos exist stops), and the judge answers (`JudgeArguments.prepare`: key, endpoint reachable within
`--judge_check_timeout` seconds, model listed). Everything wrong is reported at once in one `PreflightError`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tarsier_hf.cli import CommandStop, renamed
from tarsier_hf.eval.autodq.judge import JudgeUnavailableError
from tarsier_hf.eval.autodq.pipeline import build_judge
from tarsier_hf.eval.autodq.scoring import get_config
from tarsier_hf.eval.prompts import get_preset
from tarsier_hf.inference.batch import get_state, run_inference
from tarsier_hf.inference.engine import GenerationArguments, InferenceSettings, inference_sampling
from frame_sampling_tarsier import FrameSampling
from media_limits_tarsier import VIDEO_EXTENSIONS

logger = logging.getLogger(__name__)

# Loggers of the HTTP and Hub libraries: one INFO line per judge request buries the progress bar.
LIBRARY_LOGGERS = ("httpx", "httpx2", "httpcore", "httpcore2", "openai", "urllib3", "filelock")


class PreflightError(CommandStop, RuntimeError):
    """What would stop a run, found before its long work: every problem, one per line (a runner's `main` ends with
    it: `tarsier_hf.cli.consent_boundary`)."""


@dataclass
class LoggingArguments:
    """How much the run says."""

    log_level: str = field(default="info", metadata={"help": "Level of this run's messages: debug, info, warning."})
    verbose: bool = field(default=False, metadata={
        "help": "Also show the HTTP libraries' messages (httpx, openai, urllib3) at --log_level; they stay at "
                "warning otherwise."})


def configure_logging(args: LoggingArguments | None = None) -> None:
    """Log at `args.log_level`, with the HTTP libraries at WARNING unless `args.verbose`."""
    args = args or LoggingArguments()
    level = logging.getLevelName(args.log_level.upper())
    if not isinstance(level, int):
        raise ValueError(f"--log_level {args.log_level!r}: expected debug, info, warning or error")
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(level if args.verbose else max(level, logging.WARNING))


@dataclass(kw_only=True)
class ModelArguments(GenerationArguments):
    """Which checkpoint runs and how it generates."""

    checkpoint: str = field(metadata={"help": "Tarsier checkpoint folder or Hub id.",
                                      **renamed("--model_name_or_path", "--checkpoint")})
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
    judge_check_timeout: float = field(
        default=10.0, metadata={"help": "Seconds the judge has to answer the check made before generation."})
    skip_scoring: bool = field(default=False, metadata={"help": "Only generate; score later (no judge check)."})

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

    def prepare(self, config=None, judge=None):
        """The run's judge, checked before any generation; None with `skip_scoring`.

        An endpoint judge is built now (a missing key fails here) and asked for its model list within
        `judge_check_timeout` seconds (`ChatJudge.check`). An in-process transformers judge is only checked here
        (a generation bound, a model whose config loads) and returned as None: it is built after generation, so
        that the judge and the video model are not in memory together. A judge passed in is checked as it is.

        Raises:
            JudgeUnavailableError: naming the cause and the fix.
        """
        if self.skip_scoring:
            return None
        config = config or self.autodq_config()
        if judge is None and self.judge == "transformers":
            from transformers import AutoConfig

            if config.max_tokens is None:
                raise JudgeUnavailableError("--judge transformers needs --judge_max_tokens (generation must be bounded)")
            model = self.judge_model or config.judge_model
            try:
                AutoConfig.from_pretrained(model)
            except (OSError, ValueError) as error:
                raise JudgeUnavailableError(f"judge model {model!r} cannot be loaded: {error}") from None
            return None
        try:
            judge = judge or self.build(config)
        except ValueError as error:
            raise JudgeUnavailableError(str(error)) from None
        check = getattr(judge, "check", None)
        if check is not None:
            logger.info("%s", check(self.judge_check_timeout))
        return judge


def find_video_file(videos: str | os.PathLike | None, *names: str) -> Path | None:
    """The first file `videos/NAME`, else `videos/NAME.EXT` (EXT one of the processor's `VIDEO_EXTENSIONS`, in
    sorted order), over `names` in order; None when no candidate exists. Without `videos`, names are paths as
    given (absolute, or relative to the working directory)."""
    videos = Path(videos or "")
    for name in names:
        for candidate in [videos / name, *(videos / f"{name}{ext}" for ext in sorted(VIDEO_EXTENSIONS))]:
            if candidate.is_file():
                return candidate
    return None


# -- what every benchmark runner checks before generation -----------------------------------------------------------


def media_exists(video) -> bool:
    """True when a request's video source is there: a file or a frame folder (a `file://` URL: its path); inline
    sources (`data:` URIs, frames) always are."""
    if isinstance(video, os.PathLike):
        video = os.fspath(video)
    if not isinstance(video, str) or video[:5].lower() == "data:":
        return True
    if video[:7].lower() == "file://":
        from urllib.parse import unquote, urlparse

        video = unquote(urlparse(video).path)
    return os.path.exists(video)


def missing_videos(requests) -> list[dict]:
    """`[{"id", "video"}]` of the requests whose video is not there (`media_exists`)."""
    return [{"id": str(r.id), "video": str(r.video)} for r in requests if not media_exists(r.video)]


def output_dir_problem(output_dir: str | os.PathLike) -> str | None:
    """Why `output_dir` cannot take the run's files (created when missing), or None."""
    try:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir, prefix=".write-check-"):
            pass
    except OSError as error:
        return f"output folder {output_dir}: cannot write there ({error.strerror or error})"
    return None


def preflight(benchmark: str, output_dir, n_videos: int, missing: list[dict], videos=None, judge_args=None,
              config=None, judge=None, report: bool = True, packages: tuple[str, ...] = ()):
    """Check what the run needs before its long work; returns the judge to score with (see
    `JudgeArguments.prepare`; None when scoring is skipped or the judge is built later).

    `missing` (of `n_videos`) is logged as one report, every video named (with `report`: one process of several
    reports); a run none of whose videos exist stops. `packages` are the modules the steps after generation
    import (the `eval` extra: `evaluate` for CIDEr, `matplotlib` for figures).

    Raises:
        PreflightError: every problem found (output folder, videos, packages, judge), one per line.
    """
    problem = output_dir_problem(output_dir)
    problems = [problem] if problem else []
    absent = [name for name in packages if importlib.util.find_spec(name) is None]
    if absent:
        problems.append(f"not installed: {', '.join(absent)} (pip install 'tarsier-hf[eval]')")
    if missing:
        where = f"under {videos}" if videos else "(paths as given: pass --videos FOLDER if they are relative to one)"
        listing = "\n".join(f"  {m['id']}: {m['video']}" for m in missing)
        if report:
            logger.warning("%s: %d of %d videos are missing %s:\n%s", benchmark, len(missing), n_videos, where, listing)
        if len(missing) == n_videos:
            problems.append(f"none of the {n_videos} videos was found {where} (listed above)")
    if judge_args is not None:
        try:
            judge = judge_args.prepare(config, judge)
        except JudgeUnavailableError as error:
            problems.append(str(error))
    if problems:
        raise PreflightError(f"{benchmark}: stopped before generation:\n" + "\n".join(f"- {p}" for p in problems))
    return judge


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
