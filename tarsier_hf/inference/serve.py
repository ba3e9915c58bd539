"""Serve a Tarsier or Tarsier2 (Qwen2-VL) checkpoint, or any plain causal LM, on the OpenAI chat-completions protocol.

    python -m tarsier_hf.inference.serve --model_name_or_path FOLDER_OR_HUB_ID [--host 127.0.0.1] [--port 8000] \\
        [--allowed_local_media_path DIR] [--device auto] [--dtype auto] [--max_new_tokens 512]

Endpoints: `POST /v1/chat/completions` (streaming with `"stream": true`), `GET /v1/models`, `GET /health`.
A user message's content parts may be `text`, `image_url` and `video_url` (`{"video_url": {"url": ...}}`, the
extension vLLM and `transformers serve` use); a URL is a `data:` URI (`data:image/png;base64,...`,
`data:video/mp4;base64,...`, or base64 JPEG frames `data:video/jpeg;base64,<frame>,<frame>,...`), or, only under
`--allowed_local_media_path`, a `file://` URL or a plain path. Frame sampling follows the checkpoint's processor;
a request can override it with `"mm_processor_kwargs": {"num_frames": 16}` (also `fps`, or a whole
`frame_sampling` object such as `{"policy": "fps", "fps": 2, "max_frames": 32}`), sent by the `openai` client
through `extra_body`. Also honoured: `n` (with sampling), `logprobs` / `top_logprobs`, `frequency_penalty` /
`presence_penalty` (OpenAI's additive penalties), `seed`, `stop`. A request that cannot be read (unknown or
malformed fields, unreadable video, missing file, a video for a text-only model, anything past a limit of
`ServeLimits`) gets a 400 naming the field, in OpenAI's error format; a body over `--max_request_mb` gets a 413.
Media are decoded by the server (`load_media`: one self-contained file each, allow-listed demuxers, bounded
pixels), then encoded by the checkpoint's processor. Requests that arrive together are batched into one
left-padded `generate` (`Engine`: `--max_batch_size` rows, waiting at most `--batch_window_ms` for requests still
being read); up to `--max_concurrent_generations` batches run at once, each on its own thread; each request is
answered when its own rows are done, and a client that leaves (streaming or not) ends its rows without stopping
the rest of the batch.

Why not `transformers serve` (transformers 5.23, `transformers/cli/serving/model_manager.py`): it builds the model
with `AutoModelForMultimodalLM` only when `config.model_type` is in the library's static
`MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES`, and otherwise with `getattr(transformers, config.architectures[0])`; its
modality check (`get_model_modality`) looks the class name up in the static `*_MAPPING_NAMES` tables. Registering
a remote-code class (`AutoModelForImageTextToText.register`) fills neither, so a remote-code model cannot pass
without patching library globals. It also answers unreadable media with a 500 and samples 32 frames from every
video. It serves plain causal LMs well (the AutoDQ judge tests use it for SmolLM2); this server covers both.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import logging
import os
import queue
import re
import threading
import time
import urllib.parse
import urllib.request
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator

import torch
from fastapi import Request
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage
from openai.types.chat.chat_completion import Choice, ChoiceLogprobs
from openai.types.chat.chat_completion_chunk import Choice as ChunkChoice
from openai.types.chat.chat_completion_chunk import ChoiceDelta
from openai.types.chat.chat_completion_chunk import ChoiceLogprobs as ChunkLogprobs
from openai.types.completion_usage import CompletionUsage
from pydantic import BaseModel, ConfigDict, Field
from transformers import (
    HfArgumentParser,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
    TextStreamer,
)
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from tarsier_hf import families
from tarsier_hf.cli import consent_boundary, help_text, take_positional
from tarsier_hf.inference.engine import collate_left_padded, one_sample
from frame_sampling_tarsier import FpsSampling, FrameSampling, as_frame_sampling
from media_limits_tarsier import MediaLimitError, MediaLimits, VideoReadError, media_limits
from media_loading_tarsier import DEFAULT_SEQUENCE_FPS, load_image, load_video

logger = logging.getLogger(__name__)

MEDIA_PARTS = {"image_url": "image", "video_url": "video"}
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


@dataclass(frozen=True)
class ServeLimits:
    """What one request may ask for; each bound is the `tarsier-serve` flag of the same name. A request over a
    bound gets a 400 naming the field and the flag, as early as it can be told: counts before anything is decoded,
    pixels from stream and image headers before decoding (and per decoded frame), the prompt once encoded.

    Attributes:
        max_tokens: largest `max_tokens` / `max_completion_tokens`.
        max_stop_strings: most `stop` strings; max_stop_length: longest one, in characters.
        max_frames_per_video: most frames one video may be sampled to (the checkpoint's default included).
        max_frames_per_request: most frames over all the request's videos and images (an image is one frame).
        max_frame_pixels: width x height of any decoded frame or image (default 8K, 7680 x 4320).
        max_request_pixels: width x height summed over every frame the request decodes, frames decoded only to
            reach a sampled one included (10 gigapixels: about 4,800 frames of 1080p).
        max_prompt_tokens: longest prompt, text and frame tokens together.
        max_n: most answers (`n`) one request may ask; each is a row of a batch.
    """

    max_tokens: int = 4096
    max_stop_strings: int = 16
    max_stop_length: int = 256
    max_frames_per_video: int = 64
    max_frames_per_request: int = 128
    max_frame_pixels: int = 7680 * 4320
    max_request_pixels: int = 10_000_000_000
    max_prompt_tokens: int = 32768
    max_n: int = 8


class RequestError(Exception):
    """A request the server cannot answer; becomes an OpenAI-style error body with `status`."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.status, self.param, self.kind = message, status, param, kind


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    include_usage: bool = False


class FrameOptions(BaseModel):
    """`mm_processor_kwargs`: this request's frame sampling (as `TarsierProcessor` takes it)."""

    model_config = ConfigDict(extra="forbid")

    num_frames: int | None = Field(None, ge=1)
    fps: float | None = Field(None, gt=0, allow_inf_nan=False)
    frame_sampling: dict[str, Any] | None = None


class ChatCompletionRequest(BaseModel):
    """The chat-completions fields this server honours; any other field is refused (400), never ignored.
    `messages` are checked field by field in `to_conversation`."""

    model_config = ConfigDict(extra="forbid")

    model: str
    messages: list[Any] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)  # what torch.manual_seed takes
    stop: str | list[str] | None = None
    stream: bool = Field(False, strict=True)
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1)
    logprobs: bool | None = Field(None, strict=True)
    top_logprobs: int | None = Field(None, ge=0, le=20)
    frequency_penalty: float | None = Field(None, ge=-2, le=2, allow_inf_nan=False)
    presence_penalty: float | None = Field(None, ge=-2, le=2, allow_inf_nan=False)
    mm_processor_kwargs: FrameOptions | None = None


