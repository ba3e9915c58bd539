"""Tarsier media loading: any supported video or image source -> sampled `(n, H, W, 3)` uint8 frames.

Remote code that travels with every checkpoint (imported relatively by the processors); it depends only on PyAV
(through `video_reader_tarsier`), numpy and Pillow.

- `load_video`: a video file, an image file (one frame), a folder of frame images, a list of frame files / PIL
  images / arrays, an array or tensor, or a `file://` / `data:` URL -> a `VideoSample` (frames, their indices and
  timestamps), with frames chosen by a `FrameSampling` policy and decoded by `VideoReader`;
- `load_image`: one still image (path, URL, PIL image, array) -> `(H, W, 3)` uint8;
- `is_frame_list`: whether a list is one video given as its frames.

Every file is checked and opened through `media_limits_tarsier` (allow-listed demuxers, no FIFOs or devices, the
current `MediaLimits`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

try:  # copied next to a checkpoint by transformers (remote code)
    from .frame_sampling_tarsier import FrameSampling, UniformSampling, as_frame_sampling
    from .media_limits_tarsier import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, VideoReadError, check_file, open_image
    from .video_reader_tarsier import VideoReader
except ImportError:  # installed as top-level modules of this repo
    from frame_sampling_tarsier import FrameSampling, UniformSampling, as_frame_sampling
    from media_limits_tarsier import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, VideoReadError, check_file, open_image
    from video_reader_tarsier import VideoReader


# Frame rate assumed for frame sequences (folders, file lists, arrays) that carry no timing of their own.
DEFAULT_SEQUENCE_FPS = 1.0


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

    return open_image(io.BytesIO(_data_bytes(payload, is_base64, _label(url))), _label(url))



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
                frames.append(open_image(data, f"{self.label}: frame {number}"))
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
    check_file(path)
    with open_image(path, path) as image:
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


__all__ = ["DEFAULT_SEQUENCE_FPS", "VideoSample", "is_frame_list", "load_image", "load_video"]
