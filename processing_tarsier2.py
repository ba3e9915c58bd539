"""Tarsier2 (Qwen2-VL underneath) processing without torchvision: videos -> `pixel_values_videos`, `video_grid_thw`.

A converted Tarsier2 checkpoint is a plain Qwen2-VL folder that carries this file as optional remote code.
`Tarsier2Processor.save_pretrained` writes (issue #35):

- `processor_config.json`: `processor_class` "Qwen2VLProcessor"; `image_processor` and `video_processor`, the
  configs of transformers' `Qwen2VLImageProcessor` / `Qwen2VLVideoProcessor` with the checkpoint's pixel bounds
  (`size`), the video one with the Tarsier2-only options in its `tarsier2` block (sampling, frame duplication, the
  first resize), which Qwen2-VL keeps as an unused attribute; one `auto_map`, at the top level only:
  `{"AutoProcessor": "processing_tarsier2.Tarsier2Processor"}`. No sub-processor config and no
  `tokenizer_config.json` carries an `auto_map`. (Measured with the layout this replaced: a nested video config
  with `auto_map.AutoVideoProcessor` and `video_processor_type` Tarsier2VideoProcessor, a class transformers does
  not have, makes `AutoVideoProcessor`, hence `Qwen2VLProcessor.from_pretrained` (vLLM's way) and `AutoProcessor`,
  ask for `trust_remote_code`; so does `processor_class` Tarsier2Processor for `AutoProcessor`.)
- this file and `video_processing_tarsier.py` (imported relatively: the PyAV reader, the `FrameSampling` policies).

transformers 5.23 then resolves: `AutoProcessor.from_pretrained(folder)` -> its own `Qwen2VLProcessor` (a local
`processor_class` wins without `trust_remote_code`; its video processor needs torchvision);
`AutoProcessor.from_pretrained(folder, trust_remote_code=True)` -> this file's `Tarsier2Processor` (a top-level
`auto_map` wins over a class of transformers' own when remote code is allowed); `Tarsier2Processor.from_pretrained`
-> this class without remote code (`tarsier_hf.families.load_processor`).

Matching the release with plain Qwen2-VL (measured with benchmarks/compare_qwen2vl_processor.py): give the 16
frames of the release's v1 rule (`Tarsier2Sampling`), each resized first with PIL bicubic to at most 460,800 pixels
(`frame_sizes(...)[0]`), each twice (`[f0, f0, f1, f1, ...]`), with `do_sample_frames=False`: the same grid and
`input_ids`, pixels within 0.03 (bicubic rounding of torchvision against PIL).

- `Tarsier2VideoProcessor` (a `VideoProcessorMixin`, the light base class of transformers' video processors that
  does not need torchvision): samples, decodes and patchifies videos the way Qwen2-VL expects, with the release's
  two additions (bytedance/tarsier branch `tarsier2`): every frame resized first to at most
  `frame_pre_resize_max_pixels` (`TarsierProcessor.resize2pixels`), and every frame given twice
  (`use_multi_images_for_video`), so one temporal patch of 2 holds one frame: 16 frames give `grid_t = 16`.
- `Tarsier2Processor`: tokenizer + Qwen2-VL image processor (PIL backend) + `Tarsier2VideoProcessor`; expands every
  `<|video_pad|>` into `t * h * w / merge_size**2` tokens through `ProcessorMixin.replace_video_token`.
- `build_tarsier2_processor(...)`: the processor a converted folder saves.

Pixel arithmetic, as transformers' slow `Qwen2VLImageProcessor` (4.47, the release's) and its PIL twin (5.23) do it:
PIL bicubic resize of uint8 RGB, `float32(float64(x) * rescale_factor)`, `(x - mean) / std` in float32, patches
ordered `(t, h / m, w / m, m, m, channel, temporal, patch, patch)`.

Why a `VideoProcessorMixin` and not a `BaseVideoProcessor`: `ProcessorMixin` accepts any `VideoProcessorMixin` as
`video_processor`; `BaseVideoProcessor` adds the torchvision backend. transformers exports `VideoProcessorMixin` at
its top level only when torchvision is installed, so `Tarsier2Processor` checks its video processor against the
class itself, and loads its sub-processors with its own classes (`_get_arguments_from_pretrained`).
"""

import json
import os
from typing import Any

import numpy as np
from PIL import Image