@dataclass
class Prepared:
    """A request turned into model inputs and decoding settings.

    Attributes:
        inputs: the processor's tensors of the one sample, on the CPU: the per-token ones (`SEQUENCE_KEYS`:
            `input_ids`, `attention_mask`, ...) `(L,)`, the media ones as the processor returns them (Tarsier's
            `pixel_values` `(F, 3, S, S)` and `num_frames` `(1,)`; Qwen2-VL's `pixel_values_videos` `(P, D)` and
            `video_grid_thw` `(1, 3)`).
        max_tokens: most new tokens of each answer.
        stop: stop strings, none empty (left out of the answer).
        n: answers asked; each is one row of a batch.
        sampler: the request's sampling settings and random generator; None for greedy decoding.
        top_logprobs: None when no log-probabilities are asked, else the alternatives wanted per token (0-20).
        frequency_penalty, presence_penalty: OpenAI's additive penalties (0: none).
    """

    inputs: dict[str, torch.Tensor]
    max_tokens: int
    stop: list[str]
    n: int = 1
    sampler: _RequestSampler | None = None
    top_logprobs: int | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0

    @property
    def prompt_tokens(self) -> int:
        """`L`, the prompt's tokens (text and frames)."""
        return len(self.inputs["input_ids"])

    @property
    def batch_key(self) -> tuple[str, ...]:
        """Requests batch together when their inputs have the same tensors (a text-only prompt and a video one, or
        Qwen2-VL images and videos, have different ones); decoding settings are per row and never split a batch."""
        return tuple(sorted(self.inputs))


@dataclass
class Answer:
    """One generated answer (a row of a batch): its new token ids and, when asked, per token
    `(token id, log-probability, [(alternative id, log-probability)] * top_logprobs)`."""

    ids: list[int] = field(default_factory=list)
    logprobs: list[tuple[int, float, list[tuple[int, float]]]] = field(default_factory=list)


def _local_media(url: str, allowed_root: Path | None, param: str) -> str:
    """Check a `file://` URL or plain path against `--allowed_local_media_path`; return the local path."""
    if url[:7].lower() == "file://":
        parsed = urllib.parse.urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise RequestError(f"{param}: {url}: a file URL on another host cannot be read", param=param)
        path = urllib.request.url2pathname(parsed.path)
    else:
        path = url
    if allowed_root is None:
        raise RequestError(
            f"{param}: {url}: local files are not served; start the server with --allowed_local_media_path DIR, "
            "or send the media as a data: URI", param=param)
    if "\x00" in path:
        raise RequestError(f"{param}: the path holds a NUL byte", param=param)
    resolved = Path(os.path.realpath(path))
    if not resolved.is_relative_to(allowed_root):
        raise RequestError(f"{param}: {url}: outside the allowed local media path {allowed_root}", param=param)
    return str(resolved)


def _expect(value: Any, kind: type | tuple[type, ...], param: str, what: str) -> Any:
    if not isinstance(value, kind):
        raise RequestError(f"{param}: expected {what}, got {type(value).__name__}", param=param)
    return value


def to_conversation(messages: list[Any], multimodal: bool, allowed_root: Path | None) -> list[dict]:
    """OpenAI chat messages -> a transformers conversation (content blocks `text`, and `image` / `video` blocks
    holding `url` and the request field `param` they came from).

    Every field is checked; a malformed one raises `RequestError` naming it (`messages[i].content[j]...`). A
    text-only model gets string contents; media parts are refused for it.
    """
    conversation = []
    for i, message in enumerate(messages):
        _expect(message, dict, f"messages[{i}]", "an object")
        role = ROLES.get(message.get("role")) if isinstance(message.get("role"), str) else None
        if role is None:
            raise RequestError(f"messages[{i}].role: {message.get('role')!r} is not one of {sorted(ROLES)}",
                               param=f"messages[{i}].role")
        content = message.get("content")
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
        _expect(parts, list, f"messages[{i}].content", "a string or a list of parts")
        blocks = []
        for j, part in enumerate(parts):
            param = f"messages[{i}].content[{j}]"
            kind = _expect(part, dict, param, "an object").get("type")
            if kind == "text":
                blocks.append({"type": "text", "text": _expect(part.get("text"), str, f"{param}.text", "a string")})
            elif kind in MEDIA_PARTS:
                if not multimodal:
                    raise RequestError(f"{param}: the served model is text-only and cannot take {kind}", param=param)
                value = part.get(kind)
                url = value.get("url") if isinstance(value, dict) else value
                param = f"{param}.{kind}.url"
                if not _expect(url, str, param, "a URL string"):
                    raise RequestError(f"{param}: missing", param=param)
                if not url[:8].lower().startswith(("data:", "http://", "https://")):
                    url = _local_media(url, allowed_root, param)
                blocks.append({"type": MEDIA_PARTS[kind], "url": url, "param": param})
            else:
                raise RequestError(f"{param}: unsupported content part {kind!r} (expected text, image_url or "
                                   "video_url)", param=param)
        if multimodal:
            conversation.append({"role": role, "content": blocks})
        else:
            conversation.append({"role": role, "content": "".join(block["text"] for block in blocks)})
    return conversation


def frame_sampling_for(default: Any, options: FrameOptions | None) -> FrameSampling:
    """The request's frame sampling: `default` (the processor's) adjusted by `mm_processor_kwargs` the way
    `TarsierProcessor` adjusts it (`frame_sampling` replaces it, `fps` switches to `FpsSampling`, `num_frames`
    changes its count)."""
    param = "mm_processor_kwargs"
    try:
        sampling = as_frame_sampling(default)
        if options is None:
            return sampling
        if options.frame_sampling is not None:
            param = "mm_processor_kwargs.frame_sampling"
            sampling = as_frame_sampling(options.frame_sampling)
        if options.fps is not None:
            param = "mm_processor_kwargs.fps"
            sampling = FpsSampling(options.fps, sampling.max_frames if isinstance(sampling, FpsSampling) else 64)
        elif options.num_frames is not None:
            param = "mm_processor_kwargs.num_frames"
            sampling = sampling.with_num_frames(options.num_frames)
        return sampling
    except (TypeError, ValueError) as error:
        raise RequestError(f"{param}: {error}", param=param) from None


# `FpsSampling` looks at every instant 1/fps apart over a video's duration, which a 700-byte file can claim to be
# 10^9 s (gigabytes of instants); a request may make it look at this many (a 2-hour video at 100 fps is 720,000).
MAX_SAMPLING_INSTANTS = 1_000_000


@dataclass(frozen=True)
class _InstantBound(FrameSampling):
    """`sampling`, refusing an fps rate that would look at more than `MAX_SAMPLING_INSTANTS` instants of a video."""

    sampling: FrameSampling

    def indices(self, timestamps, complex_clip=False, rng=None):
        if isinstance(self.sampling, FpsSampling) and len(timestamps) > 1:
            instants = (timestamps[-1] - timestamps[0]) * self.sampling.fps
            if instants > MAX_SAMPLING_INSTANTS:
                raise VideoReadError(f"the video claims to last {timestamps[-1] - timestamps[0]:.0f} s: sampling it "
                                     f"at {self.sampling.fps} fps would look at {instants:.3g} instants, more than "
                                     f"{MAX_SAMPLING_INSTANTS}")
        return self.sampling.indices(timestamps, complex_clip=complex_clip, rng=rng)

    def max_frames_per_video(self, complex_clip=False):
        return self.sampling.max_frames_per_video(complex_clip)


