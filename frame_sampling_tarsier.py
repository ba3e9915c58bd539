"""Tarsier frame sampling: which frames of a video the model sees (paper §3.2 and §5.1).

Remote code that travels with every checkpoint (imported relatively by the processors and the media loader); it
depends only on numpy.

One frozen dataclass per policy, carrying the policy's parameters: `UniformSampling` (inference),
`RandomSegmentsSampling` (pre-training), `InstructionSampling` (instruction tuning), `FpsSampling` (a fixed rate)
and `Tarsier2Sampling` (Tarsier2's inference sampler). They are passed whole from the command line or the processor
config down to `load_video`, saved in `processor_config.json` as `{"policy": "uniform", "num_frames": 8}`, and
found by name in the registry `FRAME_SAMPLING_POLICIES` (extended with `register_frame_sampling`):

    policy = as_frame_sampling({"policy": "uniform", "num_frames": 8})
    policy.indices(timestamps)                    # (8,) int64 frame indices, in temporal order

Every policy takes the presentation timestamps (seconds, increasing) of all T frames of a video, or the frame count
T (constant frame rate, one frame per second), and returns frame indices into them, in temporal order. Working on
timestamps keeps variable-frame-rate files right: "uniform" means uniform in time, not in frame count (the two agree
for constant frame rate).

Videos shorter than the requested count: the count-based policies (uniform, random segments, instruction tuning)
always return exactly `num_frames` indices, so every sample of a policy has the same number of visual tokens; when
T < num_frames frames repeat (each frame at least once, in temporal order). `FpsSampling` and `Tarsier2Sampling`
never repeat a frame.

A new policy is one registered subclass:

    @register_frame_sampling
    @dataclass(frozen=True)
    class EveryKth(FrameSampling):
        policy: ClassVar[str] = "every_kth"
        k: int = 2

        def indices(self, timestamps, complex_clip=False, rng=None):
            total = len(timestamps) if np.ndim(timestamps) else int(timestamps)
            return np.arange(0, total, self.k)

        def max_frames_per_video(self, complex_clip=False):
            return None  # unbounded: depends on the video
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields, replace
from typing import ClassVar, Sequence

import numpy as np

# ----------------------------------------------------------------------------------------------------------------
# Timestamp arithmetic shared by the policies
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


def frame_duration(timestamps: np.ndarray) -> float:
    """Display duration of the last frame of `(T,)` increasing timestamps: the median frame interval (1 s for a
    single frame). A video lasts from its first timestamp to its last plus this (the reader's `fps` uses it too)."""
    return float(np.median(np.diff(timestamps))) if len(timestamps) > 1 else 1.0


def _nearest_frames(ts: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Index of the frame whose timestamp is nearest to each time (ties go to the even fractional index, like
    Python's `round`, so constant-frame-rate videos give exactly `round(i * (T - 1) / (n - 1))`)."""
    positions = np.interp(times, ts, np.arange(len(ts), dtype=np.float64))
    # Snap away float noise so exact halves stay halves before banker's rounding.
    return np.array([round(float(p)) for p in np.round(positions, 6)], dtype=np.int64)


def _displayed_frames(ts: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Index of the frame on screen at each time (the last frame whose timestamp is <= the time)."""
    return np.clip(np.searchsorted(ts, times, side="right") - 1, 0, len(ts) - 1).astype(np.int64)


def _uniform(ts: np.ndarray, num_frames: int) -> np.ndarray:
    """`(num_frames,)` int64 non-decreasing indices into `(T,)` timestamps `ts`: evenly spread in time, first and
    last frame included; one frame means the first frame.

    For constant frame rate this is the released Tarsier rule `round(i * (T - 1) / (num_frames - 1))`
    (bytedance/tarsier `dataset/utils.py`, `sample_frame_indices`), including its choice for one frame: the first.
    """
    if num_frames == 1:
        return np.zeros(1, dtype=np.int64)
    times = ts[0] + (ts[-1] - ts[0]) * np.arange(num_frames) / (num_frames - 1)
    return _nearest_frames(ts, times)


# ----------------------------------------------------------------------------------------------------------------
# The policy objects and their registry
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
    """Inference sampling (paper §5.1): `num_frames` evenly spread in time, first and last frame included.

    For constant frame rate this is the released Tarsier rule `round(i * (T - 1) / (num_frames - 1))`
    (bytedance/tarsier `dataset/utils.py`, `sample_frame_indices`), including its choice for one frame: the first.
    `indices` returns `(num_frames,)` int64 frame indices, non-decreasing.
    """

    policy: ClassVar[str] = "uniform"
    num_frames: int = 8

    def __post_init__(self):
        _check_count(self, self.num_frames)

    def indices(self, timestamps, complex_clip=False, rng=None):
        return _uniform(_as_timestamps(timestamps), self.num_frames)

    def max_frames_per_video(self, complex_clip=False):
        return self.num_frames


@register_frame_sampling
@dataclass(frozen=True)
class RandomSegmentsSampling(FrameSampling):
    """Pre-training sampling (paper §3.2): split the video into n equal time segments and take a random frame from
    each, n drawn uniformly per video from an inclusive `(low, high)` range (paper: [8, 32]) or fixed.

    `indices` returns `(n,)` int64 frame indices, non-decreasing. A segment that holds no frame (videos shorter than
    n) takes the frame on screen at a random instant of the segment.
    """

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
        ts = _as_timestamps(timestamps)
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        if isinstance(self.num_frames, tuple):
            low, high = int(self.num_frames[0]), int(self.num_frames[1])
            n = int(rng.integers(low, high + 1))
        else:
            n = int(self.num_frames)
        start, end = ts[0], ts[-1] + frame_duration(ts)
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

    def max_frames_per_video(self, complex_clip=False):
        return max(self.num_frames) if isinstance(self.num_frames, tuple) else int(self.num_frames)


@register_frame_sampling
@dataclass(frozen=True)
class InstructionSampling(FrameSampling):
    """Instruction-tuning sampling (paper §3.2): first and last frame always, the others evenly spaced between them
    (the uniform rule); `num_frames` (8) for ordinary clips and twice that (16) for complex (movie) ones, the paper's
    ratio."""

    policy: ClassVar[str] = "instruction"
    num_frames: int = 8

    def __post_init__(self):
        _check_count(self, self.num_frames)

    def indices(self, timestamps, complex_clip=False, rng=None):
        return _uniform(_as_timestamps(timestamps), 2 * self.num_frames if complex_clip else self.num_frames)

    def max_frames_per_video(self, complex_clip=False):
        return 2 * self.num_frames if complex_clip else self.num_frames


@register_frame_sampling
@dataclass(frozen=True)
class FpsSampling(FrameSampling):
    """A fixed rate: the frame on screen every `1 / fps` seconds from the first frame, at most `max_frames` (when the
    rate would give more, `max_frames` uniform frames instead).

    `indices` returns `(m,)` int64 distinct frame indices, `1 <= m <= max_frames` (a rate above the video's gives
    each frame once).
    """

    policy: ClassVar[str] = "fps"
    fps: float
    max_frames: int = 64

    def __post_init__(self):
        if not self.fps > 0:
            raise ValueError(f"frame sampling 'fps' needs fps > 0, got {self.fps!r}")
        _check_count(self, self.max_frames)

    def indices(self, timestamps, complex_clip=False, rng=None):
        ts = _as_timestamps(timestamps)
        end = ts[-1] + frame_duration(ts)
        times = ts[0] + np.arange(0.0, end - ts[0], 1.0 / self.fps)
        indices = np.unique(_displayed_frames(ts, times))
        if len(indices) > self.max_frames:
            return _uniform(ts, self.max_frames)
        return indices

    def max_frames_per_video(self, complex_clip=False):
        return self.max_frames


@register_frame_sampling
@dataclass(frozen=True)
class Tarsier2Sampling(FrameSampling):
    """Tarsier2's inference sampling (bytedance/tarsier branch `tarsier2`, `_sample_frame_indices_v1`, the `v1`
    sampler of `configs/tarser2_default_config.yaml`): `num_frames` (16) by frame index, not by time.

    `[0]` when one frame is asked for; every frame, once, when the clip has no more than `num_frames`; otherwise
    `round(i * (T - 1) / (num_frames - 1))` with Python's `round` (halves to even). It differs from `UniformSampling`
    on clips of fewer than `num_frames` frames (no repeats here) and on variable-frame-rate clips (frame count here,
    time there). `indices` returns `(n,)` int64 increasing frame indices, `n = min(T, num_frames)`.
    """

    policy: ClassVar[str] = "tarsier2"
    num_frames: int = 16

    def __post_init__(self):
        _check_count(self, self.num_frames)

    def indices(self, timestamps, complex_clip=False, rng=None):
        total, num_frames = len(_as_timestamps(timestamps)), self.num_frames
        if num_frames == 1:
            return np.zeros(1, dtype=np.int64)
        if total <= num_frames:
            return np.arange(total, dtype=np.int64)
        return np.array([round(i * (total - 1) / (num_frames - 1)) for i in range(num_frames)], dtype=np.int64)

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


__all__ = [
    "FRAME_SAMPLING_POLICIES",
    "FpsSampling",
    "FrameSampling",
    "InstructionSampling",
    "RandomSegmentsSampling",
    "Tarsier2Sampling",
    "UniformSampling",
    "as_frame_sampling",
    "call_sampling",
    "frame_duration",
    "register_frame_sampling",
]
