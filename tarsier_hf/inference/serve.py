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
through `extra_body`. A request that cannot be read (unknown or malformed fields, unreadable video, missing file, a
video for a text-only model, anything past a limit of `ServeLimits`) gets a 400 naming the field, in OpenAI's error
format; a body over `--max_request_mb` gets a 413. Media are decoded by the server (`load_media`: one self-contained
file each, allow-listed demuxers, bounded pixels), then encoded by the checkpoint's processor; up to
`--max_concurrent_generations` requests generate at once, each on its own thread, and a client that leaves (streaming
or not) stops its generation.

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
import copy
import json
import logging
import os
import re
import threading
import time
import urllib.parse
import urllib.request
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

import torch
from fastapi import Request
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage
from openai.types.chat.chat_completion import Choice
from openai.types.chat.chat_completion_chunk import Choice as ChunkChoice
from openai.types.chat.chat_completion_chunk import ChoiceDelta
from openai.types.completion_usage import CompletionUsage
from pydantic import BaseModel, ConfigDict, Field
from transformers import (
    HfArgumentParser,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
)

from tarsier_hf import families
from tarsier_hf.cli import consent_boundary, help_text, take_positional
from video_processing_tarsier import (
    DEFAULT_SEQUENCE_FPS,
    FpsSampling,
    FrameSampling,
    MediaLimitError,
    MediaLimits,
    VideoReadError,
    as_frame_sampling,
    load_image,
    load_video,
    media_limits,
)

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
    """

    max_tokens: int = 4096
    max_stop_strings: int = 16
    max_stop_length: int = 256
    max_frames_per_video: int = 64
    max_frames_per_request: int = 128
    max_frame_pixels: int = 7680 * 4320
    max_request_pixels: int = 10_000_000_000
    max_prompt_tokens: int = 32768


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
    n: int = Field(1, ge=1, le=1)
    mm_processor_kwargs: FrameOptions | None = None


@dataclass
class Prepared:
    """A request turned into model inputs: `inputs` holds `input_ids` `(1, L)` (and `pixel_values`
    `(F, 3, S, S)`, `num_frames` `(1,)` for Tarsier) on the model's device."""

    inputs: Any
    generation_config: Any
    stop: list[str]
    prompt_tokens: int
    logits_processor: list = field(default_factory=list)


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
    `video_processing_tarsier` (allow-listed demuxers, one self-contained file each), never by a checkpoint's copy
    of it. Returns the frame count of every video, in order.

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
    """One loaded model with its processor (Tarsier) or tokenizer (a causal LM), generating on a bounded pool of
    threads.

    Args:
        model_name_or_path: a checkpoint folder or Hub id.
        served_model_name: the `model` name requests must use (default: `model_name_or_path`).
        device: `"auto"` (CUDA when available), `"cpu"`, `"cuda:0"`, ...
        dtype: `"auto"` (the checkpoint's) or a torch dtype name.
        trust_remote_code: load the checkpoint's own code files instead of this repository's classes.
        max_new_tokens: the default when a request gives no `max_tokens`.
        allowed_local_media_path: folder under which `file://` URLs and plain paths may be read (None: none).
        limits: what one request may ask for (`ServeLimits`).
        max_concurrent_generations: generations that run at once, each on its own thread; later ones wait for a
            free thread.
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
        if self.multimodal:
            per_video = as_frame_sampling(families.frame_sampling_of(self.processor)).max_frames_per_video()
            if per_video is None or per_video > limits.max_frames_per_video:
                raise ValueError(f"the checkpoint samples up to {per_video} frames per video, above "
                                 f"--max_frames_per_video {limits.max_frames_per_video}")
        self.created = int(time.time())
        self._pool = ThreadPoolExecutor(max_workers=max_concurrent_generations, thread_name_prefix="generate")

    # -- request -> inputs (runs on a request thread, beside the generation of earlier requests) ---------------

    def prepare(self, request: ChatCompletionRequest) -> Prepared:
        """Check the request against `limits`, read its media and encode it; `RequestError` names what is wrong."""
        limits = self.limits
        max_tokens = request.max_completion_tokens or request.max_tokens or self.max_new_tokens
        if max_tokens > limits.max_tokens:
            param = "max_completion_tokens" if request.max_completion_tokens else "max_tokens"
            raise RequestError(f"{param}: {max_tokens} is above the limit of {limits.max_tokens} (--max_tokens)",
                               param=param)
        stop = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
        if len(stop) > limits.max_stop_strings:
            raise RequestError(f"stop: {len(stop)} strings; the limit is {limits.max_stop_strings} "
                               "(--max_stop_strings)", param="stop")
        if any(len(s) > limits.max_stop_length for s in stop):
            raise RequestError(f"stop: a string of {max(map(len, stop))} characters; the limit is "
                               f"{limits.max_stop_length} (--max_stop_length)", param="stop")
        conversation = to_conversation(request.messages, self.multimodal, self.allowed_root)
        if request.mm_processor_kwargs is not None and not self.multimodal:
            raise RequestError("mm_processor_kwargs: this model is text-only and takes none",
                               param="mm_processor_kwargs")
        inputs = self.encode(conversation, request.mm_processor_kwargs)
        prompt_tokens = int(inputs["input_ids"].shape[1])
        if prompt_tokens > limits.max_prompt_tokens:
            raise RequestError(f"messages: the prompt is {prompt_tokens} tokens; the limit is "
                               f"{limits.max_prompt_tokens} (--max_prompt_tokens)", param="messages")
        config = copy.deepcopy(self.model.generation_config)
        config.max_new_tokens = max_tokens
        if request.temperature is not None:
            config.do_sample = request.temperature > 0
            if config.do_sample:
                config.temperature = request.temperature
        if request.top_p is not None:
            config.top_p = request.top_p
        processors = []
        if request.seed is not None and config.do_sample:
            processors.append(_SeededSampler(config, request.seed, self.model.device))
        return Prepared(inputs.to(self.model.device), config, stop, prompt_tokens, processors)

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

    # -- generation (at most `max_concurrent_generations` at once, each on a thread of the engine's pool) -------

    def _generate(self, prepared: Prepared, streamer=None, cancelled: threading.Event | None = None):
        if cancelled is not None and cancelled.is_set():  # the client left while the request waited for a thread
            return torch.zeros(0, dtype=torch.long)
        with torch.inference_mode():
            out = self.model.generate(
                **prepared.inputs, generation_config=prepared.generation_config, tokenizer=self.tokenizer,
                streamer=streamer, logits_processor=LogitsProcessorList(prepared.logits_processor),
                stopping_criteria=StoppingCriteriaList(
                    ([_Cancelled(cancelled)] if cancelled else [])
                    + ([_StopStrings(self.tokenizer, prepared.stop, prepared.prompt_tokens)] if prepared.stop else [])),
            )
        return out[0, prepared.prompt_tokens:]

    def generate(self, prepared: Prepared, streamer=None, cancelled: threading.Event | None = None) -> Future:
        """Queue generation; the future's result is the new token ids `(T,)`. Setting `cancelled` stops it at the
        next token (or before it starts)."""
        return self._pool.submit(self._generate, prepared, streamer, cancelled)

    def finish(self, prepared: Prepared, new_ids) -> tuple[str, str, int]:
        """New token ids -> `(text, finish_reason, completion_tokens)`; OpenAI leaves the stop string out."""
        ids = [int(t) for t in new_ids]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        cut = _first_stop(text, prepared.stop)
        if cut is not None:
            return text[:cut], "stop", len(ids)
        ended = bool(ids) and ids[-1] in _eos_ids(self.model)
        reason = "length" if len(ids) >= prepared.generation_config.max_new_tokens and not ended else "stop"
        return text, reason, len(ids)


class _SeededSampler(LogitsProcessor):
    """Sampling with a request's own random generator, so a `seed` gives the same tokens whatever generates beside
    it (torch's global generator is shared by every generation thread).

    Takes the sampling settings out of `config` (temperature, top-k, top-p, min-p, applied as `generate` applies
    them) and turns it to greedy decoding: each step this processor draws the token and leaves only it possible.
    """

    def __init__(self, config, seed: int, device):
        from transformers.generation.logits_process import (
            MinPLogitsWarper,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        warpers = []
        if config.temperature is not None and config.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(config.temperature))
        if config.top_k:
            warpers.append(TopKLogitsWarper(config.top_k))
        if config.top_p is not None and config.top_p < 1.0:
            warpers.append(TopPLogitsWarper(config.top_p))
        if config.min_p is not None:
            warpers.append(MinPLogitsWarper(config.min_p))
        self.warpers = LogitsProcessorList(warpers)
        self.generator = torch.Generator(device).manual_seed(seed % 2**64)
        config.do_sample, config.temperature, config.top_k, config.top_p, config.min_p = False, None, None, None, None

    def __call__(self, input_ids, scores):
        probs = torch.softmax(self.warpers(input_ids, scores).float(), dim=-1)
        chosen = torch.multinomial(probs, 1, generator=self.generator)
        return torch.full_like(scores, -float("inf")).scatter_(1, chosen, 0.0)


class _StopStrings(StoppingCriteria):
    """Stops generation once the decoded answer holds one of `stop`. Each step decodes only the last
    `longest stop + 4` new tokens (every token decodes to at least one character, so a stop string the newest token
    completes lies inside them): a few microseconds a step for any stop list, where transformers' `stop_strings`
    first builds tables over the whole vocabulary (measured with SmolLM2's tokenizer: 0.6 s for one 8-character
    string, 7.5 s for eight of 64, 75 s for 300 of 8)."""

    def __init__(self, tokenizer, stop: list[str], prompt_tokens: int):
        self.tokenizer, self.stop, self.prompt_tokens = tokenizer, stop, prompt_tokens
        self.window = max(len(s) for s in stop) + 4

    def __call__(self, input_ids, scores, **kwargs):
        tail = input_ids[0, max(self.prompt_tokens, input_ids.shape[1] - self.window):]
        text = self.tokenizer.decode(tail, skip_special_tokens=True)
        return torch.full((input_ids.shape[0],), any(s and s in text for s in self.stop), dtype=torch.bool,
                          device=input_ids.device)


class _Cancelled(StoppingCriteria):
    """Stops generation once `event` is set (a streaming client went away)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class _EndOnceStreamer(TextIteratorStreamer):
    """A `TextIteratorStreamer` that may be ended twice: by `generate`, and by the server when `generate` failed
    (the stream then ends instead of waiting forever)."""

    ended = False

    def end(self):
        if not self.ended:
            self.ended = True
            super().end()


def _eos_ids(model) -> set[int]:
    eos = model.generation_config.eos_token_id
    return set(eos if isinstance(eos, list) else [] if eos is None else [eos])


def _first_stop(text: str, stop: list[str]) -> int | None:
    hits = [text.find(s) for s in stop if s and s in text]
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
        prepared = await asyncio.to_thread(engine.prepare, request)
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        cancelled = threading.Event()
        if request.stream:
            include_usage = request.stream_options is not None and request.stream_options.include_usage
            return _StreamThatCancels(_stream(prepared, request_id, created, include_usage, cancelled), cancelled,
                                      media_type="text/event-stream")
        future = engine.generate(prepared, cancelled=cancelled)
        try:
            new_ids = await _result_while_connected(future, http_request, cancelled)
        except RequestError:
            raise
        except Exception as error:  # noqa: BLE001 - a failed generation is the server's fault: 500 with the reason
            logger.exception("generation failed")
            raise RequestError(f"generation failed: {type(error).__name__}: {error}", 500, kind="server_error")
        finally:
            cancelled.set()  # a no-op once generation has ended; stops it when this handler is cancelled
        text, reason, completion_tokens = engine.finish(prepared, new_ids)
        completion = ChatCompletion(
            id=request_id, object="chat.completion", created=created, model=engine.name,
            choices=[Choice(index=0, finish_reason=reason,
                            message=ChatCompletionMessage(role="assistant", content=text))],
            usage=CompletionUsage(prompt_tokens=prepared.prompt_tokens, completion_tokens=completion_tokens,
                                  total_tokens=prepared.prompt_tokens + completion_tokens),
        )
        return completion.model_dump(exclude_none=True)

    async def _result_while_connected(future: Future, http_request: Request, cancelled: threading.Event,
                                      poll_s: float = 0.2):
        """The generation's result; a client that disconnects first sets `cancelled` (the generation stops at its
        next token) and gets a 499 nobody reads."""
        waiting = asyncio.wrap_future(future)
        while True:
            done, _ = await asyncio.wait({waiting}, timeout=poll_s)
            if done:
                return waiting.result()
            if await http_request.is_disconnected():
                cancelled.set()
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

    async def _stream(prepared: Prepared, request_id: str, created: int, include_usage: bool,
                      cancelled: threading.Event) -> AsyncIterator[str]:
        def chunk(delta: ChoiceDelta | None, reason: str | None = None, usage: CompletionUsage | None = None) -> str:
            choices = [] if delta is None else [ChunkChoice(index=0, delta=delta, finish_reason=reason)]
            body = ChatCompletionChunk(id=request_id, object="chat.completion.chunk", created=created,
                                       model=engine.name, choices=choices, usage=usage)
            return f"data: {body.model_dump_json(exclude_none=True)}\n\n"

        streamer = _EndOnceStreamer(engine.tokenizer, skip_prompt=True, skip_special_tokens=True)
        future = engine.generate(prepared, streamer, cancelled)
        future.add_done_callback(lambda _: streamer.end())
        try:
            yield chunk(ChoiceDelta(role="assistant", content=""))
            # Hold back as many characters as a stop string could still need, so no part of one is ever sent.
            hold = max((len(s) for s in prepared.stop), default=1) - 1
            text, sent = "", 0
            pieces = iter(streamer)
            while True:
                piece = await asyncio.to_thread(next, pieces, None)
                if piece is None:
                    break
                text += piece
                cut = _first_stop(text, prepared.stop)
                end = cut if cut is not None else max(sent, len(text) - hold)
                if end > sent:
                    yield chunk(ChoiceDelta(content=text[sent:end]))
                    sent = end
                if cut is not None:
                    break
            new_ids = await asyncio.wrap_future(future)
        except (asyncio.CancelledError, GeneratorExit):
            cancelled.set()
            raise
        except Exception as error:  # noqa: BLE001 - headers are sent: report in the stream, as OpenAI does
            logger.exception("generation failed")
            message = f"generation failed: {type(error).__name__}: {error}"
            yield f"data: {json.dumps({'error': {'message': message, 'type': 'server_error'}})}\n\n"
            return
        final_text, reason, completion_tokens = engine.finish(prepared, new_ids)
        if final_text[sent:]:
            yield chunk(ChoiceDelta(content=final_text[sent:]))
        yield chunk(ChoiceDelta(), reason)
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
        "help": "Generations that run at once, each on its own thread; more wait for a free one."})
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
                    args.max_new_tokens, args.allowed_local_media_path, limits, args.max_concurrent_generations)
    logger.info("serving %s (%s) on http://%s:%d/v1", engine.name,
                "video/image/text" if engine.multimodal else "text", args.host, args.port)
    uvicorn.run(create_app(engine, int(args.max_request_mb * 2**20)), host=args.host, port=args.port,
                log_level=args.log_level)


if __name__ == "__main__":
    main()