def load_media(conversation: list[dict], sampling: FrameSampling, resize, limits: ServeLimits) -> list[int]:
    """Decode every `image` / `video` block of `conversation` in place, under `limits`, into the frames the model
    sees: a video block's `url` becomes `video`, its sampled frames resized by `resize` (Tarsier: `(S, S, 3)` uint8
    each) or, with `resize=None`, as decoded (Qwen2-VL's processor resizes them itself);
    an image block's becomes `image`, its `(H, W, 3)` uint8 pixels. Media are read by this installation's
    `media_loading_tarsier` / `media_limits_tarsier` (allow-listed demuxers, one self-contained file each), never by
    a checkpoint's copy of them. Returns the frame count of every video, in order.

    A source that cannot be read, or that would pass `max_frame_pixels` / `max_request_pixels`, raises
    `RequestError` naming its field.
    """
    blocks = [block for message in conversation for block in message["content"] if block["type"] != "text"]
    per_video = sampling.max_frames_per_video()
    videos = sum(block["type"] == "video" for block in blocks)
    if videos and (per_video is None or per_video > limits.max_frames_per_video):
        raise RequestError(f"mm_processor_kwargs: frame sampling {sampling.to_dict()} takes up to {per_video} frames "
                           f"per video; the limit is {limits.max_frames_per_video} (--max_frames_per_video)",
                           param="mm_processor_kwargs")
    frames = videos * (per_video or 0) + len(blocks) - videos
    if frames > limits.max_frames_per_request:
        raise RequestError(f"messages: {videos} videos of up to {per_video} frames and {len(blocks) - videos} images "
                           f"make up to {frames} frames; the limit is {limits.max_frames_per_request} "
                           "(--max_frames_per_request)", param="messages")
    counts = []
    with media_limits(MediaLimits(limits.max_frame_pixels, limits.max_request_pixels)):
        for block in blocks:
            url, param = block.pop("url"), block.pop("param")
            try:
                if block["type"] == "image":
                    block["image"] = load_image(url)
                else:
                    transform = None if resize is None else (lambda frame: resize([frame])[0])
                    sample = load_video(url, _InstantBound(sampling), transform=transform)
                    block["video"] = list(sample.frames)
                    counts.append(len(block["video"]))
            except MediaLimitError as error:
                flag = "--max_frame_pixels" if error.bound == "max_frame_pixels" else "--max_request_pixels"
                raise RequestError(f"{param}: {error} ({flag})", param=param) from None
            except (ValueError, OSError, IndexError) as error:  # VideoReadError is a ValueError
                raise RequestError(f"{param}: {error}", param=param) from None
    return counts


def encode_tarsier(processor, conversation: list[dict], video_frame_counts: list[int]):
    """A conversation whose media are decoded (`load_media`) -> model inputs `(1, L)` through the Tarsier
    processor. Each video is given as its sampled frames and sampled again with a policy that keeps every frame
    once (`FpsSampling` at the rate frame sequences are given), so the frames are exactly `load_media`'s."""
    keep_all = {"policy": "fps", "fps": DEFAULT_SEQUENCE_FPS, "max_frames": max(video_frame_counts, default=1)}
    return processor.apply_chat_template(
        conversation, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
        processor_kwargs={"frame_sampling": keep_all} if video_frame_counts else {},
    )


def encode_qwen2_vl(processor, conversation: list[dict], video_frame_counts: list[int]):
    """A conversation whose media are decoded (`load_media`) -> model inputs `(1, L)` through the Qwen2-VL
    (Tarsier2) processor, which takes every given frame (`do_sample_frames=False`) and applies its own resizes and
    frame duplication."""
    return processor.apply_chat_template(
        conversation, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
        processor_kwargs={"do_sample_frames": False} if video_frame_counts else {},
    )


ENCODERS = {families.TARSIER: encode_tarsier, families.QWEN2_VL: encode_qwen2_vl}