from transformers.feature_extraction_utils import BatchFeature
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling
# Qwen2-VL's target size (sides multiples of `factor`, pixels within bounds, aspect kept), the arithmetic of the
# release's transformers 4.47; `factor=1` is the release's frame pre-resize. The PIL module needs no torchvision.
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize
from transformers.processing_utils import ProcessingKwargs, ProcessorMixin, Unpack, VideosKwargs
from transformers.video_processing_utils import VideoProcessorMixin

try:  # copied next to a checkpoint by transformers (remote code)
    from .video_processing_tarsier import (
        FrameSampling, Tarsier2Sampling, VideoReadError, as_frame_sampling, call_sampling, is_frame_list, load_video,
    )
except ImportError:  # installed as top-level modules of this repo
    from video_processing_tarsier import (
        FrameSampling, Tarsier2Sampling, VideoReadError, as_frame_sampling, call_sampling, is_frame_list, load_video,
    )


# The release's inference settings (configs/tarser2_default_config.yaml and dataset/tarsier_processor.py).
RELEASE_FRAME_PRE_RESIZE_MAX_PIXELS = 460800  # max_pixels: 1280 * 720 // 2
RELEASE_MAX_PIXELS_PER_SAMPLE = 128 * 384 * 384  # TarsierProcessor.max_pixels_per_sample


class Tarsier2VideosKwargs(VideosKwargs, total=False):
    """Video options of `Tarsier2VideoProcessor` (each defaults to the processor's attribute of the same name).

    frame_sampling: the `FrameSampling` policy (or its dict form / name); `num_frames` keeps the policy with another
        count, `fps` switches to `FpsSampling`; `do_sample_frames=False` takes every frame given.
    duplicate_frames: give every frame twice (the release), so each temporal patch holds one frame.
    min_pixels / max_pixels: Qwen2-VL's pixel bounds of a resized frame.
    frame_pre_resize_max_pixels / frame_pre_resize_min_pixels: the release's first resize (`None`: none).
    max_pixels_per_sample: the release's pixel budget of one sample, split over its frames (`None`: none).
    sample_ids: the sample of each video (videos of one sample share `max_pixels_per_sample`); default: one each.
    """

    frame_sampling: FrameSampling | dict | str | None
    duplicate_frames: bool
    min_pixels: int
    max_pixels: int
    patch_size: int
    temporal_patch_size: int
    merge_size: int
    frame_pre_resize_max_pixels: int | None
    frame_pre_resize_min_pixels: int
    max_pixels_per_sample: int | None
    sample_ids: list[int] | None
    rng: Any


# The saved form (see `Tarsier2VideoProcessor.to_dict`): transformers' Qwen2-VL video processor config, whose class
# plain Qwen2-VL loads, with the options only Tarsier2 has in one block under this key (an attribute to Qwen2-VL).
TARSIER2_OPTIONS_KEY = "tarsier2"
TARSIER2_ONLY_OPTIONS = ("do_sample_frames", "duplicate_frames", "frame_pre_resize_max_pixels",
                         "frame_pre_resize_min_pixels", "max_pixels_per_sample")
QWEN2VL_PROCESSOR = "Qwen2VLProcessor"
QWEN2VL_VIDEO_PROCESSOR = "Qwen2VLVideoProcessor"
# Keys of a Qwen2-VL (or image) processor config that set Qwen2-VL's own frame sampling and budget: Tarsier2's
# sampling (`frame_sampling`, `do_sample_frames` of the block) replaces them, so they are not read from such a config.
QWEN2VL_SAMPLING_KEYS = ("do_sample_frames", "num_frames", "fps", "min_frames", "max_frames", "cap_pixels_per_frame",
                         "max_video_tokens")


def _size_to_bounds(kwargs: dict) -> None:
    """transformers' spelling of the pixel bounds, `size` (`{shortest_edge, longest_edge}`, or 4.47's `{min_pixels,
    max_pixels}`), popped from `kwargs` into its `min_pixels` / `max_pixels` where those are not given."""
    size = kwargs.pop("size", None)
    if size:
        kwargs.setdefault("min_pixels", size.get("shortest_edge", size.get("min_pixels")))
        kwargs.setdefault("max_pixels", size.get("longest_edge", size.get("max_pixels")))


