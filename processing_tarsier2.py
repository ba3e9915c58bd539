"""Tarsier2 (Qwen2-VL underneath) processor without torchvision: text + videos -> `input_ids` and video tensors.

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
- this file and the modules it imports relatively, recursively: `video_processing_tarsier2.py` (the video
  processor), `frame_sampling_tarsier.py` (the `FrameSampling` policies), `media_loading_tarsier.py` and what it
  imports (the PyAV reader).

transformers 5.23 then resolves: `AutoProcessor.from_pretrained(folder)` -> its own `Qwen2VLProcessor` (a local
`processor_class` wins without `trust_remote_code`; its video processor needs torchvision);
`AutoProcessor.from_pretrained(folder, trust_remote_code=True)` -> this file's `Tarsier2Processor` (a top-level
`auto_map` wins over a class of transformers' own when remote code is allowed); `Tarsier2Processor.from_pretrained`
-> this class without remote code (`tarsier_hf.families.load_processor`).

Matching the release with plain Qwen2-VL (measured with benchmarks/compare_qwen2vl_processor.py): give the 16
frames of the release's v1 rule (`Tarsier2Sampling`), each resized first with PIL bicubic to at most 460,800 pixels
(`Tarsier2VideoProcessor.frame_sizes(...)[0]`), each twice (`[f0, f0, f1, f1, ...]`), with
`do_sample_frames=False`: the same grid and `input_ids`, pixels within 0.03 (bicubic rounding of torchvision
against PIL).

- `Tarsier2Processor`: tokenizer + Qwen2-VL image processor (PIL backend) + `Tarsier2VideoProcessor`
  (`video_processing_tarsier2`: sampling, the release's two resizes, frame duplication, patches); expands every
  `<|video_pad|>` into `t * h * w / merge_size**2` tokens through `ProcessorMixin.replace_video_token`.
- `build_tarsier2_processor(...)`: the processor a converted folder saves.

transformers exports `VideoProcessorMixin` (the video processor's base class) at its top level only when
torchvision is installed, so `Tarsier2Processor` checks its video processor against the class itself, and loads its
sub-processors with its own classes (`_get_arguments_from_pretrained`).
"""

import json
import os
from typing import Any

from transformers.processing_utils import ProcessingKwargs, ProcessorMixin, Unpack
from transformers.video_processing_utils import VideoProcessorMixin

try:  # copied next to a checkpoint by transformers (remote code)
    from .frame_sampling_tarsier import FrameSampling
    from .video_processing_tarsier2 import (
        RELEASE_FRAME_PRE_RESIZE_MAX_PIXELS, RELEASE_MAX_PIXELS_PER_SAMPLE, Tarsier2VideoProcessor, Tarsier2VideosKwargs,
    )
except ImportError:  # installed as top-level modules of this repo
    from frame_sampling_tarsier import FrameSampling
    from video_processing_tarsier2 import (
        RELEASE_FRAME_PRE_RESIZE_MAX_PIXELS, RELEASE_MAX_PIXELS_PER_SAMPLE, Tarsier2VideoProcessor, Tarsier2VideosKwargs,
    )


QWEN2VL_PROCESSOR = "Qwen2VLProcessor"


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
        `chat_template.jinja`, `processor_config.json` (`to_dict`), and this module with the modules it imports
        relatively, recursively (the remote code: `video_processing_tarsier2.py` and the modules it imports).
        transformers' own saving of a registered class would put an `auto_map` into every nested sub-processor
        config and into `tokenizer_config.json` and name this class as `processor_class`; a plain loader without
        `trust_remote_code` then refuses (module docstring). Here only the top level names the remote
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




__all__ = ["Tarsier2Processor", "Tarsier2ProcessorKwargs", "build_tarsier2_processor"]