def load_model(model_name_or_path: str, device: str, dtype: str, trust_remote_code: bool):
    """`(processor_or_tokenizer, tokenizer, model, family)` through the one loader (`tarsier_hf.families`): a
    Tarsier, a Qwen2-VL (Tarsier2) or a plain causal LM, in eval mode on `device` (`auto`: CUDA when available)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model, processor, family = families.load_model_and_processor(model_name_or_path, dtype, device,
                                                                 trust_remote_code)
    return processor, processor.tokenizer if family.multimodal else processor, model, family


class Engine:
    """One loaded model with its processor (Tarsier, Qwen2-VL) or tokenizer (a causal LM), generating batches.

    Requests queue at a scheduler (`_BatchScheduler`): a waiting request waits for requests still arriving (being
    prepared), at most `batch_window_ms`, and those that fit (up to `max_batch_size` rows) are left-padded into one
    batch (`collate_left_padded`, the describe engine's rule) and generated by one `model.generate`; up to
    `max_concurrent_generations` batches run at once, each on its own thread, so a request that arrives while a
    long batch runs starts in a new one. Each row keeps its own stop strings, `max_tokens`, sampling settings and
    random generator, penalties, stream and cancellation (`_RowLogits`, `_RowProgress`), and a request is answered
    as soon as its rows are done. Rows are followed from a `StoppingCriteria`, which sees each step's tokens and can
    end one row, rather than from a step-wise decoding loop of our own: `generate` keeps its cache handling, each
    family's input preparation (Qwen2-VL's 3D positions) and its padding of ended rows.

    Args:
        model_name_or_path: a checkpoint folder or Hub id.
        served_model_name: the `model` name requests must use (default: `model_name_or_path`).
        device: `"auto"` (CUDA when available), `"cpu"`, `"cuda:0"`, ...
        dtype: `"auto"` (the checkpoint's) or a torch dtype name.
        trust_remote_code: load the checkpoint's own code files instead of this repository's classes.
        max_new_tokens: the default when a request gives no `max_tokens`.
        allowed_local_media_path: folder under which `file://` URLs and plain paths may be read (None: none).
        limits: what one request may ask for (`ServeLimits`).
        max_concurrent_generations: batches that generate at once, each on its own thread.
        max_batch_size: most rows in one batch (a request asking `n` answers takes `n` rows).
        batch_window_ms: longest a waiting request waits for requests still arriving, to batch with them.
    """

    def __init__(
        self,
        model_name_or_path: str,
        served_model_name: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        trust_remote_code: bool = False,
        max_new_tokens: int = 512,
        allowed_local_media_path: str | None = None,
        limits: ServeLimits = ServeLimits(),
        max_concurrent_generations: int = 4,
        max_batch_size: int = 8,
        batch_window_ms: float = 20.0,
    ):
        self.name = served_model_name or model_name_or_path
        self.processor, self.tokenizer, self.model, self.family = load_model(
            model_name_or_path, device, dtype, trust_remote_code)
        self.multimodal = self.family.multimodal
        self.max_new_tokens = max_new_tokens
        self.allowed_root = Path(os.path.realpath(allowed_local_media_path)) if allowed_local_media_path else None
        self.limits = limits
        if max_new_tokens > limits.max_tokens:
            raise ValueError(f"--max_new_tokens {max_new_tokens} is above --max_tokens {limits.max_tokens}")
        if limits.max_n > max_batch_size:
            raise ValueError(f"--max_n {limits.max_n} is above --max_batch_size {max_batch_size}: the answers of "
                             "one request are rows of one batch")
        if self.multimodal:
            per_video = as_frame_sampling(families.frame_sampling_of(self.processor)).max_frames_per_video()
            if per_video is None or per_video > limits.max_frames_per_video:
                raise ValueError(f"the checkpoint samples up to {per_video} frames per video, above "
                                 f"--max_frames_per_video {limits.max_frames_per_video}")
        self.created = int(time.time())
        self.eos_ids = _eos_ids(self.model)
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else min(self.eos_ids, default=0)
        # What every batch decodes with: the checkpoint's settings, one beam (each row is one answer), one token
        # chosen by argmax (a sampled row's `_RowLogits` leaves only its drawn token possible), padding with
        # `pad_token_id`.
        self._decoding = copy.deepcopy(self.model.generation_config)
        self._decoding.do_sample, self._decoding.num_beams = False, 1
        self._decoding.temperature = self._decoding.top_k = self._decoding.top_p = self._decoding.min_p = None
        self._decoding.pad_token_id = self.pad_token_id
        self._scheduler = _BatchScheduler(self._generate_batch, max_batch_size, batch_window_ms / 1000,
                                          max_concurrent_generations)

    # -- request -> inputs (runs on a request thread, beside the generation of earlier requests) ---------------

    def arriving(self) -> contextlib.AbstractContextManager:
        """A context in which a request is on its way (being prepared, then submitted to `generate`): a batch
        that would start meanwhile waits for it, at most `batch_window_ms` after its oldest request."""
        return self._scheduler.arriving()

    def prepare(self, request: ChatCompletionRequest) -> Prepared:
        """Check the request against `limits`, read its media and encode it; `RequestError` names what is wrong."""
        limits = self.limits
        max_tokens = request.max_completion_tokens or request.max_tokens or self.max_new_tokens
        if max_tokens > limits.max_tokens:
            param = "max_completion_tokens" if request.max_completion_tokens else "max_tokens"
            raise RequestError(f"{param}: {max_tokens} is above the limit of {limits.max_tokens} (--max_tokens)",
                               param=param)
        if request.n > limits.max_n:
            raise RequestError(f"n: {request.n} answers; the limit is {limits.max_n} (--max_n)", param="n")
        stop = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
        if len(stop) > limits.max_stop_strings:
            raise RequestError(f"stop: {len(stop)} strings; the limit is {limits.max_stop_strings} "
                               "(--max_stop_strings)", param="stop")
        if any(len(s) > limits.max_stop_length for s in stop):
            raise RequestError(f"stop: a string of {max(map(len, stop))} characters; the limit is "
                               f"{limits.max_stop_length} (--max_stop_length)", param="stop")
        stop = [s for s in stop if s]  # an empty string stops nothing
        if request.top_logprobs is not None and not request.logprobs:
            raise RequestError("top_logprobs: needs \"logprobs\": true", param="top_logprobs")
        sampler = self._sampler(request)
        if request.n > 1 and sampler is None:
            raise RequestError(f"n: {request.n} answers of greedy decoding would all be the same; ask with a "
                               "temperature above 0", param="n")
        conversation = to_conversation(request.messages, self.multimodal, self.allowed_root)
        if request.mm_processor_kwargs is not None and not self.multimodal:
            raise RequestError("mm_processor_kwargs: this model is text-only and takes none",
                               param="mm_processor_kwargs")
        encoded = self.encode(conversation, request.mm_processor_kwargs)
        prompt_tokens = int(encoded["input_ids"].shape[1])
        if prompt_tokens > limits.max_prompt_tokens:
            raise RequestError(f"messages: the prompt is {prompt_tokens} tokens; the limit is "
                               f"{limits.max_prompt_tokens} (--max_prompt_tokens)", param="messages")
        return Prepared(one_sample(encoded), max_tokens, stop, request.n, sampler,
                        (request.top_logprobs or 0) if request.logprobs else None,
                        request.frequency_penalty or 0.0, request.presence_penalty or 0.0)

    def _sampler(self, request: ChatCompletionRequest) -> _RequestSampler | None:
        """The request's sampling (the checkpoint's settings, changed by `temperature` and `top_p`), or None for
        greedy decoding. A request without a `seed` gets a random one."""
        config = self.model.generation_config
        do_sample = bool(config.do_sample) if request.temperature is None else request.temperature > 0
        if not do_sample:
            return None
        temperature = request.temperature if request.temperature is not None else config.temperature
        top_p = request.top_p if request.top_p is not None else config.top_p
        seed = request.seed if request.seed is not None else int.from_bytes(os.urandom(8), "little")
        return _RequestSampler(temperature, config.top_k, top_p, config.min_p, seed, self.model.device)

    def encode(self, conversation: list[dict], frame_options: FrameOptions | None):
        """A checked conversation -> model inputs `(1, L)`: media decoded by `load_media`, then the processor (or
        the tokenizer of a text-only model)."""
        if not self.multimodal:
            return self.tokenizer.apply_chat_template(
                conversation, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
        sampling = frame_sampling_for(families.frame_sampling_of(self.processor), frame_options)
        resize = self.processor.resize_frames if self.family is families.TARSIER else None
        counts = load_media(conversation, sampling, resize, self.limits)
        try:
            return ENCODERS[self.family](self.processor, conversation, counts)
        except ValueError as error:  # e.g. literal <image> strings in the text
            raise RequestError(f"messages: {error}", param="messages") from None

    # -- generation: batches of requests, one `model.generate` each --------------------------------------------

    def generate(self, prepared: Prepared, sink: Callable[[int, str, list], None] | None = None,
                 cancelled: threading.Event | None = None) -> Future:
        """Queue a request for batching; the future's result is its `n` `Answer`s, set as soon as its rows are
        done (other rows of the batch may go on). `sink(choice, text, logprobs)` receives each answer's text as it
        is generated, with the `Answer.logprobs` entries of its tokens. Setting `cancelled` ends the request's rows
        at their next token (or drops it before it starts) and leaves the other rows of its batch running."""
        request = _QueuedRequest(prepared, Future(), cancelled or threading.Event(), sink)
        self._scheduler.submit(request)
        return request.future

    def _generate_batch(self, requests: list[_QueuedRequest]) -> None:
        """Generate the rows of `requests` (each request's `n` rows next to each other) in one `model.generate`;
        a failure fails every request of the batch that is not answered yet, with the reason."""
        try:
            rows = [_Row(request, choice) for request in requests for choice in range(request.prepared.n)]
            for row in rows:
                row.request.rows.append(row)
                if row.request.sink is not None:
                    row.streamer = _RowStreamer(self.tokenizer, row.request.sink, row)
            batch = collate_left_padded([row.request.prepared.inputs for row in rows], self.pad_token_id)
            logits = _RowLogits(rows, batch["input_ids"].shape[1], self.model.device)
            progress = _RowProgress(rows, logits, self.tokenizer, self.eos_ids)
            config = copy.deepcopy(self._decoding)
            config.max_new_tokens = max(request.prepared.max_tokens for request in requests)
            with torch.inference_mode():
                self.model.generate(
                    **{key: value.to(self.model.device) for key, value in batch.items()}, generation_config=config,
                    logits_processor=LogitsProcessorList([logits] if logits.active else []),
                    stopping_criteria=StoppingCriteriaList([progress]))
            for row in rows:  # ended by a criterion of the checkpoint's own (e.g. max_time) before any of ours
                if not row.done:
                    progress.finish(row)
        except Exception as error:  # noqa: BLE001 - every request of the batch fails with the reason
            for request in requests:
                if not request.future.done():
                    request.future.set_exception(error)

    def finish(self, prepared: Prepared, new_ids: list[int]) -> tuple[str, str, int]:
        """An answer's new token ids -> `(text, finish_reason, completion_tokens)`; OpenAI leaves the stop string
        out."""
        text = self.tokenizer.decode(new_ids, skip_special_tokens=True)
        cut = _first_stop(text, prepared.stop)
        if cut is not None:
            return text[:cut], "stop", len(new_ids)
        ended = bool(new_ids) and new_ids[-1] in self.eos_ids
        reason = "length" if len(new_ids) >= prepared.max_tokens and not ended else "stop"
        return text, reason, len(new_ids)

    def token_logprobs(self, entries: list[tuple[int, float, list[tuple[int, float]]]]) -> list[dict]:
        """`Answer.logprobs` entries in OpenAI's shape (`choices[i].logprobs.content`): per generated token its
        text, UTF-8 bytes, log-probability and `top_logprobs` alternatives (a token that is part of a multi-byte
        character reads U+FFFD; a log-probability of -inf reads -9999, as OpenAI writes it)."""

        def described(token: int, logprob: float) -> dict:
            text = self.tokenizer.decode([token])
            return {"token": text, "bytes": list(text.encode()), "logprob": max(logprob, -9999.0)}

        return [{**described(token, logprob), "top_logprobs": [described(*other) for other in alternatives]}
                for token, logprob, alternatives in entries]


@dataclass(eq=False)
class _QueuedRequest:
    """A prepared request waiting for (or in) a batch; `rows` are filled when its batch starts."""

    prepared: Prepared
    future: Future
    cancelled: threading.Event
    sink: Callable[[int, str, list], None] | None
    arrived: float = field(default_factory=time.monotonic)
    rows: list[_Row] = field(default_factory=list)


class _BatchScheduler:
    """Forms batches from submitted requests and runs each on a bounded pool of threads.

    Loop: wait for a free generation thread and a waiting request; let the oldest waiting request wait while
    other requests are still being read (`arriving`), at most until `window_s` after it was submitted and only
    until `max_batch_size` rows of its kind wait (a request alone, with nothing arriving, starts at once); then
    batch, in submission order, the waiting requests with the oldest's `batch_key` whose rows fit in
    `max_batch_size`. Requests whose client left while waiting are dropped (their future gets no answers). While
    every thread is busy, requests gather, so the next batch takes all that fit.
    """

    def __init__(self, run: Callable[[list[_QueuedRequest]], None], max_batch_size: int, window_s: float,
                 max_batches: int):
        self.run, self.max_batch_size, self.window_s = run, max_batch_size, window_s
        self.changed = threading.Condition()  # guards `waiting` and `reading`
        self.waiting: list[_QueuedRequest] = []
        self.reading = 0
        self.slots = threading.Semaphore(max_batches)
        self.pool = ThreadPoolExecutor(max_workers=max_batches, thread_name_prefix="generate")
        threading.Thread(target=self._loop, name="batcher", daemon=True).start()

    @contextlib.contextmanager
    def arriving(self) -> Iterator[None]:
        """Marks a request being read: the next batch may wait for it (up to the window)."""
        with self.changed:
            self.reading += 1
        try:
            yield
        finally:
            with self.changed:
                self.reading -= 1
                self.changed.notify()

    def submit(self, request: _QueuedRequest) -> None:
        with self.changed:
            self.waiting.append(request)
            self.changed.notify()

    def _loop(self) -> None:
        while True:
            self.slots.acquire()
            with self.changed:
                self.changed.wait_for(lambda: self.waiting)
                deadline = self.waiting[0].arrived + self.window_s
                self.changed.wait_for(lambda: self.reading == 0 or self._rows_like_oldest() >= self.max_batch_size,
                                      timeout=max(0.0, deadline - time.monotonic()))
                batch = self._take_batch()
            if batch:
                self.pool.submit(self._run, batch)
            else:
                self.slots.release()

    def _rows_like_oldest(self) -> int:
        key = self.waiting[0].prepared.batch_key
        return sum(r.prepared.n for r in self.waiting if r.prepared.batch_key == key)

    def _take_batch(self) -> list[_QueuedRequest]:
        for request in [r for r in self.waiting if r.cancelled.is_set()]:
            self.waiting.remove(request)
            request.future.set_result([])
        if not self.waiting:
            return []
        key, batch, rows = self.waiting[0].prepared.batch_key, [], 0
        for request in self.waiting:
            if request.prepared.batch_key == key and rows + request.prepared.n <= self.max_batch_size:
                batch.append(request)
                rows += request.prepared.n
        self.waiting = [r for r in self.waiting if r not in batch]
        return batch

    def _run(self, batch: list[_QueuedRequest]) -> None:
        try:
            self.run(batch)
        finally:
            self.slots.release()


@dataclass(eq=False)
class _Row:
    """One answer of a batch: answer `choice` of `request`, generated so far into `answer`."""

    request: _QueuedRequest
    choice: int
    answer: Answer = field(default_factory=Answer)
    streamer: _RowStreamer | None = None
    done: bool = False


class _RequestSampler:
    """Sampling with a request's own random generator, so a `seed` gives the same tokens whatever is generated
    beside it (in its batch or on other threads). The warpers are `generate`'s own (temperature, top-k, top-p,
    min-p, applied in its order)."""

    def __init__(self, temperature: float | None, top_k: int | None, top_p: float | None, min_p: float | None,
                 seed: int, device):
        warpers = []
        if temperature is not None and temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(temperature))
        if top_k:
            warpers.append(TopKLogitsWarper(top_k))
        if top_p is not None and top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p))
        if min_p is not None:
            warpers.append(MinPLogitsWarper(min_p))
        self.warpers = LogitsProcessorList(warpers)
        self.generator = torch.Generator(device).manual_seed(seed % 2**64)

    def draw(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Scores `(r, V)` of the request's rows -> the drawn token of each row `(r, 1)`."""
        probs = torch.softmax(self.warpers(input_ids, scores).float(), dim=-1)
        return torch.multinomial(probs, 1, generator=self.generator)


