"""Tarsier frame preprocessing: sampled `(H, W, 3)` uint8 frames -> the `(n, 3, S, S)` tensor every Tarsier model
sees, through the CLIP / SigLIP image processor (PIL backend) for rescaling and normalisation.

Remote code beside `processing_tarsier.py`, which imports it relatively; it depends only on numpy, Pillow and
transformers.

Where it departs from transformers: transformers' `BaseVideoProcessor` (the `video_processor` of its VLM
processors) needs torchvision, which cannot be installed beside the CPU torch this project pins (see
docs/design.md), and its PyAV backend decodes every frame up to the last wanted one. So there is no video-processor
class here: `TarsierProcessor` has no `video_processor` attribute; it samples with a `FrameSampling`
(`frame_sampling_tarsier`), decodes with `VideoReader` (`video_reader_tarsier`, through
`media_loading_tarsier.load_video`) and runs the frames through its image processor with `preprocess_frames`.

- `resize_frames` / `preprocess_frames`: frames -> `(S, S, 3)` frames / the `(n, 3, S, S)` float tensor, per
  `RESIZE_MODES`;
- `build_image_processor`, `image_size_of`, `set_image_size`: the CLIP / SigLIP image processor and its side `S`.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# "stretch": one resize to (S, S). "pad": keep the aspect ratio, pad with the mean colour. "released": what the
# released Tarsier does (branch `tarsier`, `dataset/processor.py` `CustomImageProcessor.resize2square`, then
# LlavaProcessor's CLIPImageProcessor): stretch to a max(H, W) square at full resolution with PIL's default filter
# (bicubic), then resize that square to (S, S) with the image processor's filter: two resamplings.
RESIZE_MODES = ("stretch", "pad", "released")


def resize_frames(frames: np.ndarray | list[np.ndarray], image_processor, resize_mode: str = "stretch") -> list[np.ndarray]:
    """Resize `(H, W, 3)` uint8 frames to the image processor's `(S, S, 3)` per `resize_mode` (see
    `TarsierProcessor`), with the image processor's resampling."""
    size = image_size_of(image_processor)
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


def image_size_of(image_processor) -> int:
    """The side `S` of the square frames an image processor outputs (its crop size, else its size)."""
    for attribute in ("crop_size", "size"):
        size = getattr(image_processor, attribute, None)
        if isinstance(size, dict) and "height" in size:
            return int(size["height"])
        if isinstance(size, dict) and "shortest_edge" in size and attribute == "size":
            return int(size["shortest_edge"])
        if hasattr(size, "height") and getattr(size, "height", None):
            return int(size.height)
    raise ValueError(f"cannot tell the image size of {type(image_processor).__name__}")


def set_image_size(image_processor, image_size: int) -> None:
    """Make an image processor output `(image_size, image_size)` frames (its size, and its crop size if it has one)."""
    image_processor.size = {"height": image_size, "width": image_size}
    if getattr(image_processor, "crop_size", None) is not None:
        image_processor.crop_size = {"height": image_size, "width": image_size}


def build_image_processor(kind: str, image_size: int | None):
    """A PIL-backend image processor for a vision tower: `"clip"` (default side 336, no center crop) or `"siglip"`
    (default side 384), outputting `(image_size, image_size)` frames."""
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


__all__ = ["RESIZE_MODES", "build_image_processor", "image_size_of", "preprocess_frames", "resize_frames",
           "set_image_size"]
