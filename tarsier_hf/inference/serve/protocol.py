"""The chat-completions wire format of `tarsier-serve`: what a request may say (`ChatCompletionRequest`, with its
bounds in `ServeLimits`) and how a refusal is written (`RequestError` -> OpenAI's error body, a pydantic error
location -> the request field it names). `messages` are checked part by part in `media.to_conversation`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


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


def checked_decoding(request: ChatCompletionRequest, limits: ServeLimits, max_new_tokens: int) -> tuple[int, list[str]]:
    """`(max_tokens, stop)` of `request` (`max_new_tokens` when it gives none; its stop strings without empty
    ones, which stop nothing), after checking its decoding fields against `limits`: `RequestError` names the
    field and the flag of the bound it passes."""
    max_tokens = request.max_completion_tokens or request.max_tokens or max_new_tokens
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
    if request.top_logprobs is not None and not request.logprobs:
        raise RequestError("top_logprobs: needs \"logprobs\": true", param="top_logprobs")
    return max_tokens, [s for s in stop if s]  # an empty string stops nothing


def error_body(message: str, param: str | None = None, kind: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


# pydantic's names for the members of a union in an error location (`stop.str`, `stop.list[str][0]`)
_UNION_MEMBER = re.compile(r"^(str|int|float|bool|dict|list|none)$|\[")


def field_name(loc: tuple) -> str:
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
