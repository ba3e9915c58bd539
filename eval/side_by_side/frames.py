"""Decode a few evenly spaced frames of a video as JPEG thumbnails (the page's fallback when a video won't play)."""

from __future__ import annotations

import functools
import io

import av
from PIL import Image


@functools.lru_cache(maxsize=64)
def video_thumbnails(path: str, num_frames: int = 8, max_side: int = 320) -> tuple[bytes, ...]:
    """`num_frames` JPEGs taken at the centres of equal time slices of the video.

    Args:
        path: a video file PyAV can read.
        num_frames: how many thumbnails.
        max_side: longest side of a thumbnail in pixels.

    Returns:
        A tuple of `num_frames` JPEG byte strings in time order (the last decoded frame repeats if the
        video holds fewer frames than asked for).
    """
    with av.open(path) as container:
        stream = container.streams.video[0]
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = 0.0
        targets = [(k + 0.5) * duration / num_frames for k in range(num_frames)]
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        images: list[Image.Image] = []
        last = None
        for frame in container.decode(stream):
            last = frame
            when = (frame.time if frame.time is not None else 0.0) - start
            while len(images) < num_frames and when >= targets[len(images)]:
                images.append(frame.to_image())
            if len(images) == num_frames:
                break
        if last is None:
            raise ValueError(f"{path}: no video frames could be decoded")
        while len(images) < num_frames:
            images.append(last.to_image())
    encoded = []
    for image in images:
        image.thumbnail((max_side, max_side))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
        encoded.append(buffer.getvalue())
    return tuple(encoded)