class _RowLogits(LogitsProcessor):
    """The per-row part of each step's scores `(B, V)`, in OpenAI's order: records the log-probabilities of rows
    that asked for them (the model's distribution, before penalties and sampling; after the processors the
    checkpoint's own generation config adds, such as its `repetition_penalty`, if it sets any), subtracts
    `frequency_penalty * count + presence_penalty * (count > 0)` from each token's logit (`count`: how often the
    row has generated it), and for a sampled request draws each of its rows' token with its own generator and
    leaves only that token possible (the batch then decodes by argmax)."""

    def __init__(self, rows: list[_Row], prompt_length: int, device: torch.device):
        self.prompt_length = prompt_length
        logged = [i for i, row in enumerate(rows) if row.request.prepared.top_logprobs is not None]
        self.logged = {i: k for k, i in enumerate(logged)}  # row -> its row of `step_logprobs`
        self.logged_rows = torch.tensor(logged, dtype=torch.long, device=device)
        penalised = [i for i, row in enumerate(rows)
                     if row.request.prepared.frequency_penalty or row.request.prepared.presence_penalty]
        self.penalised = torch.tensor(penalised, dtype=torch.long, device=device)
        self.counted = torch.arange(len(penalised), device=device)  # the rows of `counts`
        self.frequency = torch.tensor([rows[i].request.prepared.frequency_penalty for i in penalised],
                                      device=device)[:, None]
        self.presence = torch.tensor([rows[i].request.prepared.presence_penalty for i in penalised],
                                     device=device)[:, None]
        self.counts: torch.Tensor | None = None  # (len(penalised), V)
        self.sampled = []  # (row indices of a sampled request, its sampler)
        for request in dict.fromkeys(row.request for row in rows):
            if request.prepared.sampler is not None:
                indices = [i for i, row in enumerate(rows) if row.request is request]
                self.sampled.append((torch.tensor(indices, device=device), request.prepared.sampler))
        self.active = bool(self.logged or penalised or self.sampled)
        self.step_logprobs: torch.Tensor | None = None  # (len(logged), V) of the latest step

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.logged:
            self.step_logprobs = torch.log_softmax(scores[self.logged_rows].float(), dim=-1)
        if len(self.penalised):
            if self.counts is None:
                self.counts = torch.zeros(len(self.penalised), scores.shape[1], device=scores.device)
                self.frequency, self.presence = self.frequency.to(scores), self.presence.to(scores)
            if input_ids.shape[1] > self.prompt_length:
                self.counts[self.counted, input_ids[self.penalised, -1]] += 1
            scores[self.penalised] -= self.frequency * self.counts + self.presence * (self.counts > 0)
        for indices, sampler in self.sampled:
            drawn = sampler.draw(input_ids[indices], scores[indices])
            scores[indices] = torch.full_like(scores[indices], -float("inf")).scatter_(1, drawn, 0.0)
        return scores