class Tarsier2VideoProcessor(VideoProcessorMixin):
    r"""Videos -> Qwen2-VL `pixel_values_videos` and `video_grid_thw`, with Tarsier2's frame sampling and resizing.

    `__call__(videos, **kwargs)` returns a `BatchFeature` with

    - `pixel_values_videos` `(sum_i t_i * h_i * w_i, 3 * temporal_patch_size * patch_size**2)` float32;
    - `video_grid_thw` `(n_videos, 3)` int64: temporal patches, patch rows, patch columns of each video;
    - `video_metadata` (with `return_metadata=True`): one `VideoMetadata` per video, `frames_indices` the sampled
      frame indices (before any duplication).

    Each video: sample frames (`frame_sampling`), resize every frame with PIL bicubic first to at most
    `frame_pre_resize_max_pixels` (factor 1), then to Qwen2-VL's size (factor `patch_size * merge_size`, within
    `[min_pixels, max_pixels]`), rescale and normalise, give every frame `temporal_patch_size` times when
    `duplicate_frames` (the release gives each frame twice: `[f0, f0, f1, f1, ...]`; one frame alone is always tiled
    so), else pad an incomplete last temporal patch with the last
    frame (transformers' `Qwen2VLVideoProcessor`; the release's 4.47 processor failed there), and patchify.

    Args:
        frame_sampling: default `Tarsier2Sampling(16)`, the release's `v1` sampler.
        duplicate_frames: the release's `use_multi_images_for_video` (True there); False is plain Qwen2-VL.
        frame_pre_resize_max_pixels: the release's 460800; None switches the first resize off (plain Qwen2-VL).
        frame_pre_resize_min_pixels: the release's 0.
        max_pixels_per_sample: the release's `128 * 384 * 384`: the first resize's cap is lowered to this divided
            by the frames of the sample (duplicates counted) when that is smaller. Only with the first resize.
        min_pixels, max_pixels, patch_size, temporal_patch_size, merge_size, image_mean, image_std, rescale_factor,
            resample: as in transformers' Qwen2-VL processors (the checkpoint's `preprocessor_config.json`).
    """

    resample = PILImageResampling.BICUBIC
    image_mean = OPENAI_CLIP_MEAN
    image_std = OPENAI_CLIP_STD
    rescale_factor = 1 / 255
    do_resize = True
    do_rescale = True
    do_normalize = True
    do_sample_frames = True
    patch_size = 14
    temporal_patch_size = 2
    merge_size = 2
    min_pixels = 56 * 56
    max_pixels = 28 * 28 * 1280
    duplicate_frames = True
    frame_pre_resize_max_pixels = RELEASE_FRAME_PRE_RESIZE_MAX_PIXELS
    frame_pre_resize_min_pixels = 0
    max_pixels_per_sample = RELEASE_MAX_PIXELS_PER_SAMPLE
    valid_kwargs = Tarsier2VideosKwargs
    model_input_names = ["pixel_values_videos", "video_grid_thw"]

    def __init__(self, frame_sampling: FrameSampling | dict | str | None = None, **kwargs):
        own = dict(kwargs.pop(TARSIER2_OPTIONS_KEY, None) or {})  # the saved form's Tarsier2-only block
        saved_types = (kwargs.pop("video_processor_type", None), kwargs.pop("image_processor_type", None))
        saved_type = saved_types[0] or saved_types[1]
        if saved_type is not None and saved_type != type(self).__name__:
            for key in QWEN2VL_SAMPLING_KEYS:  # a Qwen2-VL config's sampling is not Tarsier2's
                kwargs.pop(key, None)
        for key in ("return_metadata", "do_convert_rgb", "processor_class"):  # call options / always RGB here
            kwargs.pop(key, None)
        frame_sampling = own.pop("frame_sampling", frame_sampling)
        kwargs.update(own)
        _size_to_bounds(kwargs)
        kwargs = {k: v for k, v in kwargs.items() if not (k in ("min_pixels", "max_pixels") and v is None)}
        super().__init__(**kwargs)
        self.frame_sampling = Tarsier2Sampling() if frame_sampling is None else as_frame_sampling(frame_sampling)
        for name in ("patch_size", "temporal_patch_size", "merge_size", "min_pixels", "max_pixels"):
            setattr(self, name, int(getattr(self, name)))
        self.resample = int(self.resample)
        self.image_mean, self.image_std = list(self.image_mean), list(self.image_std)
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels {self.min_pixels} > max_pixels {self.max_pixels}")

    @property
    def size(self) -> dict[str, int]:
        return {"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels}

    def to_dict(self) -> dict[str, Any]:
        """The saved form: transformers' `Qwen2VLVideoProcessor` config with this processor's pixel settings (what a
        plain Qwen2-VL loader builds: frames taken as given, `do_sample_frames` false, no total pixel cap, no frame
        duplication) and, under `TARSIER2_OPTIONS_KEY`, the options only Tarsier2 has (its sampling, duplication and
        first resize), which `__init__` reads back. No `auto_map`: a plain loader must not be sent to remote code."""
        return {
            "video_processor_type": QWEN2VL_VIDEO_PROCESSOR,
            "do_convert_rgb": True, "do_resize": True, "do_rescale": True, "do_normalize": True,
            "do_sample_frames": False, "cap_pixels_per_frame": False,
            "size": self.size, "patch_size": self.patch_size, "temporal_patch_size": self.temporal_patch_size,
            "merge_size": self.merge_size, "resample": self.resample, "rescale_factor": self.rescale_factor,
            "image_mean": list(self.image_mean), "image_std": list(self.image_std),
            TARSIER2_OPTIONS_KEY: {"frame_sampling": self.frame_sampling.to_dict(),
                                   **{name: getattr(self, name) for name in TARSIER2_ONLY_OPTIONS}},
        }

    # -- sampling and decoding ----------------------------------------------------------------------------------

    def _sampling(self, frame_sampling=None, num_frames=None, fps=None) -> FrameSampling:
        return call_sampling(self.frame_sampling, frame_sampling, num_frames, fps)

    def _options(self, kwargs: dict, *names: str) -> dict[str, Any]:
        """Each of `names` as this call's `kwargs` give it, else (absent or None) the processor's attribute."""
        return {name: getattr(self, name) if kwargs.get(name) is None else kwargs[name] for name in names}

    # -- pixels -------------------------------------------------------------------------------------------------

    def frame_sizes(self, height: int, width: int, num_images: int = 0, **kwargs) -> tuple[tuple[int, int], tuple[int, int]]:
        """`((h1, w1), (h2, w2))`: the size after the release's first resize and after Qwen2-VL's resize of a
        `height x width` frame in a sample of `num_images` images (duplicates counted; the pixel budget)."""
        options = self._options(kwargs, "frame_pre_resize_max_pixels", "frame_pre_resize_min_pixels",
                                "max_pixels_per_sample", "min_pixels", "max_pixels", "patch_size", "merge_size")
        for key in ("frame_pre_resize_max_pixels", "max_pixels_per_sample"):  # None may be asked for explicitly
            if key in kwargs and kwargs[key] is None:
                options[key] = None
        if min(height, width) < 1:
            raise ValueError(f"frame of {height}x{width} pixels has no area")
        pre_max, pre_min = options["frame_pre_resize_max_pixels"], options["frame_pre_resize_min_pixels"]
        h1, w1 = height, width
        if pre_max:  # the release resizes only when its max_pixels is set
            budget = options["max_pixels_per_sample"]
            if budget and num_images > 0 and budget // num_images < pre_max:
                pre_max = budget // num_images
                pre_min = min(pre_min, pre_max)
            h1, w1 = smart_resize(height, width, 1, pre_min, pre_max)
        h2, w2 = smart_resize(h1, w1, options["patch_size"] * options["merge_size"], options["min_pixels"],
                              options["max_pixels"])
        return (h1, w1), (h2, w2)

    def _frame_patches(self, frame: np.ndarray, sizes, resample, rescale_factor, image_mean, image_std,
                       patch_size: int, merge_size: int) -> np.ndarray:
        """One `(H, W, 3)` uint8 frame -> `(h / m, w / m, m, m, 3, p, p)` float32 patches of the resized frame."""
        (h1, w1), (h2, w2) = sizes
        image = Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8))
        if image.size != (w1, h1):
            image = image.resize((w1, h1), resample=Image.Resampling.BICUBIC)  # the release's PIL default filter
        if image.size != (w2, h2):
            image = image.resize((w2, h2), resample=PILImageResampling(resample))
        pixels = (np.asarray(image).astype(np.float64) * rescale_factor).astype(np.float32)
        pixels = (pixels - np.asarray(image_mean, dtype=np.float32)) / np.asarray(image_std, dtype=np.float32)
        grid_h, grid_w = h2 // patch_size, w2 // patch_size
        pixels = pixels.reshape(grid_h // merge_size, merge_size, patch_size, grid_w // merge_size, merge_size,
                                patch_size, 3)
        return pixels.transpose(0, 3, 1, 4, 6, 2, 5)

    def video_patches(self, frames: np.ndarray, num_images: int | None = None, **kwargs) -> tuple[np.ndarray, tuple]:
        """`(n, H, W, 3)` uint8 frames of one video -> (`(t * h * w, 3 * tp * p * p)` float32, `(t, h, w)`).

        `num_images` is the count of images in the video's sample for `max_pixels_per_sample` (default: this
        video's frames, duplicates counted); `kwargs` override the processor's attributes for this call.
        """
        opt = self._options(kwargs, "duplicate_frames", "patch_size", "temporal_patch_size", "merge_size", "resample",
                            "rescale_factor", "image_mean", "image_std")
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
            raise ValueError(f"a video is (n, H, W, 3) uint8 frames with n >= 1, got {frames.dtype} {frames.shape}")
        tp, p, m = opt["temporal_patch_size"], opt["patch_size"], opt["merge_size"]
        # the frame sequence the model sees, as indices into `frames`
        order = np.repeat(np.arange(len(frames)), tp if opt["duplicate_frames"] else 1)
        if len(order) % tp:
            order = np.concatenate([order, np.full(tp - len(order) % tp, order[-1])])
        if num_images is None:
            num_images = len(frames) * (tp if opt["duplicate_frames"] else 1)
        sizes = self.frame_sizes(frames.shape[1], frames.shape[2], num_images, **kwargs)
        (_, _), (h2, w2) = sizes
        grid_t, grid_h, grid_w = len(order) // tp, h2 // p, w2 // p
        out = np.empty((grid_t, grid_h // m, grid_w // m, m, m, 3, tp, p, p), dtype=np.float32)
        done: dict[int, np.ndarray] = {}
        for position, index in enumerate(order.tolist()):
            if index not in done:
                done = {index: self._frame_patches(frames[index], sizes, opt["resample"], opt["rescale_factor"],
                                                   opt["image_mean"], opt["image_std"], p, m)}
            out[position // tp, :, :, :, :, :, position % tp] = done[index]
        return out.reshape(grid_t * grid_h * grid_w, 3 * tp * p * p), (grid_t, grid_h, grid_w)

    # -- entry point --------------------------------------------------------------------------------------------

    def preprocess(self, videos, **kwargs: Unpack[Tarsier2VideosKwargs]) -> BatchFeature:
        """Sample, decode and patchify videos (see the class docstring).

        Args:
            videos: one video or a list (nested lists, e.g. one per sample, are flattened in order). A video is a
                file path or URL (`video_processing_tarsier.load_video`: mp4/mkv/webm/..., frame folders, `file://`,
                `data:`), a `(T, H, W, 3)` uint8 array or tensor, or a list of `(H, W, 3)` frames / PIL images / image
                files.
            **kwargs: `Tarsier2VideosKwargs`; `return_tensors` ("pt", "np") and `return_metadata` as in transformers.
        """
        unknown = sorted(set(kwargs) - set(Tarsier2VideosKwargs.__annotations__))
        if unknown:
            raise TypeError(f"Tarsier2VideoProcessor got unknown options {unknown}")
        for name in ("do_resize", "do_rescale", "do_normalize", "do_center_crop", "do_pad", "crop_size"):
            value = kwargs.pop(name, None)
            if value is not None and value != getattr(self, name, None):
                raise ValueError(f"Tarsier2VideoProcessor does not take {name}={value!r} (Qwen2-VL always resizes, "
                                 "rescales and normalises)")
        for name in ("do_convert_rgb", "default_to_square", "data_format", "input_data_format", "device",
                     "video_metadata"):
            kwargs.pop(name, None)
        _size_to_bounds(kwargs)
        return_tensors = kwargs.pop("return_tensors", None)
        return_metadata = kwargs.pop("return_metadata", False)
        do_sample_frames = kwargs.pop("do_sample_frames", None)
        do_sample_frames = self.do_sample_frames if do_sample_frames is None else do_sample_frames
        sampling = self._sampling(kwargs.pop("frame_sampling", None), kwargs.pop("num_frames", None),
                                  kwargs.pop("fps", None))
        rng = kwargs.pop("rng", None)
        if rng is not None and not isinstance(rng, np.random.Generator):
            rng = np.random.default_rng(rng)
        sample_ids = kwargs.pop("sample_ids", None)

        videos = flatten_videos(videos)
        if sample_ids is None:
            sample_ids = list(range(len(videos)))
        if len(sample_ids) != len(videos):
            raise ValueError(f"sample_ids has {len(sample_ids)} entries for {len(videos)} videos")
        policy = sampling if do_sample_frames else _EveryFrame()
        samples = [load_video(video, policy, rng=rng) for video in videos]

        duplicate, tp, patch = self._options(kwargs, "duplicate_frames", "temporal_patch_size", "patch_size").values()
        images_in_sample: dict[int, int] = {}
        for sample_id, sample in zip(sample_ids, samples):
            images_in_sample[sample_id] = images_in_sample.get(sample_id, 0) + len(sample.frames) * (
                tp if duplicate else 1)

        pixel_values, grids = [], []
        for sample_id, sample in zip(sample_ids, samples):
            try:
                patches, grid = self.video_patches(sample.frames, images_in_sample[sample_id], **kwargs)
            except ValueError as error:
                raise ValueError(f"{sample.source}: {error}") from None
            pixel_values.append(patches)
            grids.append(grid)
        width = 3 * tp * patch**2
        data = {
            "pixel_values_videos": np.concatenate(pixel_values) if pixel_values else np.zeros((0, width), np.float32),
            "video_grid_thw": np.array(grids, dtype=np.int64).reshape(-1, 3),
        }
        if return_metadata:
            data["video_metadata"] = [sample.video_metadata() for sample in samples]
        return BatchFeature(data, tensor_type=return_tensors, skip_tensor_conversion=["video_metadata"])

    def get_num_of_video_patches(self, num_frames: int, height: int, width: int, videos_kwargs=None) -> int:
        """Patches (`t * h * w`) of a video of `num_frames` sampled `height x width` frames, before merging."""
        videos_kwargs = videos_kwargs or {}
        options = self._options(videos_kwargs, "duplicate_frames", "temporal_patch_size", "patch_size")
        duplicate, tp, p = options.values()
        images = num_frames * (tp if duplicate else 1)
        (_, _), (h2, w2) = self.frame_sizes(height, width, images, **videos_kwargs)
        return -(-images // tp) * (h2 // p) * (w2 // p)


class _EveryFrame(FrameSampling):
    """Every frame once (`do_sample_frames=False`); not a registered policy: it is never saved."""

    def indices(self, timestamps, complex_clip=False, rng=None):
        return np.arange(timestamps if isinstance(timestamps, (int, np.integer)) else len(timestamps))

    def max_frames_per_video(self, complex_clip=False):
        return None


def flatten_videos(videos) -> list:
    """Videos in order from one video, a list of videos, or nested lists of them (one list per sample)."""
    if videos is None:
        return []
    if isinstance(videos, (str, os.PathLike, Image.Image)):
        return [videos]
    if hasattr(videos, "shape"):  # numpy array or torch tensor
        if len(videos.shape) == 5:
            return list(videos)
        return [videos]
    if isinstance(videos, (list, tuple)):
        if is_frame_list(videos):
            return [list(videos)]
        out = []
        for item in videos:
            out.extend(flatten_videos(item))
        return out
    raise VideoReadError(f"unsupported video input of type {type(videos).__name__}")


class Tarsier2ProcessorKwargs(ProcessingKwargs, total=False):
    videos_kwargs: Tarsier2VideosKwargs


class Tarsier2Processor(ProcessorMixin):
    r"""Qwen2-VL processor for Tarsier2: tokenizer + Qwen2-VL image processor + `Tarsier2VideoProcessor`.

    `__call__(images=None, text=None, videos=None, **kwargs)` and `apply_chat_template(...)` return

    - `input_ids` `(B, L)`, `attention_mask` `(B, L)`: every `<|video_pad|>` expanded into
      `t * h * w // merge_size**2` tokens (every `<|image_pad|>` likewise from `image_grid_thw`);
    - `mm_token_type_ids` `(B, L)`: 0 text, 1 image, 2 video (transformers 5's `Qwen2VLModel` needs it);
    - `pixel_values_videos` `(sum t*h*w, 3 * temporal_patch_size * patch_size**2)`, `video_grid_thw` `(V, 3)`;
    - `pixel_values`, `image_grid_thw` for images (transformers' Qwen2-VL image processor, unchanged);
    - `video_metadata` (one `VideoMetadata` per video, `frames_indices` = sampled frame indices) with
      `return_metadata=True`; `assistant_masks` with `apply_chat_template(..., return_assistant_tokens_mask=True)`.

    Videos of one sample share the release's pixel budget (`max_pixels_per_sample`). Still images get transformers'
    Qwen2-VL processing only: the release also pre-resizes them to at most 460800 pixels and counts each towards the
    budget as its processor's `temporal_patch_size` images; neither is reproduced here.
    """

    valid_processor_kwargs = Tarsier2ProcessorKwargs
    text_kwargs = {"padding": True}  # a batch of conversations pads to its longest (the tokenizer's padding side)
    return_mm_token_type_ids = True
    skip_tensor_conversion = ["video_metadata", "text_replacement_offsets"]

    def __init__(self, image_processor=None, tokenizer=None, video_processor=None, chat_template=None, **kwargs):
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        missing = [t for t in (self.image_token, self.video_token) if t not in tokenizer.get_vocab()]
        if missing:
            raise ValueError(f"the tokenizer lacks Qwen2-VL's tokens {missing}")
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        super().__init__(image_processor, tokenizer, video_processor, chat_template=chat_template)

    def check_argument_for_proper_class(self, argument_name, argument):
        """transformers resolves the video processor's base class (`VideoProcessorMixin`) through its top-level
        namespace, which exports it only when torchvision is installed; check against the class itself instead."""
        if argument_name == "video_processor":
            if not isinstance(argument, VideoProcessorMixin):
                raise TypeError(f"Received a {type(argument).__name__} for argument video_processor, but a "
                                "VideoProcessorMixin was expected.")
            return VideoProcessorMixin
        return super().check_argument_for_proper_class(argument_name, argument)

    @classmethod
    def _get_arguments_from_pretrained(cls, pretrained_model_name_or_path, processor_dict=None, **kwargs):
        """Load the sub-processors with this module's classes: the saved video config names transformers'
        torchvision `Qwen2VLVideoProcessor` (the plain Qwen2-VL reading), which the Auto classes would build."""
        from transformers import AutoTokenizer
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        kwargs = {k: v for k, v in kwargs.items() if k not in ("trust_remote_code", "processor_dict")}
        return [
            Qwen2VLImageProcessorPil.from_pretrained(pretrained_model_name_or_path, **kwargs),
            AutoTokenizer.from_pretrained(pretrained_model_name_or_path, **kwargs),
            Tarsier2VideoProcessor.from_pretrained(pretrained_model_name_or_path, **kwargs),
        ]

    def __call__(self, images=None, text=None, videos=None, audio=None, **kwargs: Unpack[Tarsier2ProcessorKwargs]):
        unknown = sorted(set(kwargs) - self._valid_options())
        if unknown:  # the mixin would only warn and go on without them
            raise TypeError(f"Tarsier2Processor got unknown options {unknown}")
        given = "sample_ids" in kwargs or "sample_ids" in (kwargs.get("videos_kwargs") or {})
        if videos is not None and text is not None and not given:
            texts = [text] if isinstance(text, str) else text
            kwargs["sample_ids"] = [i for i, t in enumerate(texts) for _ in range(t.count(self.video_token))]
        return super().__call__(images=images, text=text, videos=videos, audio=audio, **kwargs)

    def _valid_options(self) -> set[str]:
        """Every option name `__call__` takes: the typed kwargs of each modality, the flat ones, the sub-processors'."""
        annotations = Tarsier2ProcessorKwargs.__annotations__
        valid = set(annotations)
        for modality in ("text_kwargs", "images_kwargs", "videos_kwargs", "audio_kwargs"):
            valid |= set(annotations[modality].__annotations__)
        for part in (self.image_processor, self.video_processor):
            valid |= set(getattr(getattr(part, "valid_kwargs", None), "__annotations__", {}))
        return valid

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        merge_length = self.image_processor.merge_size**2
        return self.image_token * int(image_inputs["image_grid_thw"][image_idx].prod() // merge_length)

    def replace_video_token(self, video_inputs: dict, video_idx: int, **kwargs) -> str:
        merge_length = self.video_processor.merge_size**2
        return self.video_token * int(video_inputs["video_grid_thw"][video_idx].prod() // merge_length)

    def to_dict(self) -> dict[str, Any]:
        """`processor_config.json`: a plain Qwen2-VL processor config (`processor_class` Qwen2VLProcessor, transformers'
        Qwen2-VL image and video processor configs nested, neither with an `auto_map`) whose one top-level `auto_map`
        names this class for `AutoProcessor` with `trust_remote_code=True`; see `save_pretrained`."""
        output = super().to_dict()
        output["processor_class"] = QWEN2VL_PROCESSOR
        output["auto_map"] = {"AutoProcessor": f"{type(self).__module__.split('.')[-1]}.{type(self).__name__}"}
        for name in ("image_processor", "video_processor"):
            if isinstance(output.get(name), dict):
                output[name].pop("auto_map", None)
        return output

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        """Write a folder that is plain Qwen2-VL to transformers and Tarsier2 with remote code.

        Files: the tokenizer's (`tokenizer_config.json` with `processor_class` Qwen2VLProcessor, no `auto_map`),
        `chat_template.jinja`, `processor_config.json` (`to_dict`), and this module with `video_processing_tarsier.py`
        (the remote code). transformers' own saving of a registered class would put an `auto_map` into every nested
        sub-processor config and into `tokenizer_config.json` and name this class as `processor_class`; a plain
        loader without `trust_remote_code` then refuses (module docstring). Here only the top level names the remote
        class: `AutoProcessor` takes it with `trust_remote_code=True`, and otherwise the local `processor_class`.
        """
        from transformers.dynamic_module_utils import custom_object_save

        if push_to_hub:
            raise NotImplementedError("Tarsier2Processor.save_pretrained writes a local folder: upload it with "
                                      "processor.push_to_hub(repo_id) or tarsier-publish")
        self._auto_class = None  # transformers' saving then marks no sub-processor and copies no code
        try:
            files = super().save_pretrained(save_directory, **kwargs)
        finally:
            del self._auto_class
        custom_object_save(self, save_directory)  # this module and the modules it imports relatively
        path = os.path.join(save_directory, "tokenizer_config.json")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as handle:
                tokenizer_config = json.load(handle)
            tokenizer_config.pop("auto_map", None)
            tokenizer_config["processor_class"] = QWEN2VL_PROCESSOR
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(json.dumps(tokenizer_config, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
        return files

    def _process_videos(self, videos, **kwargs):
        processed = self.video_processor(videos, **kwargs)
        count = len(processed["video_grid_thw"])
        return processed, [self.replace_video_token(processed, i) for i in range(count)]

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values", "image_grid_thw", "pixel_values_videos",
                "video_grid_thw", "mm_token_type_ids"]


def build_tarsier2_processor(
    tokenizer,
    chat_template: str | None,
    *,
    min_pixels: int,
    max_pixels: int,
    frame_pre_resize_max_pixels: int | None = RELEASE_FRAME_PRE_RESIZE_MAX_PIXELS,
    duplicate_frames: bool = True,
    frame_sampling: FrameSampling | dict | str | None = None,
    max_pixels_per_sample: int | None = RELEASE_MAX_PIXELS_PER_SAMPLE,
) -> Tarsier2Processor:
    """The processor of a converted Tarsier2 folder; `save_pretrained(folder)` writes it with its remote code.

    Args:
        tokenizer: the checkpoint's Qwen2 tokenizer (holds `<|video_pad|>`, `<|image_pad|>`).
        chat_template: the checkpoint's chat template (None: the tokenizer's).
        min_pixels, max_pixels: the checkpoint's `preprocessor_config.json` bounds (Qwen2-VL's resize).
        frame_pre_resize_max_pixels: the release's first resize of every frame (460800; None: off).
        duplicate_frames: every frame twice (the release: True).
        frame_sampling: default `Tarsier2Sampling(16)`.
        max_pixels_per_sample: the release's per-sample budget (`128 * 384 * 384`; None: off).
    """
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    image_processor = Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels)
    video_processor = Tarsier2VideoProcessor(
        frame_sampling=frame_sampling, min_pixels=min_pixels, max_pixels=max_pixels,
        frame_pre_resize_max_pixels=frame_pre_resize_max_pixels, duplicate_frames=duplicate_frames,
        max_pixels_per_sample=max_pixels_per_sample,
    )
    if chat_template is None:
        chat_template = getattr(tokenizer, "chat_template", None)
    return Tarsier2Processor(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
                             chat_template=chat_template)


__all__ = ["Tarsier2Processor", "Tarsier2ProcessorKwargs", "Tarsier2VideoProcessor", "Tarsier2VideosKwargs",
           "build_tarsier2_processor", "flatten_videos", "smart_resize"]
