"""Tarsier2's video processor without torchvision: videos -> Qwen2-VL `pixel_values_videos`, `video_grid_thw`.

`Tarsier2VideoProcessor` (a `VideoProcessorMixin`, the light base class of transformers' video processors that does
not need torchvision) samples, decodes and patchifies videos the way Qwen2-VL expects, with the release's two
additions (bytedance/tarsier branch `tarsier2`): every frame resized first to at most `frame_pre_resize_max_pixels`
(`TarsierProcessor.resize2pixels`), and every frame given twice (`use_multi_images_for_video`), so one temporal
patch of 2 holds one frame: 16 frames give `grid_t = 16`. `processing_tarsier2.Tarsier2Processor` pairs it with the
tokenizer and expands `<|video_pad|>`; this module travels with a converted folder beside it (imported relatively),
and itself imports `frame_sampling_tarsier.py` (the `FrameSampling` policies) and `media_loading_tarsier.py` (the PyAV
loader).

Pixel arithmetic, as transformers' slow `Qwen2VLImageProcessor` (4.47, the release's) and its PIL twin (5.23) do it:
PIL bicubic resize of uint8 RGB, `float32(float64(x) * rescale_factor)`, `(x - mean) / std` in float32, patches
ordered `(t, h / m, w / m, m, m, channel, temporal, patch, patch)`.

Why a `VideoProcessorMixin` and not a `BaseVideoProcessor`: `ProcessorMixin` accepts any `VideoProcessorMixin` as
`video_processor`; `BaseVideoProcessor` adds the torchvision backend.
"""

import os
from typing import Any

import numpy as np
from PIL import Image

from transformers.feature_extraction_utils import BatchFeature
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling
# Qwen2-VL's target size (sides multiples of `factor`, pixels within bounds, aspect kept), the arithmetic of the
# release's transformers 4.47; `factor=1` is the release's frame pre-resize. The PIL module needs no torchvision.
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize
from transformers.processing_utils import Unpack, VideosKwargs
from transformers.video_processing_utils import VideoProcessorMixin

try:  # copied next to a checkpoint by transformers (remote code)
    from .frame_sampling_tarsier import FrameSampling, Tarsier2Sampling, as_frame_sampling, call_sampling
    from .media_limits_tarsier import VideoReadError
    from .media_loading_tarsier import is_frame_list, load_video
except ImportError:  # installed as top-level modules of this repo
    from frame_sampling_tarsier import FrameSampling, Tarsier2Sampling, as_frame_sampling, call_sampling
    from media_limits_tarsier import VideoReadError
    from media_loading_tarsier import is_frame_list, load_video


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
                file path or URL (`media_loading_tarsier.load_video`: mp4/mkv/webm/..., frame folders, `file://`,
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



__all__ = ["Tarsier2VideoProcessor", "Tarsier2VideosKwargs", "flatten_videos"]
