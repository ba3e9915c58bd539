"""Tarsier video processing: frame sampling, the PyAV video reader, media loaders and frame preprocessing.

Remote code beside `processing_tarsier.py`: `save_pretrained` copies it into every checkpoint (the processor
imports it relatively) and `AutoProcessor.from_pretrained(folder, trust_remote_code=True)` loads it from the
module cache. It depends only on PyAV, numpy, Pillow and transformers.

Where it departs from transformers: transformers' `BaseVideoProcessor` (the `video_processor` of its VLM
processors) needs torchvision, which cannot be installed beside the CPU torch this project pins (see
docs/design.md), and its PyAV backend decodes every frame up to the last wanted one. So there is no video-processor
class here: `TarsierProcessor` has no `video_processor` attribute; it samples with a `FrameSampling`, decodes with
`VideoReader` (exact and keyframe-aware) and runs the frames through its CLIP/SigLIP image processor.

- frame sampling (paper §3.2 and §5.1): the policies `sample_uniform`, `sample_random_segments`,
  `sample_instruction_tuning`, `sample_by_fps`, and the `FrameSampling` objects that carry a policy with its
  parameters (`UniformSampling`, `RandomSegmentsSampling`, `InstructionSampling`, `FpsSampling`; registry
  `FRAME_SAMPLING_POLICIES`, extended with `register_frame_sampling`);
- `VideoReader`: exact, keyframe-aware PyAV frame access by index (timestamps, rotation, clear errors);
- `load_video` / `load_image`: any supported source (files, frame folders, arrays, PIL images, file/data URLs)
  -> sampled `(n, H, W, 3)` uint8 frames;
- `resize_frames` / `preprocess_frames`: frames -> the `(n, 3, S, S)` float tensor of the model.
"""

from __future__ import annotations

import bisect
import errno
import os
import re
import stat
import warnings
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import av
import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
VIDEO_EXTENSIONS = {".mp4", ".mkv", ".webm", ".mov", ".avi", ".gif", ".m4v", ".mpg", ".mpeg", ".ts", ".flv"}

# Frame rate assumed for frame sequences (folders, file lists, arrays) that carry no timing of their own.
DEFAULT_SEQUENCE_FPS = 1.0


# ----------------------------------------------------------------------------------------------------------------
# Frame sampling. Every policy takes the presentation timestamps (seconds, increasing) of all T frames and
# returns frame indices into them, in temporal order. Working on timestamps keeps variable-frame-rate files
# right: "uniform" means uniform in time, not in frame count (the two agree for constant frame rate).
#
# Videos shorter than the requested count: the count-based policies (uniform, random segments, instruction
# tuning) always return exactly `num_frames` indices, so every sample of a policy has the same number of
# visual tokens; when T < num_frames frames repeat (each frame at least once, in temporal order). `sample_by_fps`
# never repeats a frame: it returns at most one index per frame.
# ----------------------------------------------------------------------------------------------------------------


def _as_timestamps(timestamps: Sequence[float] | np.ndarray | int) -> np.ndarray:
    """Accept timestamps in seconds, or a frame count `T` (meaning constant frame rate, one frame per second)."""
    if isinstance(timestamps, (int, np.integer)):
        timestamps = np.arange(int(timestamps), dtype=np.float64)
    ts = np.asarray(timestamps, dtype=np.float64)
    if ts.ndim != 1 or len(ts) == 0:
        raise ValueError(f"frame sampling needs at least one frame timestamp, got shape {ts.shape}")
    if len(ts) > 1 and np.any(np.diff(ts) <= 0):
        raise ValueError("frame timestamps must be strictly increasing")
    return ts


def _frame_duration(ts: np.ndarray) -> float:
    """Display duration of the last frame: the median frame interval (1 s for a single frame)."""
    return float(np.median(np.diff(ts))) if len(ts) > 1 else 1.0