class _RowProgress(StoppingCriteria):
    """After each step: appends every live row's new token to its answer (with its log-probabilities when asked)
    and stream, and ends a row at its end-of-sequence token, its own `max_tokens`, a stop string, or when its
    client has left. An ended row is padded by `generate` from then on; the others go on. A request's future is
    set when its last row ends.

    Stop strings: each step decodes only the last `longest stop + 4` new tokens of a row (every token decodes to at
    least one character, so a stop string the newest token completes lies inside them): a few microseconds a step
    for any stop list, where transformers' `stop_strings` first builds tables over the whole vocabulary (measured
    with SmolLM2's tokenizer: 0.6 s for one 8-character string, 7.5 s for eight of 64, 75 s for 300 of 8)."""

    def __init__(self, rows: list[_Row], logits: _RowLogits, tokenizer, eos_ids: set[int]):
        self.rows, self.logits, self.tokenizer, self.eos_ids = rows, logits, tokenizer, eos_ids
        # per row, the new tokens a stop string completed by the newest one can span (see above)
        self.stop_windows = [max(map(len, row.request.prepared.stop), default=0) + 4 for row in rows]

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        newest = input_ids[:, -1].tolist()
        for i, row in enumerate(self.rows):
            if row.done:
                continue
            prepared = row.request.prepared
            if row.request.cancelled.is_set():
                self.finish(row)
                continue
            token = newest[i]
            row.answer.ids.append(token)
            if prepared.top_logprobs is not None:
                logprobs = self.logits.step_logprobs[self.logits.logged[i]]
                top = torch.topk(logprobs, prepared.top_logprobs)
                row.answer.logprobs.append((token, float(logprobs[token]),
                                            list(zip(top.indices.tolist(), top.values.tolist()))))
            if row.streamer is not None:
                row.streamer.put(torch.tensor([token]))
            if (token in self.eos_ids or len(row.answer.ids) >= prepared.max_tokens
                    or (prepared.stop and self._stopped(row.answer.ids[-self.stop_windows[i]:], prepared.stop))):
                self.finish(row)
        return torch.tensor([row.done for row in self.rows], dtype=torch.bool, device=input_ids.device)

    def _stopped(self, tail_ids: list[int], stop: list[str]) -> bool:
        tail = self.tokenizer.decode(tail_ids, skip_special_tokens=True)
        return any(s in tail for s in stop)

    def finish(self, row: _Row) -> None:
        """End `row`: flush its stream; answer its request when this was its last live row."""
        row.done = True
        if row.streamer is not None:
            row.streamer.end()
        request = row.request
        if all(r.done for r in request.rows) and not request.future.done():
            request.future.set_result([r.answer for r in request.rows])


class _RowStreamer(TextStreamer):
    """Turns one row's tokens into text as `TextStreamer` does (whole words, complete characters) and hands each
    piece to `sink(choice, text, logprobs)`, with the row's log-probability entries (`Answer.logprobs`) added since
    the previous piece; `end` hands over the rest, text or not."""

    def __init__(self, tokenizer, sink: Callable[[int, str, list], None], row: _Row):
        super().__init__(tokenizer, skip_special_tokens=True)
        self.sink, self.row, self.given = sink, row, 0

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        logprobs = self.row.answer.logprobs[self.given:]
        if text or logprobs or stream_end:
            self.given += len(logprobs)
            self.sink(self.row.choice, text, logprobs)


def _eos_ids(model) -> set[int]:
    eos = model.generation_config.eos_token_id
    return set(eos if isinstance(eos, list) else [] if eos is None else [eos])


