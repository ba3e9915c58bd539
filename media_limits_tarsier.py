"""Tarsier media access: what reading a video or an image may open, and what it may cost.

Remote code that travels with every checkpoint (imported relatively by the video reader and the media loader); it
depends only on PyAV and Pillow.

- opening rules: `open_video` opens one local file with allow-listed demuxers only (`ALLOWED_DEMUXERS`: containers
  and raw streams that read nothing but that file) on the local file protocol; `check_file` refuses folders, FIFOs,
  devices, unreadable and empty files from their metadata alone; `open_image` opens an image header with the
  decompression-bomb check;
- limits: `MediaLimits` bounds the pixels of one frame and of everything decoded under one `media_limits` block (a
  server request), refused with `MediaLimitError`;
- `VideoReadError`: the one error of an unreadable source, naming the source and the cause.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import av
from PIL import Image

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
VIDEO_EXTENSIONS = {".mp4", ".mkv", ".webm", ".mov", ".avi", ".gif", ".m4v", ".mpg", ".mpeg", ".ts", ".flv"}


class VideoReadError(ValueError):
    """A video source cannot be read; the message names the source and the cause."""


# The only demuxers a video is opened with: containers and raw elementary streams that read nothing but the one file
# they are given. FFmpeg probes a file by its bytes and name, and some demuxers it may pick open other files or URLs
# named inside it: playlists and manifests (hls, dash), scripts (concat / ffconcat), file-name patterns (image2),
# session descriptions (sdp, rtp, rtsp). `format_whitelist` makes FFmpeg refuse every demuxer not listed here after
# probing and before the demuxer reads a byte, so none of them runs, whatever a file claims to be;
# `protocol_whitelist` keeps every open on the local file protocol; mov's external data references stay off
# (`enable_drefs`, FFmpeg's default, set explicitly).
ALLOWED_DEMUXERS = ("mov", "matroska", "avi", "mpegts", "mpeg", "flv", "gif", "ogg",
                    "h264", "hevc", "h263", "m4v", "mpegvideo")
_OPEN_OPTIONS = {"format_whitelist": ",".join(ALLOWED_DEMUXERS), "protocol_whitelist": "file", "enable_drefs": "0"}
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


def current_media_limits() -> MediaLimits:
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


def open_video(path: str) -> av.container.InputContainer:
    """Open one local video file with an allow-listed demuxer (`ALLOWED_DEMUXERS`) and the current frame-size
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
            f"corrupt or not a video ({describe_error(error)})"
        ) from None
    limit = current_media_limits().max_frame_pixels
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
            f"({', '.join(ALLOWED_DEMUXERS)})")


def open_image(file, source: str) -> Image.Image:
    """`Image.open` (reads the header only), with the size checked against the current `MediaLimits` and counted
    as decoded; a decompression bomb or an unreadable image is a `VideoReadError` naming `source`."""
    try:
        image = Image.open(file)
    except Image.DecompressionBombError as error:
        raise VideoReadError(f"{source}: refused as a decompression bomb ({error})") from None
    except (OSError, SyntaxError) as error:
        raise VideoReadError(f"{source} is not a readable image ({error})") from None
    current_media_limits().charge(image.width, image.height, source)
    return image


def describe_error(error: BaseException) -> str:
    """The cause an FFmpeg or OS error gives, without the file name it repeats (messages name the source)."""
    text = getattr(error, "strerror", None) or str(error)
    return re.sub(r"\s*:\s*'[^']*'$", "", text)


_FILE_KINDS = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def check_file(path: str) -> None:
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


__all__ = [
    "ALLOWED_DEMUXERS",
    "IMAGE_EXTENSIONS",
    "MediaLimitError",
    "MediaLimits",
    "VIDEO_EXTENSIONS",
    "VideoReadError",
    "check_file",
    "current_media_limits",
    "describe_error",
    "media_limits",
    "open_image",
    "open_video",
]