def _nearest_frames(ts: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Index of the frame whose timestamp is nearest to each time (ties go to the even fractional index, like
    Python's `round`, so constant-frame-rate videos give exactly `round(i * (T - 1) / (n - 1))`)."""
    positions = np.interp(times, ts, np.arange(len(ts), dtype=np.float64))
    # Snap away float noise so exact halves stay halves before banker's rounding.
    return np.array([round(float(p)) for p in np.round(positions, 6)], dtype=np.int64)


def _displayed_frames(ts: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Index of the frame on screen at each time (the last frame whose timestamp is <= the time)."""
    return np.clip(np.searchsorted(ts, times, side="right") - 1, 0, len(ts) - 1).astype(np.int64)


def sample_uniform(timestamps: Sequence[float] | np.ndarray | int, num_frames: int) -> np.ndarray:
    """Inference sampling: `num_frames` frames evenly spread in time, first and last frame included.

    For constant frame rate this is the released Tarsier rule `round(i * (T - 1) / (num_frames - 1))`
    (bytedance/tarsier `dataset/utils.py`, `sample_frame_indices`), including its choice for one frame: the first.

    Args:
        timestamps: `(T,)` presentation times in seconds (or the frame count T for constant frame rate).
        num_frames: number of frames to return (>= 1); one frame means the first frame, as in the release.

    Returns:
        `(num_frames,)` int64 frame indices, non-decreasing.
    """
    ts = _as_timestamps(timestamps)
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if num_frames == 1:
        return np.zeros(1, dtype=np.int64)
    times = ts[0] + (ts[-1] - ts[0]) * np.arange(num_frames) / (num_frames - 1)
    return _nearest_frames(ts, times)


def sample_random_segments(
    timestamps: Sequence[float] | np.ndarray | int,
    num_frames: int | tuple[int, int] = (8, 32),
    rng: np.random.Generator | int | None = None,
) -> np.ndarray:
    """Pre-training sampling: split the video into `n` equal time segments and take a random frame from each.

    Args:
        timestamps: `(T,)` presentation times in seconds (or the frame count T).
        num_frames: `n`, or an inclusive range `(low, high)` from which `n` is drawn uniformly (paper: [8, 32]).
        rng: a numpy Generator or a seed; `None` draws fresh entropy.

    Returns:
        `(n,)` int64 frame indices, non-decreasing. A segment that holds no frame (videos shorter than `n`)
        takes the frame on screen at a random instant of the segment.
    """
    ts = _as_timestamps(timestamps)
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    if isinstance(num_frames, (tuple, list)):
        low, high = int(num_frames[0]), int(num_frames[1])
        if not 1 <= low <= high:
            raise ValueError(f"num_frames range must satisfy 1 <= low <= high, got {num_frames}")
        n = int(rng.integers(low, high + 1))
    else:
        n = int(num_frames)
    if n < 1:
        raise ValueError(f"num_frames must be >= 1, got {n}")
    start, end = ts[0], ts[-1] + _frame_duration(ts)
    edges = start + (end - start) * np.arange(n + 1) / n
    # Segment of every frame, snapped so that float noise never moves a frame sitting on a boundary.
    segment_of_frame = np.floor(np.round((ts - start) / (end - start) * n, 9)).astype(np.int64)
    first = np.searchsorted(segment_of_frame, np.arange(n), side="left")
    stop = np.searchsorted(segment_of_frame, np.arange(n), side="right")
    indices = np.empty(n, dtype=np.int64)
    for segment in range(n):
        if stop[segment] > first[segment]:
            indices[segment] = rng.integers(first[segment], stop[segment])
        else:
            instant = rng.uniform(edges[segment], edges[segment + 1])
            indices[segment] = _displayed_frames(ts, np.array([instant]))[0]
    return indices


def sample_instruction_tuning(
    timestamps: Sequence[float] | np.ndarray | int, complex_clip: bool = False, num_frames: int | None = None
) -> np.ndarray:
    """Instruction-tuning sampling: first and last frame always, the others evenly spaced between them.

    Paper §3.2 samples 16 frames from complex (movie) clips and 8 from the others. `num_frames` is the count for
    ordinary clips (default 8); complex clips get twice as many, the paper's ratio.

    Args:
        timestamps: `(T,)` presentation times in seconds (or the frame count T).
        complex_clip: whether the clip is complex (twice the frames).
        num_frames: frames for an ordinary clip (>= 1); None means the paper's 8.

    Returns:
        `(n,)` int64 frame indices, `n = num_frames` (ordinary) or `2 * num_frames` (complex).
    """
    n = 8 if num_frames is None else int(num_frames)
    return sample_uniform(timestamps, 2 * n if complex_clip else n)


def sample_by_fps(timestamps: Sequence[float] | np.ndarray | int, fps: float, max_frames: int = 64) -> np.ndarray:
    """Sample at a fixed rate: the frame on screen every `1 / fps` seconds from the first frame.

    Args:
        timestamps: `(T,)` presentation times in seconds (or the frame count T).
        fps: sampling rate in frames per second (> 0).
        max_frames: cap; when the rate would give more frames, `max_frames` uniform frames are returned instead.

    Returns:
        `(m,)` int64 distinct frame indices, `1 <= m <= max_frames` (a rate above the video's gives each frame once).
    """
    ts = _as_timestamps(timestamps)
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    end = ts[-1] + _frame_duration(ts)
    times = ts[0] + np.arange(0.0, end - ts[0], 1.0 / fps)
    indices = np.unique(_displayed_frames(ts, times))
    if len(indices) > max_frames:
        return sample_uniform(ts, max_frames)
    return indices



# ----------------------------------------------------------------------------------------------------------------
# Frame-sampling objects: a policy and its parameters in one frozen dataclass, passed whole from the command line
# or the processor config down to `load_video`, and saved in `processor_config.json` as
# `{"policy": "uniform", "num_frames": 8}`. A new policy is one registered subclass in this section:
#
#     @register_frame_sampling
#     @dataclass(frozen=True)
#     class EveryKth(FrameSampling):
#         policy: ClassVar[str] = "every_kth"
#         k: int = 2
#
#         def indices(self, timestamps, complex_clip=False, rng=None):
#             return np.arange(0, len(_as_timestamps(timestamps)), self.k)
#
#         def max_frames_per_video(self, complex_clip=False):
#             return None  # unbounded: depends on the video
# ----------------------------------------------------------------------------------------------------------------

FRAME_SAMPLING_POLICIES: dict[str, type["FrameSampling"]] = {}


def register_frame_sampling(cls: type["FrameSampling"]) -> type["FrameSampling"]:
    """Class decorator: make a `FrameSampling` subclass known by its `policy` name (configs, `--frame_sampling`)."""
    named = isinstance(cls, type) and issubclass(cls, FrameSampling) and isinstance(cls.__dict__.get("policy"), str)
    if not named:
        raise TypeError(f"{cls!r}: a frame-sampling policy is a FrameSampling subclass with a `policy` name")
    FRAME_SAMPLING_POLICIES[cls.policy] = cls
    return cls


@dataclass(frozen=True)
class FrameSampling:
    """How frames are chosen from a video: the policy (`policy`, the registry key) and its parameters (the fields).

    Every policy takes the presentation timestamps of all T frames of a video and returns frame indices into them.
    `complex_clip` marks a clip as complex (the paper's movie clips; only `instruction` uses it) and `rng` is the
    randomness of randomised policies (a numpy Generator or a seed; `None` draws fresh entropy).
    """

    policy: ClassVar[str] = ""

    def indices(
        self, timestamps: Sequence[float] | np.ndarray | int, complex_clip: bool = False,
        rng: np.random.Generator | int | None = None,
    ) -> np.ndarray:
        """`(n,)` int64 frame indices into `timestamps` (`(T,)` seconds, or the frame count T at 1 fps)."""
        raise NotImplementedError

    def max_frames_per_video(self, complex_clip: bool = False) -> int | None:
        """The most frames `indices` returns for one video (`None`: no bound known in advance)."""
        raise NotImplementedError

    def with_num_frames(self, num_frames: int) -> "FrameSampling":
        """The same policy with another frame count (what `processor(..., num_frames=n)` asks for)."""
        if "num_frames" not in {f.name for f in fields(self)}:
            raise ValueError(f"frame sampling {self.policy!r} has no num_frames (its parameters: {self.to_dict()})")
        return replace(self, num_frames=int(num_frames))

    def to_dict(self) -> dict:
        """JSON-ready `{"policy": name, **parameters}` (ranges as lists)."""
        data = {"policy": self.policy}
        for f in fields(self):
            value = getattr(self, f.name)
            data[f.name] = list(value) if isinstance(value, tuple) else value
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "FrameSampling":
        """Inverse of `to_dict`; the message names the unknown policy or parameter."""
        data = dict(data)
        name = data.pop("policy", None)
        policy = FRAME_SAMPLING_POLICIES.get(name)
        if policy is None:
            raise ValueError(f"unknown frame sampling policy {name!r}; known: {sorted(FRAME_SAMPLING_POLICIES)}")
        known = {f.name for f in fields(policy)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"frame sampling {name!r} takes {sorted(known)}, not {unknown}")
        missing = [f.name for f in fields(policy) if f.default is MISSING and f.name not in data]
        if missing:
            raise ValueError(f"frame sampling {name!r} needs {', '.join(missing)}")
        return policy(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def _check_count(sampling: FrameSampling, count) -> None:
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise ValueError(f"frame sampling {sampling.policy!r}: frame counts must be integers >= 1, got {count!r}")


def as_frame_sampling(value: "FrameSampling | dict | str") -> FrameSampling:
    """A `FrameSampling` from itself, its `to_dict()` form, or a policy name (with that policy's defaults)."""
    if isinstance(value, FrameSampling):
        return value
    if hasattr(value, "policy") and callable(getattr(value, "to_dict", None)):
        # the same policy from another copy of this module (a checkpoint's remote code next to this repository's)
        return FrameSampling.from_dict(value.to_dict())
    if isinstance(value, str):
        return FrameSampling.from_dict({"policy": value})
    if isinstance(value, dict):
        return FrameSampling.from_dict(value)
    raise TypeError(f"frame sampling must be a FrameSampling, a dict or a policy name, got {type(value).__name__}")


@register_frame_sampling
@dataclass(frozen=True)
class UniformSampling(FrameSampling):
    """Inference sampling (paper §5.1): `num_frames` evenly spread in time, first and last frame included
    (`sample_uniform`)."""

    policy: ClassVar[str] = "uniform"
    num_frames: int = 8

    def __post_init__(self):
        _check_count(self, self.num_frames)

    def indices(self, timestamps, complex_clip=False, rng=None):
        return sample_uniform(timestamps, self.num_frames)

    def max_frames_per_video(self, complex_clip=False):
        return self.num_frames


@register_frame_sampling
@dataclass(frozen=True)
class RandomSegmentsSampling(FrameSampling):
    """Pre-training sampling (paper §3.2): one random frame from each of n equal segments, n drawn from an
    inclusive `(low, high)` range per video (paper: [8, 32]) or fixed (`sample_random_segments`)."""

    policy: ClassVar[str] = "random_segments"
    num_frames: int | tuple[int, int] = (8, 32)

    def __post_init__(self):
        if isinstance(self.num_frames, list):
            object.__setattr__(self, "num_frames", tuple(self.num_frames))
        counts = self.num_frames if isinstance(self.num_frames, tuple) else (self.num_frames,)
        if len(counts) not in (1, 2) or len(counts) == 2 and counts[0] > counts[1]:
            raise ValueError(f"random_segments num_frames must be n or an inclusive (low, high) range, "
                             f"got {self.num_frames}")
        for count in counts:
            _check_count(self, count)

    def indices(self, timestamps, complex_clip=False, rng=None):
        return sample_random_segments(timestamps, self.num_frames, rng=rng)

    def max_frames_per_video(self, complex_clip=False):
        return max(self.num_frames) if isinstance(self.num_frames, tuple) else int(self.num_frames)


@register_frame_sampling
@dataclass(frozen=True)
class InstructionSampling(FrameSampling):
    """Instruction-tuning sampling (paper §3.2): `num_frames` (8) for ordinary clips and twice that (16) for complex
    ones, first and last frame always (`sample_instruction_tuning`)."""

    policy: ClassVar[str] = "instruction"
    num_frames: int = 8

    def __post_init__(self):
        _check_count(self, self.num_frames)

    def indices(self, timestamps, complex_clip=False, rng=None):
        return sample_instruction_tuning(timestamps, complex_clip=complex_clip, num_frames=self.num_frames)

    def max_frames_per_video(self, complex_clip=False):
        return 2 * self.num_frames if complex_clip else self.num_frames


@register_frame_sampling
@dataclass(frozen=True)
class FpsSampling(FrameSampling):
    """A fixed rate: the frame on screen every `1 / fps` seconds, at most `max_frames` (`sample_by_fps`)."""

    policy: ClassVar[str] = "fps"
    fps: float
    max_frames: int = 64

    def __post_init__(self):
        if not self.fps > 0:
            raise ValueError(f"frame sampling 'fps' needs fps > 0, got {self.fps!r}")
        _check_count(self, self.max_frames)

    def indices(self, timestamps, complex_clip=False, rng=None):
        return sample_by_fps(timestamps, self.fps, max_frames=self.max_frames)

    def max_frames_per_video(self, complex_clip=False):
        return self.max_frames


def sample_tarsier2(timestamps: Sequence[float] | np.ndarray | int, num_frames: int = 16) -> np.ndarray:
    """Tarsier2's inference sampling (bytedance/tarsier branch `tarsier2`, `_sample_frame_indices_v1`, the `v1`
    sampler of `configs/tarser2_default_config.yaml`): by frame index, not by time.

    `[0]` when one frame is asked for; every frame, once, when the clip has no more than `num_frames`; otherwise
    `round(i * (T - 1) / (num_frames - 1))` with Python's `round` (halves to even). It differs from `sample_uniform`
    on clips of fewer than `num_frames` frames (no repeats here) and on variable-frame-rate clips (frame count here,
    time there).

    Returns:
        `(n,)` int64 increasing frame indices, `n = min(T, num_frames)` (1 when `num_frames == 1`).
    """
    total = len(_as_timestamps(timestamps))
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if num_frames == 1:
        return np.zeros(1, dtype=np.int64)
    if total <= num_frames:
        return np.arange(total, dtype=np.int64)
    return np.array([round(i * (total - 1) / (num_frames - 1)) for i in range(num_frames)], dtype=np.int64)


@register_frame_sampling
@dataclass(frozen=True)
class Tarsier2Sampling(FrameSampling):
    """Tarsier2's inference sampling (`sample_tarsier2`): `num_frames` (16) by frame index, first and last frame
    included; a clip with no more than `num_frames` frames gives each of its frames once."""

    policy: ClassVar[str] = "tarsier2"
    num_frames: int = 16

    def __post_init__(self):
        _check_count(self, self.num_frames)

    def indices(self, timestamps, complex_clip=False, rng=None):
        return sample_tarsier2(timestamps, self.num_frames)

    def max_frames_per_video(self, complex_clip=False):
        return self.num_frames


def call_sampling(default: "FrameSampling | dict | str", frame_sampling: "FrameSampling | dict | str | None" = None,
                  num_frames: int | None = None, fps: float | None = None) -> "FrameSampling":
    """The sampling of one processor call: `frame_sampling` (else the processor's `default`), with transformers'
    video options applied: `fps` switches to `FpsSampling` at that rate (keeping an fps policy's cap, else 64
    frames), `num_frames` keeps the policy with another count. Both at once are refused."""
    sampling = as_frame_sampling(default if frame_sampling is None else frame_sampling)
    if fps is not None and num_frames is not None:
        raise ValueError("`num_frames` and `fps` are mutually exclusive")
    if fps is not None:
        return FpsSampling(float(fps), sampling.max_frames if isinstance(sampling, FpsSampling) else 64)
    if num_frames is not None:
        return sampling.with_num_frames(int(num_frames))
    return sampling


def sample_frame_indices(
    timestamps: Sequence[float] | np.ndarray | int,
    sampling: FrameSampling | dict | str,
    complex_clip: bool = False,
    rng: np.random.Generator | int | None = None,
) -> np.ndarray:
    """Frame indices of a video by a frame-sampling object (or its dict form / policy name); int64 `(n,)`."""
    return as_frame_sampling(sampling).indices(timestamps, complex_clip=complex_clip, rng=rng)


# ----------------------------------------------------------------------------------------------------------------
# Video reading
# ----------------------------------------------------------------------------------------------------------------


class VideoReadError(ValueError):
    """A video source cannot be read; the message names the source and the cause."""


def _apply_rotation(array: np.ndarray, rotation: float | int | None) -> np.ndarray:
    """Turn a decoded `(H, W, 3)` frame as a player would show it (`rotation`: counter-clockwise degrees)."""
    if not rotation:
        return array
    turns = int(round(rotation / 90.0)) % 4
    return np.ascontiguousarray(np.rot90(array, k=turns)) if turns else array


# Demuxer flags (libavformat/avformat.h): the format stores no timestamps (raw elementary streams), or its seek
# targets are presentation timestamps (mp4/mov). Other demuxers (mpegts, mpeg-ps, avi, flv) seek by decode time.
_AVFMT_NOTIMESTAMPS = 0x80
_AVFMT_SEEK_TO_PTS = 0x4000000
# Containers that store no presentation timestamps: the decoder's frame.pts are guesses (with B-frames they come
# out of order), so frames are identified by their position in decode output.
_FORMATS_WITHOUT_PTS = ("avi",)
# What each accepted extension should hold (substrings of PyAV's `container.format.name`).
_EXPECTED_FORMATS = {
    ".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm", ".avi": "avi",
    ".gif": "gif", ".ts": "mpegts", ".mpg": "mpeg", ".mpeg": "mpeg", ".flv": "flv",
}
# The only demuxers a video is opened with: containers and raw elementary streams that read nothing but the one file
# they are given. FFmpeg probes a file by its bytes and name, and some demuxers it may pick open other files or URLs
# named inside it: playlists and manifests (hls, dash), scripts (concat / ffconcat), file-name patterns (image2),
# session descriptions (sdp, rtp, rtsp). `format_whitelist` makes FFmpeg refuse every demuxer not listed here after
# probing and before the demuxer reads a byte, so none of them runs, whatever a file claims to be;
# `protocol_whitelist` keeps every open on the local file protocol; mov's external data references stay off
# (`enable_drefs`, FFmpeg's default, set explicitly).
_ALLOWED_DEMUXERS = ("mov", "matroska", "avi", "mpegts", "mpeg", "flv", "gif", "ogg",
                     "h264", "hevc", "h263", "m4v", "mpegvideo")
_OPEN_OPTIONS = {"format_whitelist": ",".join(_ALLOWED_DEMUXERS), "protocol_whitelist": "file", "enable_drefs": "0"}
# First bytes of formats that name other files, for the message when one is refused.
_REFERENCING_FORMATS = {b"#EXTM3U": "an HLS playlist", b"ffconcat version": "an ffconcat script",
                        b"<?xml": "an XML document (a DASH manifest?)", b"v=0": "an SDP session description"}


@dataclass
class MediaLimits:
    """Bounds on what reading media may cost, shared by all the media read under one `media_limits` block (one
    server request); `None` leaves a bound off.

    Attributes:
        max_frame_pixels: width x height of any one decoded frame or image. Checked from the stream or image
            header before decoding, and by FFmpeg's decoder for every frame (its `max_pixels`), so a stream that
            grows mid-way is refused too.
        max_total_pixels: width x height summed over every frame decoded (frames decoded only to reach a sampled
            one included) and every image, across the block.
        decoded_pixels: the running sum.
    """

    max_frame_pixels: int | None = None
    max_total_pixels: int | None = None
    decoded_pixels: int = field(default=0, init=False)

    def check_frame(self, width: int, height: int, source: str) -> None:
        """Refuse a frame or image larger than `max_frame_pixels` (before it is decoded)."""
        if self.max_frame_pixels is not None and width * height > self.max_frame_pixels:
            raise MediaLimitError(f"{source}: frames of {width}x{height} = {width * height} pixels exceed the limit "
                                  f"of {self.max_frame_pixels} pixels per frame", "max_frame_pixels")

    def charge(self, width: int, height: int, source: str) -> None:
        """Count one decoded frame; refuse once the block has decoded more than `max_total_pixels`."""
        self.check_frame(width, height, source)
        self.decoded_pixels += width * height
        if self.max_total_pixels is not None and self.decoded_pixels > self.max_total_pixels:
            raise MediaLimitError(f"{source}: decoding these media needs more than the limit of "
                                  f"{self.max_total_pixels} decoded pixels", "max_total_pixels")


class MediaLimitError(VideoReadError):
    """Reading a source would pass a `MediaLimits` bound; `bound` names it (`"max_frame_pixels"` or
    `"max_total_pixels"`)."""

    def __init__(self, message: str, bound: str):
        super().__init__(message)
        self.bound = bound


_MEDIA_LIMITS: ContextVar[MediaLimits | None] = ContextVar("tarsier_media_limits", default=None)


def _limits() -> MediaLimits:
    """The `MediaLimits` of the enclosing `media_limits` block (unbounded outside one)."""
    return _MEDIA_LIMITS.get() or MediaLimits()


@contextmanager
def media_limits(limits: MediaLimits):
    """Read media under `limits` in this thread / task (a server wraps one request's preprocessing in it). Outside
    any block nothing is bounded."""
    token = _MEDIA_LIMITS.set(limits)
    try:
        yield limits
    finally:
        _MEDIA_LIMITS.reset(token)


def _open_video(path: str) -> av.container.InputContainer:
    """Open one local video file with an allow-listed demuxer (`_ALLOWED_DEMUXERS`) and the current frame-size
    limit on its first video stream's decoder; raises `VideoReadError` naming the file and the cause."""
    try:
        # "file:" keeps a path such as "concat:a|b" or "subfile,,...:x" a file name, never a protocol
        container = av.open("file:" + path, metadata_errors="ignore", container_options=_OPEN_OPTIONS)
    except av.error.FFmpegError as error:
        if error.errno == errno.EINVAL:
            raise VideoReadError(f"{path}: {_refused_format(path)}") from None
        if error.errno == errno.EACCES:
            raise VideoReadError(f"{path}: permission denied: this process may not read the file") from None
        raise VideoReadError(
            f"{path}: not a readable video file; the container cannot be parsed, so it is truncated, "
            f"corrupt or not a video ({_describe(error)})"
        ) from None
    limit = _limits().max_frame_pixels
    if limit is not None and container.streams.video:
        container.streams.video[0].codec_context.options = {"max_pixels": str(limit)}
    return container


def _refused_format(path: str) -> str:
    """Why FFmpeg refused to open a file under `_OPEN_OPTIONS`: the format it probed is not allow-listed."""
    with open(path, "rb") as handle:
        head = handle.read(64)
    for magic, kind in _REFERENCING_FORMATS.items():
        if head.lstrip().startswith(magic):
            return f"is {kind}, which names other files; only self-contained video files are read"
    try:
        with Image.open(path) as image:
            return (f"is a {image.format} image ({image.format_description}), not a video; name it with its image "
                    f"extension ({', '.join(sorted(IMAGE_EXTENSIONS))}) to use it as a one-frame input")
    except (OSError, SyntaxError, Image.DecompressionBombError):
        pass
    return ("not a readable video file: FFmpeg takes it for a format outside the accepted containers and streams "
            f"({', '.join(_ALLOWED_DEMUXERS)})")


class VideoReader:
    """Exact random access to the frames of one video file with PyAV.

    Opening lists every frame's presentation timestamp and the keyframes without decoding anything: from the
    mp4/mov sample table when the stream has a constant frame rate and the file holds every sample the table
    lists (no file data read, so opening costs the same for a 10 s and a 10 min clip), otherwise by demuxing the
    video stream once. `get_frames` then decodes only what it needs: it seeks to a keyframe only when the next
    wanted frame lies in a later GOP than the decoder's position (by the keyframe's decode timestamp on demuxers
    that seek by decode time: mpegts, mpeg-ps, flv), decodes forward (skipping unreferenced frames it does not
    return), and converts to RGB only the frames it returns.

    Frames are identical to a full sequential decode, where frame `i` is the `i`-th frame the decoder outputs
    (checked in tests/test_video_reader.py on every container/codec pair PyAV writes). When a seek cannot be
    trusted the reader decodes sequentially instead, which is exact, just slower: on containers without
    presentation timestamps (avi, raw elementary streams), and, from then on, whenever a seek lands somewhere the
    index does not predict. A decoded timestamp that contradicts the sample-table index makes the reader rebuild
    the index by demuxing first.

    Attributes:
        path: the file.
        num_frames: T, the number of frames.
        timestamps: `(T,)` float64 presentation times in seconds, relative to the first frame.
        fps: average frame rate (T / duration).
        rotation: display rotation (counter-clockwise degrees) applied to returned frames.
        index_source: `"sample_table"` or `"demux"`, how the frame list was built.
        sequential: True when frames are read by decoding from the start (no seeking).
    """

    def __init__(self, path: str | os.PathLike, apply_rotation: bool = True, fast_index: bool = True):
        self.path = str(path)
        self.apply_rotation = apply_rotation
        _check_file(self.path)
        self._container = _open_video(self.path)
        try:
            self._open_stream(fast_index)
        except BaseException:
            self._container.close()
            raise

    def _open_stream(self, fast_index: bool) -> None:
        container = self._container
        self._check_format()
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["no"]
            raise VideoReadError(f"{self.path}: has no video stream (found {', '.join(kinds)} streams)")
        stream = container.streams.video[0]
        if stream.codec_context is None or stream.codec_context.codec is None:
            raise VideoReadError(f"{self.path}: unsupported video codec (no decoder for stream 0)")
        _limits().check_frame(stream.codec_context.width, stream.codec_context.height, self.path)
        self._stream = stream
        self.time_base = float(stream.time_base) if stream.time_base else 1.0
        flags = int(container.format.flags)
        self._raw = bool(flags & _AVFMT_NOTIMESTAMPS)
        self._seek_by_dts = not flags & _AVFMT_SEEK_TO_PTS
        self._seekable = container.format.name not in ("gif", "image2", "apng") and not self._raw
        self.sequential = self._raw or container.format.name in _FORMATS_WITHOUT_PTS or not self._seekable
        self.rotation = 0
        if not (fast_index and self._index_from_sample_table()):
            self._index_by_demuxing()

    def _check_format(self) -> None:
        """Check the demuxer; warn on raw streams without a container (they read, without
        timing). Images renamed as videos never get here: their demuxers are not allow-listed (`_open_video`)."""
        fmt = self._container.format
        suffix = Path(self.path).suffix.lower()
        if not set(fmt.name.split(",")) & set(_ALLOWED_DEMUXERS):  # FFmpeg enforces this already; never decode past it
            raise VideoReadError(f"{self.path}: opened with demuxer {fmt.name}, which is not allow-listed")
        expected = _EXPECTED_FORMATS.get(suffix)
        if int(fmt.flags) & _AVFMT_NOTIMESTAMPS:
            as_named = f", not a {suffix} file" if expected and expected not in fmt.name else ""
            warnings.warn(
                f"{self.path}: is a {fmt.long_name or fmt.name} ({fmt.name}){as_named}: it stores no timestamps, so "
                "frames are read in decode order at the stream's nominal frame rate",
                stacklevel=4,
            )

    def _set_index(self, pts: np.ndarray, key_pts: np.ndarray, source: str, key_dts: np.ndarray | None = None) -> None:
        self._pts = pts
        self._key_pts = key_pts
        # Seek target of every keyframe: its decode timestamp on demuxers that seek by decode time.
        self._key_seek = key_dts if key_dts is not None and self._seek_by_dts else key_pts
        # A stream that starts without a keyframe (cut files) still decodes from its first packet.
        if self._key_pts[0] > self._pts[0]:
            self._key_pts = np.concatenate([[self._pts[0]], self._key_pts])
            self._key_seek = np.concatenate([[self._pts[0]], self._key_seek])
        self.timestamps = (self._pts - self._pts[0]).astype(np.float64) * self.time_base
        self.num_frames = len(self._pts)
        duration = self.timestamps[-1] + _frame_duration(self.timestamps) if self.num_frames > 1 else 0.0
        self.fps = self.num_frames / duration if duration > 0 else float(self._stream.average_rate or 0) or 0.0
        self.index_source = source

    def _index_by_demuxing(self) -> None:
        """Frame list from the packets of the video stream (reads the file once, decodes nothing)."""
        self._reopen()
        pts_list, key_pts, key_dts, count = [], [], [], 0
        try:
            for packet in self._container.demux(self._stream):
                # Discard-flagged packets (edit lists cutting leading frames) decode to frames nobody sees; a
                # corrupt-flagged one is the partial last packet of a truncated file, which is not decoded.
                if packet.size == 0 or packet.is_discard or packet.is_corrupt:
                    continue
                count += 1
                pts = packet.pts if packet.pts is not None else packet.dts
                if pts is None:
                    continue
                pts_list.append(pts)
                if packet.is_keyframe:
                    key_pts.append(pts)
                    key_dts.append(packet.dts if packet.dts is not None else pts)
        except av.error.FFmpegError as error:
            raise VideoReadError(f"{self.path}: corrupt or truncated video stream ({_describe(error)})") from None
        if not count:
            raise VideoReadError(f"{self.path}: the video stream holds no frames (empty or truncated file)")
        if self._raw or len(pts_list) != count:
            # Raw elementary streams carry no (or only some) timestamps: frames at the nominal rate, in decode
            # order, read sequentially.
            rate = self._stream.average_rate or self._stream.guessed_rate or 25
            self.time_base = 1.0 / float(rate)
            self.sequential = True
            pts = np.arange(count, dtype=np.int64)
            self._set_index(pts, pts[:1], "demux")
            return
        pts = np.unique(np.asarray(pts_list, dtype=np.int64))
        if not key_pts:
            self._set_index(pts, pts[:1], "demux")
            return
        order = np.argsort(key_pts, kind="stable")
        self._set_index(
            pts, np.asarray(key_pts, dtype=np.int64)[order], "demux", np.asarray(key_dts, dtype=np.int64)[order]
        )

    def _index_from_sample_table(self) -> bool:
        """Frame list from the mp4/mov sample table, for constant-frame-rate streams; False when not applicable.

        The table gives decode timestamps and keyframe flags. With evenly spaced decode timestamps the
        presentation timestamps are the same grid shifted by the reorder delay, which the first packet gives
        (its pts - dts). Anything irregular falls back to demuxing, and so does a table that lists samples past
        the end of the file (a truncated download: the frames that are there still read, with a warning).
        """
        if "mp4" not in self._container.format.name:
            return False
        entries = self._stream.index_entries
        count = len(entries)
        if count < 2:
            return False
        end = max(e.pos + e.size for e in entries)
        if end > os.path.getsize(self.path):
            warnings.warn(
                f"{self.path}: the file is truncated: its sample table lists {count} frames ending at byte {end}, "
                f"but the file has {os.path.getsize(self.path)} bytes; reading the frames that are there",
                stacklevel=4,
            )
            return False
        dts = np.fromiter((e.timestamp for e in entries), dtype=np.int64, count=count)
        keyframe = np.fromiter((e.is_keyframe for e in entries), dtype=bool, count=count)
        discard = np.fromiter((e.is_discard for e in entries), dtype=bool, count=count)
        if discard.any():
            return False
        steps = np.diff(dts)
        if steps[0] <= 0 or np.any(steps != steps[0]):
            return False
        try:
            first = [p for p, _ in zip(self._container.demux(self._stream), range(32)) if p.pts is not None]
        except av.error.FFmpegError:
            return False
        if not first or first[0].dts != dts[0] or not first[0].is_keyframe:
            return False
        delay = int(first[0].pts) - int(dts[0])
        if min(int(p.pts) for p in first) != dts[0] + delay:
            return False
        self._set_index(dts + delay, dts[keyframe] + delay, "sample_table")
        return True

    # -- public API ---------------------------------------------------------------------------------------------

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return self.num_frames

    def get_frames(
        self, indices: Sequence[int] | np.ndarray, transform: Callable[[np.ndarray], np.ndarray] | None = None
    ) -> np.ndarray:
        """Decode the frames at `indices` (any order, repeats allowed).

        Args:
            indices: frame indices in `[0, num_frames)`.
            transform: applied once to every distinct decoded `(H, W, 3)` frame (after rotation) before repeated
                indices are copied, e.g. a resize: memory then holds one full-size frame at a time.

        Returns:
            `(len(indices), H, W, 3)` uint8 RGB frames (rotated for display when the file says so), or the
            stacked outputs of `transform`.
        """
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(indices) == 0:
            raise ValueError(f"{self.path}: no frame indices requested")
        if indices.min() < 0 or indices.max() >= self.num_frames:
            raise IndexError(f"{self.path}: frame index out of range [0, {self.num_frames}): {indices.tolist()}")
        wanted = np.unique(indices)
        self._transform = transform
        decoded = None
        if not self.sequential:
            try:
                decoded = self._decode_pts([int(p) for p in self._pts[wanted]])
            except VideoReadError:
                if self.index_source == "sample_table":
                    decoded = self._retry_with_demuxed_index(wanted)
            if decoded is None:
                # The seek did not land where the index says (demuxer quirks): a sequential decode is exact.
                self.sequential = True
        if decoded is None:
            decoded = self._decode_in_order(wanted.tolist())
        by_index = dict(zip(wanted.tolist(), decoded))
        return np.stack([by_index[i] for i in indices.tolist()])

    def _retry_with_demuxed_index(self, wanted: np.ndarray) -> list[np.ndarray] | None:
        """The sample-table index guessed a timestamp the decoder does not produce: rebuild it from the packets and
        retry; positions stay valid when the frame count agrees."""
        count = self.num_frames
        self._index_by_demuxing()
        if self.num_frames != count:
            raise VideoReadError(
                f"{self.path}: the sample table lists {count} frames but the stream holds {self.num_frames}; "
                "open the reader again and resample"
            ) from None
        if self.sequential:
            return None
        try:
            return self._decode_pts([int(p) for p in self._pts[wanted]])
        except VideoReadError:
            return None

    # -- decoding -----------------------------------------------------------------------------------------------

    def _keyframe_before(self, pts: int, skip: int = 0) -> int | None:
        position = bisect.bisect_right(self._key_pts, pts) - 1 - skip
        return int(self._key_pts[position]) if position >= 0 else None

    def _seek(self, key_pts: int) -> None:
        target = int(self._key_seek[int(np.searchsorted(self._key_pts, key_pts))])
        try:
            self._container.seek(target, stream=self._stream, backward=True, any_frame=False)
        except av.error.FFmpegError as error:
            raise VideoReadError(f"{self.path}: seek to pts {key_pts} failed ({_describe(error)})") from None

    def _rewind(self) -> None:
        """Back to the first packet: reopen containers that cannot seek (gif), seek in the others."""
        if self._seekable:
            self._seek(int(self._key_pts[0]))
        else:
            self._reopen()

    def _reopen(self) -> None:
        self._container.close()
        self._container = _open_video(self.path)
        self._stream = self._container.streams.video[0]

    def _frames_from(self, key_pts: int, wanted: set[int]):
        """Decoded frames from keyframe `key_pts` onwards (from the first frame when the file cannot seek).

        Packets of frames that are not wanted are decoded with `skip_frame="NONREF"`: frames no other frame
        references (most B-frames) are then not decoded at all, which roughly halves the work on B-frame streams
        without changing any decoded pixel.
        """
        if self._seekable and key_pts != int(self._key_pts[0]):
            self._seek(key_pts)
        else:
            self._rewind()
        codec_context = self._stream.codec_context
        try:
            for packet in self._container.demux(self._stream):
                if packet.is_corrupt:
                    continue
                skip = "DEFAULT" if packet.pts is None or packet.pts in wanted else "NONREF"
                if codec_context.skip_frame != skip:
                    codec_context.skip_frame = skip
                yield from self._decode_packet(packet)
        except av.error.FFmpegError as error:
            raise VideoReadError(f"{self.path}: corrupt or truncated video data ({_describe(error)})") from None

    def _decode_packet(self, packet: av.Packet):
        """The frames of one packet, each counted against the current `MediaLimits`. The decoder itself refuses a
        frame over `max_frame_pixels` (a stream whose size grows mid-way); that refusal is reported as the limit."""
        limits = _limits()
        try:
            frames = packet.decode()
        except av.error.FFmpegError:
            context = self._stream.codec_context
            limits.check_frame(context.width, context.height, self.path)
            raise
        for frame in frames:
            limits.charge(frame.width, frame.height, self.path)
            yield frame

    def _to_rgb(self, frame: av.VideoFrame) -> np.ndarray:
        # one swscale thread: with FFmpeg's automatic thread pool, a reader in a forked DataLoader worker could wait
        # forever on pool threads that only exist in the parent (seen as an idle worker in `to_ndarray`)
        array = frame.to_ndarray(format="rgb24", threads=1)
        if self.apply_rotation:
            self.rotation = frame.rotation or 0
            array = _apply_rotation(array, self.rotation)
        return self._transform(array) if self._transform is not None else array

    def _decode_in_order(self, wanted: list[int]) -> list[np.ndarray]:
        """Decode from the first frame and keep the frames at the given (sorted, unique) output positions."""
        self._reopen()
        out: list[np.ndarray] = []
        position = 0
        try:
            for packet in self._container.demux(self._stream):
                if packet.is_corrupt:
                    continue
                for frame in self._decode_packet(packet):
                    if position == wanted[len(out)]:
                        out.append(self._to_rgb(frame))
                        if len(out) == len(wanted):
                            return out
                    position += 1
        except av.error.FFmpegError as error:
            raise VideoReadError(f"{self.path}: corrupt or truncated video data ({_describe(error)})") from None
        raise VideoReadError(
            f"{self.path}: the stream ended after {position} decoded frames, before frame {wanted[len(out)]} of "
            f"{self.num_frames}; the file is truncated or corrupt"
        )

    def _decode_pts(self, wanted: list[int]) -> list[np.ndarray]:
        """Decode the frames with the given (sorted, unique) pts, seeking only across GOPs."""
        out: list[np.ndarray] = []
        wanted_set = set(wanted)
        i = 0
        backoff = 0
        while i < len(wanted):
            key = self._keyframe_before(wanted[i], skip=backoff)
            if key is None or not self._seekable:
                key = int(self._key_pts[0])
            frames = self._frames_from(key, wanted_set)
            progressed = False
            overshot = False
            last_pts = None
            for frame in frames:
                pts = frame.pts if frame.pts is not None else frame.dts
                if pts is None:
                    raise VideoReadError(f"{self.path}: decoded a frame without timestamp")
                if last_pts is None and pts > wanted[i]:
                    # Seeking landed after the wanted frame (e.g. open-GOP leading frames were dropped).
                    overshot = True
                    break
                last_pts = pts
                if pts < wanted[i]:
                    continue
                if pts > wanted[i]:
                    raise VideoReadError(
                        f"{self.path}: frame at pts {wanted[i]} could not be decoded (the stream is corrupt or "
                        f"truncated; the decoder went from before it to pts {pts})"
                    )
                out.append(self._to_rgb(frame))
                i += 1
                progressed = True
                if i == len(wanted):
                    break
                # Seek forward only when the next wanted frame is in a later GOP than the one being decoded.
                next_key = self._keyframe_before(wanted[i])
                if self._seekable and next_key is not None and next_key > pts:
                    break
            else:
                if i < len(wanted):
                    raise VideoReadError(
                        f"{self.path}: the stream ended before the frame at pts {wanted[i]} "
                        f"(frame {int(np.searchsorted(self._pts, wanted[i]))} of {self.num_frames}); "
                        "the file is truncated or corrupt"
                    )
            frames.close()
            if overshot and not progressed:
                backoff += 1
                if backoff > 3 or self._keyframe_before(wanted[i], skip=backoff) is None:
                    raise VideoReadError(f"{self.path}: cannot reach the frame at pts {wanted[i]} by seeking")
            else:
                backoff = 0
        return out


def _describe(error: BaseException) -> str:
    text = getattr(error, "strerror", None) or str(error)
    return re.sub(r"\s*:\s*'[^']*'$", "", text)


_FILE_KINDS = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _check_file(path: str) -> None:
    """Refuse, naming the path and the cause, what cannot be read as a media file, from its metadata alone: a FIFO
    or a device is never opened (reading one can wait forever or never end)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except PermissionError:
        raise VideoReadError(f"{path}: permission denied: this process may not search a folder on its path") from None
    except (OSError, ValueError) as error:  # ValueError: a NUL byte in the path
        raise VideoReadError(f"{path!r}: cannot be read ({getattr(error, 'strerror', None) or error})") from None
    if stat.S_ISDIR(info.st_mode):
        raise VideoReadError(f"{path}: is a folder, not a file")
    for is_kind, kind in _FILE_KINDS:
        if is_kind(info.st_mode):
            raise VideoReadError(f"{path}: is {kind}, not a regular file; it is not read")
    if not os.access(path, os.R_OK):
        raise VideoReadError(f"{path}: permission denied: this process may not read the file "
                             f"(mode {stat.filemode(info.st_mode)}, owner uid {info.st_uid})")
    if info.st_size == 0:
        raise VideoReadError(f"{path}: the file is empty (0 bytes)")


@dataclass
class VideoSample:
    """Frames sampled from one video source.

    Attributes:
        frames: `(n, H, W, 3)` uint8 RGB frames.
        indices: `(n,)` frame indices into the source.
        timestamps: `(n,)` presentation times of the returned frames in seconds.
        total_frames: frames in the source.
        fps: average frame rate of the source (sequences without timing use `DEFAULT_SEQUENCE_FPS`).
        source: a printable description of the source.
    """

    frames: np.ndarray
    indices: np.ndarray
    timestamps: np.ndarray
    total_frames: int
    fps: float
    source: str = ""
    metadata: dict = field(default_factory=dict)

    def video_metadata(self):
        """transformers' `VideoMetadata` of the sample (`frames_indices` the sampled indices), what processors return
        with `return_metadata=True`."""
        from transformers.video_utils import VideoMetadata

        return VideoMetadata(
            total_num_frames=int(self.total_frames), fps=self.fps, video_backend="pyav",
            frames_indices=[int(i) for i in self.indices],
            duration=self.total_frames / self.fps if self.fps else None,
        )


# ----------------------------------------------------------------------------------------------------------------
# Media given as URLs (what OpenAI-style clients send): `file://` URLs, and `data:` URIs holding an image, a video
# file, or a video as base64 JPEG frames (`data:video/jpeg;base64,<frame>,<frame>,...`, vLLM's convention).
# http(s) URLs are refused with a reason: this code does not fetch from the network.
# ----------------------------------------------------------------------------------------------------------------

_URL_SCHEMES = ("data:", "file:", "http://", "https://")
# Container suffix for a `data:video/<subtype>` payload, so PyAV picks the right demuxer from the file name.
_VIDEO_MIME_SUFFIXES = {"mp4": ".mp4", "webm": ".webm", "quicktime": ".mov", "x-matroska": ".mkv",
                        "matroska": ".mkv", "x-msvideo": ".avi", "avi": ".avi", "mpeg": ".mpg", "mp2t": ".ts",
                        "x-flv": ".flv", "3gpp": ".3gp", "ogg": ".ogv", "x-m4v": ".m4v"}


def _is_url(source: Any) -> bool:
    return isinstance(source, str) and source[:8].lower().startswith(_URL_SCHEMES)


def _label(source: str) -> str:
    """A printable name for a source: data URIs are shortened to their media type and size."""
    if source[:5].lower() == "data:":
        return f"{source.split(',', 1)[0]},... ({len(source)} characters)"
    return source


def _parse_data_uri(uri: str) -> tuple[str, str, bool]:
    """`data:<media type>[;base64],<payload>` -> `(media type, payload, is_base64)`."""
    header, comma, payload = uri[5:].partition(",")
    if not comma:
        raise VideoReadError(f"{_label(uri)}: not a data URI (no ',' between the media type and the data)")
    parts = [p.strip() for p in header.split(";")]
    return (parts[0] or "text/plain").lower(), payload, "base64" in (p.lower() for p in parts[1:])


def _data_bytes(payload: str, is_base64: bool, what: str) -> bytes:
    import base64
    import binascii
    import urllib.parse

    if not is_base64:
        return urllib.parse.unquote_to_bytes(payload)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as error:
        raise VideoReadError(f"{what}: invalid base64 data ({error})") from None


def _file_url_path(url: str) -> str:
    import urllib.parse
    import urllib.request

    parsed = urllib.parse.urlparse(url)
    if parsed.netloc not in ("", "localhost"):
        raise VideoReadError(f"{url}: a file URL on another host ({parsed.netloc}) cannot be read")
    return urllib.request.url2pathname(parsed.path)


def _refuse_remote(url: str) -> None:
    if url[:8].lower().startswith(("http://", "https://")):
        raise VideoReadError(
            f"{url}: http(s) URLs are not fetched; download the file and pass its path, or send it as a data: URI"
        )


def _image_from_url(url: str) -> Image.Image | str:
    """An image URL -> a PIL image (data URI) or a local path (file URL)."""
    _refuse_remote(url)
    if url[:5].lower() != "data:":
        return _file_url_path(url)
    media_type, payload, is_base64 = _parse_data_uri(url)
    if not media_type.startswith("image/"):
        raise VideoReadError(f"{_label(url)}: expected an image/* data URI, got {media_type}")
    import io

    return _open_image(io.BytesIO(_data_bytes(payload, is_base64, _label(url))), _label(url))


def _open_image(file, source: str) -> Image.Image:
    """`Image.open` (reads the header only), with the size checked against the current `MediaLimits` and counted
    as decoded; a decompression bomb or an unreadable image is a `VideoReadError` naming `source`."""
    try:
        image = Image.open(file)
    except Image.DecompressionBombError as error:
        raise VideoReadError(f"{source}: refused as a decompression bomb ({error})") from None
    except (OSError, SyntaxError) as error:
        raise VideoReadError(f"{source} is not a readable image ({error})") from None
    _limits().charge(image.width, image.height, source)
    return image


class _VideoURL:
    """Context manager: a video URL -> something `load_video` reads (a path, or a list of PIL frames).

    A `data:` URI holding a video file is written to a temporary file (PyAV demuxes files), removed on exit.
    """

    def __init__(self, url: str):
        self.url, self.label, self._temporary = url, _label(url), None

    def __enter__(self) -> str | list[Image.Image]:
        _refuse_remote(self.url)
        if self.url[:5].lower() != "data:":
            return _file_url_path(self.url)
        media_type, payload, is_base64 = _parse_data_uri(self.url)
        if media_type == "video/jpeg" or media_type.startswith("image/"):  # base64 frames, or a single image
            import io

            frames = []
            for number, part in enumerate(payload.split(",")):
                data = io.BytesIO(_data_bytes(part, is_base64, self.label))
                frames.append(_open_image(data, f"{self.label}: frame {number}"))
            return frames
        if not media_type.startswith("video/"):
            raise VideoReadError(f"{self.label}: expected a video/* or image/* data URI, got {media_type}")
        import tempfile

        suffix = _VIDEO_MIME_SUFFIXES.get(media_type.split("/", 1)[1], ".mp4")
        with tempfile.NamedTemporaryFile(prefix="tarsier-video-", suffix=suffix, delete=False) as handle:
            handle.write(_data_bytes(payload, is_base64, self.label))
            self._temporary = handle.name
        return self._temporary

    def __exit__(self, *exc) -> None:
        if self._temporary is not None:
            os.unlink(self._temporary)


def _load_image_file(path: str) -> np.ndarray:
    if _is_url(path):
        image = _image_from_url(path)
        if isinstance(image, Image.Image):
            return np.asarray(_exif_transpose(image).convert("RGB"))
        path = image
    _check_file(path)
    with _open_image(path, path) as image:
        try:
            return np.asarray(_exif_transpose(image).convert("RGB"))
        except (OSError, SyntaxError) as error:
            raise VideoReadError(f"{path}: not a readable image ({error})") from None


def _exif_transpose(image: Image.Image) -> Image.Image:
    from PIL import ImageOps

    return ImageOps.exif_transpose(image) or image


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _to_uint8_frames(array: np.ndarray, source: str) -> np.ndarray:
    """`(T, H, W, 3)` or `(T, 3, H, W)` (or a single `(H, W, 3)` frame) -> `(T, H, W, 3)` uint8."""
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4:
        raise VideoReadError(f"{source}: expected frames shaped (T, H, W, 3) or (T, 3, H, W), got {array.shape}")
    if array.shape[-1] != 3 and array.shape[1] == 3:
        array = array.transpose(0, 2, 3, 1)
    if array.shape[-1] != 3:
        raise VideoReadError(f"{source}: expected 3 colour channels, got shape {array.shape}")
    if array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.floating) and array.size and array.max() <= 1.0:
            array = array * 255.0
        array = np.clip(np.rint(array), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(array)


def _sequence_sample(
    get: Callable[[np.ndarray], np.ndarray],
    total: int,
    source: str,
    sampler: Callable[[np.ndarray], np.ndarray],
    transform: Callable[[np.ndarray], np.ndarray] | None,
) -> VideoSample:
    if total == 0:
        raise VideoReadError(f"{source}: holds no frames")
    timestamps = np.arange(total, dtype=np.float64) / DEFAULT_SEQUENCE_FPS
    indices = sampler(timestamps)
    distinct, inverse = np.unique(indices, return_inverse=True)
    frames = get(distinct)
    if transform is not None:
        frames = np.stack([transform(frame) for frame in frames])
    return VideoSample(frames[inverse], indices, timestamps[indices], total, DEFAULT_SEQUENCE_FPS, source)


def load_video(
    video: Any,
    sampling: FrameSampling | dict | str | None = None,
    complex_clip: bool = False,
    rng: np.random.Generator | int | None = None,
    indices: Sequence[int] | None = None,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> VideoSample:
    """Read a video source and sample frames from it.

    Args:
        video: a video file (mp4, mkv, webm, mov, avi, gif, ...), an image file (one frame), a folder of frame
            images (natural sort order), a list of frame files, a list of PIL images, a numpy array or torch
            tensor shaped `(T, H, W, 3)` or `(T, 3, H, W)`; or a URL: `file://...`, a `data:video/<type>;base64,...`
            URI of a video file, `data:video/jpeg;base64,<frame>,<frame>,...` (base64 JPEG frames, as vLLM takes
            them), or a list of `data:image/...` URIs as frames. http(s) URLs are refused (nothing is fetched).
        sampling: a `FrameSampling` (or its dict form / policy name); default `UniformSampling()` (8 frames).
        complex_clip, rng: see `FrameSampling.indices`.
        indices: explicit frame indices; overrides the policy.
        transform: applied once to every distinct sampled `(H, W, 3)` frame before repeated indices are copied
            (e.g. the processor's resize), so memory does not grow with repeats of full-size frames.

    Returns:
        A `VideoSample` with `(n, H, W, 3)` uint8 frames (the outputs of `transform` when given).
    """

    policy = UniformSampling() if sampling is None else as_frame_sampling(sampling)

    def sampler(timestamps: np.ndarray) -> np.ndarray:
        if indices is not None:
            chosen = np.asarray(indices, dtype=np.int64)
            if len(chosen) and (chosen.min() < 0 or chosen.max() >= len(timestamps)):
                raise IndexError(f"{source}: frame indices out of range [0, {len(timestamps)})")
            return chosen
        return policy.indices(timestamps, complex_clip=complex_clip, rng=rng)

    if _is_url(video):
        with _VideoURL(video) as local:
            try:
                sample = load_video(local, policy, complex_clip, rng, indices, transform)
            except VideoReadError as error:  # name the URL, not its temporary file; keep the error's class
                if isinstance(local, str):
                    error.args = (str(error).replace(local, _label(video)),)
                raise
        sample.source = _label(video)
        return sample
    if isinstance(video, (str, os.PathLike)):
        source = str(video)
        if os.path.isdir(source):
            files = sorted(
                (f for f in os.listdir(source) if Path(f).suffix.lower() in IMAGE_EXTENSIONS), key=_natural_key
            )
            if not files:
                raise VideoReadError(f"{source}: folder holds no frame images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
            video = [os.path.join(source, f) for f in files]
        elif Path(source).suffix.lower() in IMAGE_EXTENSIONS:
            frame = _load_image_file(source)
            return _sequence_sample(lambda idx: np.stack([frame] * len(idx)), 1, source, sampler, transform)
        else:
            with VideoReader(source) as reader:
                chosen = sampler(reader.timestamps)
                frames = reader.get_frames(chosen, transform=transform)
                return VideoSample(
                    frames, chosen, reader.timestamps[chosen], reader.num_frames, reader.fps, source,
                    {"rotation": reader.rotation},
                )
    if hasattr(video, "detach") and hasattr(video, "cpu"):  # torch tensor, without importing torch here
        video = video.detach().cpu().numpy()
    if isinstance(video, np.ndarray):
        array = _to_uint8_frames(video, "array")
        return _sequence_sample(lambda idx: array[idx], len(array), f"array{tuple(array.shape)}", sampler, transform)
    if isinstance(video, Image.Image):
        video = [video]
    if isinstance(video, (list, tuple)):
        items = list(video)
        if not items:
            raise VideoReadError("video: empty list of frames")
        if all(isinstance(item, (str, os.PathLike)) for item in items):
            paths = [str(item) for item in items]
            return _sequence_sample(
                lambda idx: _stack_same_size([_load_image_file(paths[i]) for i in idx], paths[0]),
                len(paths), f"{len(paths)} frame files from {_label(paths[0])}", sampler, transform,
            )
        if all(isinstance(item, Image.Image) for item in items):
            return _sequence_sample(
                lambda idx: _stack_same_size([np.asarray(items[i].convert("RGB")) for i in idx], "PIL frames"),
                len(items), f"{len(items)} PIL frames", sampler, transform,
            )
        if all(isinstance(item, np.ndarray) or hasattr(item, "detach") for item in items):
            arrays = [np.asarray(item.detach().cpu().numpy() if hasattr(item, "detach") else item) for item in items]
            array = _to_uint8_frames(np.stack(arrays), "frames list")
            return _sequence_sample(
                lambda idx: array[idx], len(array), f"{len(array)} array frames", sampler, transform
            )
    raise VideoReadError(f"unsupported video input of type {type(video).__name__}")


def _stack_same_size(frames: list[np.ndarray], source: str) -> np.ndarray:
    sizes = {frame.shape for frame in frames}
    if len(sizes) > 1:
        raise VideoReadError(f"{source}: frames differ in size {sorted(sizes)}")
    return np.stack(frames)


def is_frame_list(items: Sequence[Any]) -> bool:
    """True when a list is one video given as its frames (PIL images, `(H, W, 3)` arrays, image files or
    `data:image/` URIs), not a list of videos."""
    if not items:
        return False
    first = items[0]
    if isinstance(first, Image.Image) or (isinstance(first, np.ndarray) and first.ndim == 3):
        return True
    if isinstance(first, (str, os.PathLike)):
        return len(items) > 1 and all(
            Path(str(x)).suffix.lower() in IMAGE_EXTENSIONS or str(x)[:11].lower() == "data:image/" for x in items
        )
    return False


def load_image(image: Any) -> np.ndarray:
    """Read one still image as `(H, W, 3)` uint8: a file path, a `file://` URL, a `data:image/...` URI, a PIL image,
    or an `(H, W, 3)` / `(3, H, W)` array or tensor."""
    if isinstance(image, (str, os.PathLike)):
        if Path(str(image)).suffix.lower() in VIDEO_EXTENSIONS:
            raise VideoReadError(f"{image}: is a video file; pass it as a video, not an image")
        return _load_image_file(str(image))
    if isinstance(image, Image.Image):
        return np.asarray(_exif_transpose(image).convert("RGB"))
    if hasattr(image, "detach") and hasattr(image, "cpu"):
        image = image.detach().cpu().numpy()
    if isinstance(image, np.ndarray):
        return _to_uint8_frames(image, "image array")[0]
    raise VideoReadError(f"unsupported image input of type {type(image).__name__}")


# ----------------------------------------------------------------------------------------------------------------
# Pixels: sampled `(H, W, 3)` uint8 frames -> the `(n, 3, S, S)` tensor every Tarsier model sees, through the
# CLIP / SigLIP image processor (PIL backend) for rescaling and normalisation.
# ----------------------------------------------------------------------------------------------------------------

# "stretch": one resize to (S, S). "pad": keep the aspect ratio, pad with the mean colour. "released": what the
# released Tarsier does (branch `tarsier`, `dataset/processor.py` `CustomImageProcessor.resize2square`, then
# LlavaProcessor's CLIPImageProcessor): stretch to a max(H, W) square at full resolution with PIL's default filter
# (bicubic), then resize that square to (S, S) with the image processor's filter: two resamplings.
RESIZE_MODES = ("stretch", "pad", "released")


def resize_frames(frames: np.ndarray | list[np.ndarray], image_processor, resize_mode: str = "stretch") -> list[np.ndarray]:
    """Resize `(H, W, 3)` uint8 frames to the image processor's `(S, S, 3)` per `resize_mode` (see
    `TarsierProcessor`), with the image processor's resampling."""
    size = _image_size_of(image_processor)
    resample = getattr(image_processor, "resample", Image.BICUBIC)
    out = []
    for frame in frames:
        image = Image.fromarray(np.asarray(frame))
        if resize_mode == "released":
            side = max(image.width, image.height)
            image = image.resize((side, side), resample=Image.BICUBIC)
        if resize_mode in ("stretch", "released"):
            out.append(np.asarray(image.resize((size, size), resample=resample)))
            continue
        scale = size / max(image.width, image.height)
        width, height = max(1, round(image.width * scale)), max(1, round(image.height * scale))
        fill = tuple(int(round(255 * m)) for m in image_processor.image_mean)
        canvas = Image.new("RGB", (size, size), fill)
        canvas.paste(image.resize((width, height), resample=resample), ((size - width) // 2, (size - height) // 2))
        out.append(np.asarray(canvas))
    return out


def preprocess_frames(frames: np.ndarray | list[np.ndarray], image_processor, resize_mode: str = "stretch"):
    """`(n, H, W, 3)` uint8 frames -> `(n, 3, S, S)` float32 tensor: `resize_frames`, then the image processor's
    rescale and normalisation (what every Tarsier model sees)."""
    resized = resize_frames(frames, image_processor, resize_mode)
    return image_processor(images=resized, do_resize=False, do_center_crop=False, return_tensors="pt")["pixel_values"]


def _image_size_of(image_processor) -> int:
    for attribute in ("crop_size", "size"):
        size = getattr(image_processor, attribute, None)
        if isinstance(size, dict) and "height" in size:
            return int(size["height"])
        if isinstance(size, dict) and "shortest_edge" in size and attribute == "size":
            return int(size["shortest_edge"])
        if hasattr(size, "height") and getattr(size, "height", None):
            return int(size.height)
    raise ValueError(f"cannot tell the image size of {type(image_processor).__name__}")


def _set_image_size(image_processor, image_size: int) -> None:
    image_processor.size = {"height": image_size, "width": image_size}
    if getattr(image_processor, "crop_size", None) is not None:
        image_processor.crop_size = {"height": image_size, "width": image_size}


def _build_image_processor(kind: str, image_size: int | None):
    if kind == "clip":
        from transformers import CLIPImageProcessorPil

        size = image_size or 336
        return CLIPImageProcessorPil(
            size={"height": size, "width": size}, crop_size={"height": size, "width": size}, do_center_crop=False
        )
    if kind == "siglip":
        from transformers import SiglipImageProcessorPil

        size = image_size or 384
        return SiglipImageProcessorPil(size={"height": size, "width": size})
    raise ValueError(f"unknown image processor {kind!r}; expected 'clip', 'siglip' or an instance")




__all__ = [
    "FRAME_SAMPLING_POLICIES",
    "FpsSampling",
    "FrameSampling",
    "InstructionSampling",
    "MediaLimitError",
    "MediaLimits",
    "RandomSegmentsSampling",
    "UniformSampling",
    "VideoReadError",
    "VideoReader",
    "VideoSample",
    "as_frame_sampling",
    "is_frame_list",
    "load_image",
    "load_video",
    "media_limits",
    "preprocess_frames",
    "register_frame_sampling",
    "resize_frames",
    "sample_by_fps",
    "sample_frame_indices",
    "sample_instruction_tuning",
    "sample_random_segments",
    "sample_uniform",
]