def _first_stop(text: str, stop: list[str]) -> int | None:
    hits = [text.find(s) for s in stop if s in text]
    return min(hits) if hits else None


def _error_body(message: str, param: str | None = None, kind: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


# pydantic's names for the members of a union in an error location (`stop.str`, `stop.list[str][0]`)
_UNION_MEMBER = re.compile(r"^(str|int|float|bool|dict|list|none)$|\[")


def _field_name(loc: tuple) -> str:
    """A pydantic error location `("body", "messages", 0, "role")` -> `"messages[0].role"`; `"body"` for the body
    itself (not JSON: `("body", position)`)."""
    if len(loc) < 2 or isinstance(loc[1], int):
        return "body"
    name = ""
    for part in loc[1:]:
        if isinstance(part, str) and _UNION_MEMBER.search(part):
            continue
        name += f"[{part}]" if isinstance(part, int) else f".{part}" if name else str(part)
    return name or "body"


class _BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets a 413, however it is sent (a `Content-Length` over
    the limit is refused before reading; a chunked or understated body is counted as it arrives and reading stops
    at the limit)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = f"the request body exceeds the limit of {self.limit} bytes (--max_request_mb)"
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.limit:
            return await self._refuse(send, message if length.isdigit() else "Content-Length is not a number")
        received, over = 0, False

        async def counted_receive():
            nonlocal received, over
            event = await receive()
            if event["type"] == "http.request":
                received += len(event.get("body", b""))
                if received > self.limit:
                    over = True
                    return {"type": "http.disconnect"}  # the application stops reading; this middleware answers
            return event

        response_started = False

        async def guarded_send(event):
            nonlocal response_started
            if over:  # the application answers a body it could not finish reading: the answer is the 413
                return
            response_started = response_started or event["type"] == "http.response.start"
            await send(event)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:  # noqa: BLE001 - a read cut short surfaces as whatever the framework makes of it
            if not over:
                raise
        if over and not response_started:
            await self._refuse(send, message)

    @staticmethod
    async def _refuse(send, message: str) -> None:
        body = json.dumps(_error_body(message)).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def create_app(engine: Engine, max_request_bytes: int = 256 * 2**20):
    """The FastAPI application serving `engine`; bodies over `max_request_bytes` get a 413."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse

    app = FastAPI(title="Tarsier OpenAI-compatible server")
    app.add_middleware(_BodyLimit, limit=max_request_bytes)

    def error_response(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        return JSONResponse(_error_body(message, param, kind), status)

    @app.exception_handler(RequestError)
    async def _request_error(_request: Request, error: RequestError):
        return error_response(error.status, error.message, error.param, error.kind)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, error: RequestValidationError):
        errors = error.errors()
        problems = "; ".join(f"{_field_name(e['loc'])}: {e['msg']}" for e in errors)
        return error_response(400, problems, _field_name(errors[0]["loc"]) if errors else None)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": engine.name, "object": "model", "created": engine.created,
                                            "owned_by": "tarsier-hf"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: ChatCompletionRequest, http_request: Request):
        if request.model != engine.name:
            raise RequestError(f"model {request.model!r} is not served here; this server serves {engine.name!r}",
                               status=404, param="model", kind="not_found_error")
        cancelled = threading.Event()
        # streamed (answer, text, log-probability entries); None once all answers are done
        pieces: queue.Queue[tuple[int, str, list] | None] = queue.Queue()
        with engine.arriving():
            prepared = await asyncio.to_thread(engine.prepare, request)
            sink = (lambda index, text, logprobs: pieces.put((index, text, logprobs))) if request.stream else None
            future = engine.generate(prepared, sink, cancelled)
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if request.stream:
            include_usage = request.stream_options is not None and request.stream_options.include_usage
            return _StreamThatCancels(_stream(prepared, future, pieces, request_id, created, include_usage),
                                      cancelled, media_type="text/event-stream")
        try:
            answers = await _result_while_connected(future, http_request)
        except RequestError:
            raise
        except Exception as error:  # noqa: BLE001 - a failed generation is the server's fault: 500 with the reason
            logger.exception("generation failed")
            raise RequestError(f"generation failed: {type(error).__name__}: {error}", 500, kind="server_error")
        finally:
            cancelled.set()  # a no-op once generation has ended; stops it when the client left or the handler ends
        choices, completion_tokens = [], 0
        for index, answer in enumerate(answers):
            text, reason, tokens = engine.finish(prepared, answer.ids)
            completion_tokens += tokens
            logprobs = (ChoiceLogprobs(content=engine.token_logprobs(answer.logprobs))
                        if prepared.top_logprobs is not None else None)
            choices.append(Choice(index=index, finish_reason=reason, logprobs=logprobs,
                                  message=ChatCompletionMessage(role="assistant", content=text)))
        completion = ChatCompletion(
            id=request_id, object="chat.completion", created=created, model=engine.name, choices=choices,
            usage=CompletionUsage(prompt_tokens=prepared.prompt_tokens, completion_tokens=completion_tokens,
                                  total_tokens=prepared.prompt_tokens + completion_tokens),
        )
        return completion.model_dump(exclude_none=True)

    async def _result_while_connected(future: Future, http_request: Request, poll_s: float = 0.2):
        """The generation's result; a client that disconnects first gets a 499 nobody reads (and the handler's
        `cancelled.set()` stops the generation at its next token)."""
        waiting = asyncio.wrap_future(future)
        while True:
            done, _ = await asyncio.wait({waiting}, timeout=poll_s)
            if done:
                return waiting.result()
            if await http_request.is_disconnected():
                raise RequestError("the client closed the request; its generation was stopped", 499)

    class _StreamThatCancels(StreamingResponse):
        """Sets `cancelled` however the response ends: sent in full, the client gone, or the task cancelled.

        Starlette stops iterating the body when a send fails and leaves the generator to be closed by the garbage
        collector, which can be late enough for the abandoned generation to run to its `max_tokens` and hold a
        generation thread (measured with the collector off: 4 of 48 cancels missed before this class, 0 of 48
        after)."""

        def __init__(self, content, cancelled: threading.Event, **kwargs):
            super().__init__(content, **kwargs)
            self.cancelled = cancelled

        async def __call__(self, scope, receive, send):
            try:
                await super().__call__(scope, receive, send)
            finally:
                self.cancelled.set()

    async def _stream(prepared: Prepared, future: Future, pieces: queue.Queue, request_id: str, created: int,
                      include_usage: bool) -> AsyncIterator[str]:
        """Server-sent chunks of every answer (`choices[0].index` tells which) from `pieces` (what the rows of
        `future`'s request put there), each answer's text held back by as many characters as a stop string could
        still need, so no part of one is ever sent. Log-probability entries, when asked, ride on the answer's next
        chunk (text may follow them later); all chunks together carry the non-streamed answer's entries."""

        def chunk(index: int | None, delta: ChoiceDelta | None = None, reason: str | None = None,
                  usage: CompletionUsage | None = None) -> str:
            choices = []
            if index is not None:
                logprobs = None
                if prepared.top_logprobs is not None and pending[index]:
                    logprobs = ChunkLogprobs(content=engine.token_logprobs(pending[index]))
                    pending[index] = []
                choices = [ChunkChoice(index=index, delta=delta, finish_reason=reason, logprobs=logprobs)]
            body = ChatCompletionChunk(id=request_id, object="chat.completion.chunk", created=created,
                                       model=engine.name, choices=choices, usage=usage)
            return f"data: {body.model_dump_json(exclude_none=True)}\n\n"

        future.add_done_callback(lambda _: pieces.put(None))
        hold = max((len(s) for s in prepared.stop), default=1) - 1
        texts, sent, stopped = [""] * prepared.n, [0] * prepared.n, [False] * prepared.n
        pending: list[list] = [[] for _ in range(prepared.n)]  # log-probability entries not sent yet, per answer
        try:
            for index in range(prepared.n):
                yield chunk(index, ChoiceDelta(role="assistant", content=""))
            while (piece := await asyncio.to_thread(pieces.get)) is not None:
                index, text, logprobs = piece
                pending[index] += logprobs
                if stopped[index]:
                    continue
                texts[index] += text
                cut = _first_stop(texts[index], prepared.stop)
                end = cut if cut is not None else max(sent[index], len(texts[index]) - hold)
                if end > sent[index]:
                    yield chunk(index, ChoiceDelta(content=texts[index][sent[index]:end]))
                    sent[index] = end
                stopped[index] = cut is not None
            answers = await asyncio.wrap_future(future)
        except Exception as error:  # noqa: BLE001 - headers are sent: report in the stream, as OpenAI does
            logger.exception("generation failed")
            message = f"generation failed: {type(error).__name__}: {error}"
            yield f"data: {json.dumps({'error': {'message': message, 'type': 'server_error'}})}\n\n"
            return
        completion_tokens = 0
        for index, answer in enumerate(answers):
            final_text, reason, tokens = engine.finish(prepared, answer.ids)
            completion_tokens += tokens
            if final_text[sent[index]:]:
                yield chunk(index, ChoiceDelta(content=final_text[sent[index]:]))
            yield chunk(index, ChoiceDelta(), reason)
        if include_usage:
            yield chunk(None, usage=CompletionUsage(prompt_tokens=prepared.prompt_tokens,
                                                    completion_tokens=completion_tokens,
                                                    total_tokens=prepared.prompt_tokens + completion_tokens))
        yield "data: [DONE]\n\n"

    return app


@dataclass
class ServeArguments:
    """Command-line arguments of `python -m tarsier_hf.inference.serve`."""

    model_name_or_path: str | None = field(default=None, metadata={
        "help": "Checkpoint folder or Hub id: a Tarsier, a Tarsier2 (Qwen2-VL) or any causal LM (required; formerly "
                "the positional MODEL)."})
    host: str = field(default="127.0.0.1", metadata={"help": "Listen address."})
    port: int = field(default=8000, metadata={"help": "Listen port."})
    served_model_name: str | None = field(default=None, metadata={"help": "Name requests use (default: the model path)."})
    trust_remote_code: bool = field(default=False, metadata={
        "help": "Run the checkpoint's own code files instead of this repository's classes."})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:1, ..."})
    dtype: str = field(default="auto", metadata={"help": "auto (the checkpoint's), float32, bfloat16, float16."})
    max_new_tokens: int = field(default=512, metadata={"help": "Default when a request has no max_tokens."})
    allowed_local_media_path: str | None = field(
        default=None, metadata={"help": "Folder whose files requests may name by path or file:// URL."})
    max_request_mb: float = field(default=256, metadata={
        "help": "Largest request body (data: URIs included), however it is sent (chunked too)."})
    max_concurrent_generations: int = field(default=4, metadata={
        "help": "Batches that generate at once, each on its own thread; more wait for a free one."})
    max_tokens: int = field(default=ServeLimits.max_tokens, metadata={"help": "Largest max_tokens a request may ask."})
    max_stop_strings: int = field(default=ServeLimits.max_stop_strings, metadata={"help": "Most stop strings."})
    max_stop_length: int = field(default=ServeLimits.max_stop_length, metadata={
        "help": "Longest stop string (characters)."})
    max_frames_per_video: int = field(default=ServeLimits.max_frames_per_video, metadata={
        "help": "Most frames a video may be sampled to."})
    max_frames_per_request: int = field(default=ServeLimits.max_frames_per_request, metadata={
        "help": "Most frames over a request's videos and images (an image is one frame)."})
    max_frame_pixels: int = field(default=ServeLimits.max_frame_pixels, metadata={
        "help": "Largest width x height of a decoded frame or image (default 8K)."})
    max_request_pixels: int = field(default=ServeLimits.max_request_pixels, metadata={
        "help": "Most pixels a request may decode, over all its frames (frames decoded to reach a sampled one too)."})
    max_prompt_tokens: int = field(default=ServeLimits.max_prompt_tokens, metadata={
        "help": "Longest prompt in tokens (text and frames)."})
    max_n: int = field(default=ServeLimits.max_n, metadata={
        "help": "Most answers (n) one request may ask; at most --max_batch_size."})
    max_batch_size: int = field(default=8, metadata={
        "help": "Most rows (a request's n answers are n rows) generated together in one batch."})
    batch_window_ms: float = field(default=20.0, metadata={
        "help": "Longest a request waits for requests still being read, to batch with them (milliseconds)."})
    log_level: str = field(default="info", metadata={"help": "uvicorn log level."})


@consent_boundary
def main(argv: list[str] | None = None) -> None:
    import uvicorn  # optional: the `serve` extra

    parser = HfArgumentParser(ServeArguments, **help_text(
        "Serve a Tarsier, a Tarsier2 or any causal LM checkpoint on the OpenAI chat-completions API.",
        "tarsier-serve --model_name_or_path tarsier-7b --port 8000 --allowed_local_media_path clips/",
        usage="%(prog)s --model_name_or_path MODEL [--host HOST] [--port PORT] [options]"))
    parser.add_argument("model", nargs="?", help=argparse.SUPPRESS)  # the positional form, deprecated
    args, positional = parser.parse_args_into_dataclasses(args=argv)
    model = take_positional(parser, args.model_name_or_path, positional.model, "--model_name_or_path")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    limits = ServeLimits(**{name: getattr(args, name) for name in ServeLimits.__dataclass_fields__})
    engine = Engine(model, args.served_model_name, args.device, args.dtype, args.trust_remote_code,
                    args.max_new_tokens, args.allowed_local_media_path, limits, args.max_concurrent_generations,
                    args.max_batch_size, args.batch_window_ms)
    logger.info("serving %s (%s) on http://%s:%d/v1", engine.name,
                "video/image/text" if engine.multimodal else "text", args.host, args.port)
    uvicorn.run(create_app(engine, int(args.max_request_mb * 2**20)), host=args.host, port=args.port,
                log_level=args.log_level)


if __name__ == "__main__":
    main()
