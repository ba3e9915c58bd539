"""Write videos with PyAV: the one place this repo encodes frames, for generated data, tests and benchmarks."""

from __future__ import annotations

import os
from fractions import Fraction
from typing import Iterable, Sequence

import av
import numpy as np

# Frame-number code drawn into generated test/benchmark videos: CODE_BITS black/white blocks on a
# CODE_ROWS x CODE_COLS grid, big enough to survive lossy encoding and chroma subsampling.
CODE_BITS = 16
CODE_ROWS = 2
CODE_COLS = 8


def write_video(
    path: str | os.PathLike,
    frames: Iterable[np.ndarray],
    fps: float = 30,
    codec: str = "libx264",
    gop_size: int | None = None,
    max_b_frames: int | None = None,
    pix_fmt: str | None = None,
    timestamps: Sequence[float] | None = None,
    rotation: int | None = None,
    crf: int | None = 18,
) -> str:
    """Encode RGB frames into a video file.

    Args:
        path: output file; the container follows the extension (`.mp4`, `.mkv`, `.webm`, `.mov`, `.avi`, `.gif`).
        frames: iterable of `(height, width, 3)` uint8 RGB arrays, all the same size.
        fps: nominal frame rate (the stream's average rate).
        codec: encoder name (`libx264`, `mpeg4`, `libvpx-vp9`, `gif`, ...).
        gop_size: frames between keyframes (`None` keeps the encoder's default).
        max_b_frames: B-frames between references (`None` keeps the encoder's default; 0 disables them).
        pix_fmt: pixel format; defaults to `yuv420p` (`rgb8` for gif). Odd sizes need `yuv444p` with x264.
        timestamps: optional presentation time in seconds of every frame, for variable-frame-rate files.
        rotation: optional display rotation in degrees clockwise, as phones record it (the legacy `rotate` tag):
            a player turns the stored frames this much clockwise before showing them. Written as the stream's
            display matrix, which mp4/mov/mkv keep (PyAV 18 ignores a plain `rotate` metadata tag).
        crf: x264/vp9 constant-rate factor (lower = closer to the input pixels).

    Returns:
        The path written, as a string.
    """
    path = str(path)
    if pix_fmt is None:
        pix_fmt = "rgb8" if codec == "gif" else "yuv420p"
    time_base = Fraction(1, 90000) if timestamps is not None else None
    with av.open(path, mode="w") as container:
        stream = None
        for index, frame in enumerate(frames):
            frame = np.ascontiguousarray(frame, dtype=np.uint8)
            if stream is None:
                stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
                stream.width, stream.height = frame.shape[1], frame.shape[0]
                stream.pix_fmt = pix_fmt
                if time_base is not None:
                    stream.time_base = time_base
                    stream.codec_context.time_base = time_base
                options = {}
                if crf is not None and codec in ("libx264", "libvpx-vp9"):
                    options["crf"] = str(crf)
                if codec == "libx264":
                    options["preset"] = "veryfast"
                    # one encoder thread: x264's threads made the pixels of a clip depend on the machine's load
                    # (two builds of the same DREAM-S set decoded differently in 1,017 of 4,100 clips)
                    options["threads"] = "1"
                if options:
                    stream.options = options
                x264_params = []
                if gop_size is not None:
                    stream.codec_context.gop_size = gop_size
                    # libx264 takes keyint/scenecut only through x264-params; without scenecut=0 it inserts
                    # extra keyframes at content changes and the GOP length is not what the caller asked for.
                    x264_params += [f"keyint={gop_size}", f"min-keyint={gop_size}", "scenecut=0"]
                if max_b_frames is not None:
                    stream.codec_context.max_b_frames = max_b_frames
                    x264_params.append(f"bframes={max_b_frames}")
                if codec == "libx264" and x264_params:
                    stream.options = {**stream.options, "x264-params": ":".join(x264_params)}
                if rotation:
                    if rotation % 90:
                        raise ValueError(f"{path}: rotation must be a multiple of 90 degrees, got {rotation}")
                    # The display matrix counts counter-clockwise; phones' `rotate` tag counts clockwise.
                    stream.set_display_rotation(-int(rotation))
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            if timestamps is not None:
                video_frame.pts = int(round(timestamps[index] / float(time_base)))
                video_frame.time_base = time_base
            for packet in stream.encode(video_frame):
                container.mux(packet)
        if stream is None:
            raise ValueError(f"{path}: no frames to write")
        for packet in stream.encode():
            container.mux(packet)
    return path


def draw_frame_code(frame: np.ndarray, index: int, height_fraction: float = 1.0) -> np.ndarray:
    """Draw `index` as a binary code of big black/white blocks into the top of `frame` (in place).

    Args:
        frame: `(height, width, 3)` uint8 RGB array; must be at least 2x8 pixels (blocks may be 1 pixel).
        index: the number to draw, `0 <= index < 2**16`.
        height_fraction: share of the frame's height the code covers (from the top).

    Returns:
        The same array, for chaining.
    """
    if not 0 <= index < 2**CODE_BITS:
        raise ValueError(f"frame code {index} does not fit in {CODE_BITS} bits")
    height = max(CODE_ROWS, int(frame.shape[0] * height_fraction))
    rows = np.linspace(0, height, CODE_ROWS + 1).astype(int)
    cols = np.linspace(0, frame.shape[1], CODE_COLS + 1).astype(int)
    for bit in range(CODE_BITS):
        r, c = divmod(bit, CODE_COLS)
        frame[rows[r] : rows[r + 1], cols[c] : cols[c + 1]] = 255 if (index >> bit) & 1 else 0
    return frame


def read_frame_code(frame: np.ndarray, height_fraction: float = 1.0) -> int:
    """Read back the number drawn by `draw_frame_code` from a decoded `(height, width, 3)` RGB frame."""
    height = max(CODE_ROWS, int(frame.shape[0] * height_fraction))
    rows = np.linspace(0, height, CODE_ROWS + 1).astype(int)
    cols = np.linspace(0, frame.shape[1], CODE_COLS + 1).astype(int)
    value = 0
    for bit in range(CODE_BITS):
        r, c = divmod(bit, CODE_COLS)
        # Average the block's middle to ignore ringing at block edges.
        r0, r1, c0, c1 = rows[r], rows[r + 1], cols[c], cols[c + 1]
        dr, dc = (r1 - r0) // 4, (c1 - c0) // 4
        block = frame[r0 + dr : max(r1 - dr, r0 + dr + 1), c0 + dc : max(c1 - dc, c0 + dc + 1)]
        if block.mean() > 127:
            value |= 1 << bit
    return value


def coded_frames(count: int, height: int, width: int, start: int = 0) -> list[np.ndarray]:
    """`count` RGB frames of size `height x width` whose pixels are the binary code of their index."""
    return [draw_frame_code(np.zeros((height, width, 3), np.uint8), start + i) for i in range(count)]
