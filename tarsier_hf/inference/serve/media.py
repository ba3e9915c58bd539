"""A request's messages -> the inputs of the served checkpoint's processor: each message and content part
checked (`to_conversation`; a `file://` URL or plain path only under `--allowed_local_media_path`), the frame
sampling of `mm_processor_kwargs` (`frame_sampling_for`), every image and video decoded by this installation's
reader under `ServeLimits` (`load_media`; `data:` URIs included), then encoded by the family's processor call
(`ENCODERS`). Anything that cannot be read raises `RequestError` naming its field."""

from __future__ import annotations

import os
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from frame_sampling_tarsier import FpsSampling, FrameSampling, as_frame_sampling, call_sampling
from media_limits_tarsier import MediaLimitError, MediaLimits, VideoReadError, media_limits
from media_loading_tarsier import DEFAULT_SEQUENCE_FPS, load_image, load_video
from tarsier_hf import families
from tarsier_hf.inference.serve.protocol import FrameOptions, RequestError, ServeLimits

MEDIA_PARTS = {"image_url": "image", "video_url": "video"}
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


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
    """The request's frame sampling: `default` (the processor's) with `mm_processor_kwargs` applied by the
    processors' own rule (`call_sampling`: `frame_sampling` replaces it, `fps` switches to `FpsSampling`,
    `num_frames` changes its count, both at once are refused). `RequestError` names the field at fault: the
    policy is read first, then the count is applied to it."""
    param = "mm_processor_kwargs"
    try:
        if options is None:
            return as_frame_sampling(default)
        if options.frame_sampling is not None:
            param = "mm_processor_kwargs.frame_sampling"
        sampling = call_sampling(default, options.frame_sampling)
        if (options.fps is None) != (options.num_frames is None):
            param = "mm_processor_kwargs.fps" if options.fps is not None else "mm_processor_kwargs.num_frames"
        else:
            param = "mm_processor_kwargs"
        return call_sampling(sampling, num_frames=options.num_frames, fps=options.fps)
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
