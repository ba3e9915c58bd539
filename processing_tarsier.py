"""Tarsier processor: conversations with videos and images -> `input_ids`, assistant masks and `pixel_values`.

This file is remote code: it is copied next to every checkpoint, with the files it imports relatively
(`frame_sampling_tarsier.py`: the frame-sampling policies; `media_loading_tarsier.py`: media loaders, with
`video_reader_tarsier.py` and `media_limits_tarsier.py` under them: PyAV reading, safe opening and limits;
`video_processing_tarsier.py`: frame preprocessing; `configuration_tarsier.py`: the per-frame token layout), and
loaded with `AutoProcessor.from_pretrained(folder, trust_remote_code=True)`.

It is the one place where (conversation, frames) become model inputs: training (the video collator), inference,
the reference loss and the tiny-recipe sweep all call `apply_chat_template` / `__call__` here. Every `<video>` and
`<image>` placeholder is expanded as text into its frames' runs (`replace_video_token` / `replace_image_token`,
the hooks of transformers' `ProcessorMixin`), so `apply_chat_template(..., return_assistant_tokens_mask=True)`
gives assistant masks that stay right after the expansion.

Token layout (the contract with the model, `configuration_tarsier.frame_layout`): every frame becomes
`([<image>] * cols + [<image_newline>]) * rows + [<frame_end>]` with `use_frame_separators=True`, or
`[<image>] * (rows * cols + num_additional_image_tokens)` otherwise, where
`rows = cols = image_size // patch_size // vision_feature_pooling`.
"""

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessingKwargs, ProcessorMixin, Unpack, VideosKwargs

try:  # copied next to a checkpoint by transformers (remote code)
    from .configuration_tarsier import frame_layout
    from .frame_sampling_tarsier import FrameSampling, UniformSampling, as_frame_sampling, call_sampling
    from .media_loading_tarsier import is_frame_list, load_image, load_video
    from .video_processing_tarsier import (
        RESIZE_MODES, build_image_processor, image_size_of, preprocess_frames, resize_frames, set_image_size,
    )
except ImportError:  # installed as top-level modules of this repo
    from configuration_tarsier import frame_layout
    from frame_sampling_tarsier import FrameSampling, UniformSampling, as_frame_sampling, call_sampling
    from media_loading_tarsier import is_frame_list, load_image, load_video
    from video_processing_tarsier import (
        RESIZE_MODES, build_image_processor, image_size_of, preprocess_frames, resize_frames, set_image_size,
    )


IMAGE_TOKEN = "<image>"
VIDEO_TOKEN = "<video>"
IMAGE_NEWLINE_TOKEN = "<image_newline>"
FRAME_END_TOKEN = "<frame_end>"
SPECIAL_TOKENS = (IMAGE_TOKEN, VIDEO_TOKEN, IMAGE_NEWLINE_TOKEN, FRAME_END_TOKEN)

# Named chat templates for the LLM families of the released checkpoints (`from_parts(chat_template=name)`); a saved
# processor carries its own as `chat_template.jinja`. The files live in the installed package beside this module
# (editable or not); in transformers' module cache they are absent and only the saved template is used.
CHAT_TEMPLATE_DIR = Path(__file__).resolve().parent / "tarsier_hf" / "chat_templates"
CHAT_TEMPLATES = {p.stem: p.read_text(encoding="utf-8") for p in sorted(CHAT_TEMPLATE_DIR.glob("*.jinja"))}
# processor_config.json keys of processors saved before `frame_sampling` (read into one FrameSampling on loading)
_LEGACY_SAMPLING_KEYS = ("sampling", "num_frames", "video_fps", "max_frames")


class TarsierVideosKwargs(VideosKwargs, total=False):
    """Video options of one call. `frame_sampling` replaces the processor's default policy for this call;
    `num_frames` / `fps` (transformers' names) adjust it: `num_frames` keeps the policy with another count,
    `fps` switches to `FpsSampling`. `complex_clip` marks the clips as complex (the `instruction` policy's 16
    frames); `rng` (a numpy Generator or seed) drives randomised policies."""

    frame_sampling: FrameSampling | dict | str | None
    complex_clip: bool
    rng: np.random.Generator | int | None


class TarsierProcessorKwargs(ProcessingKwargs, total=False):
    videos_kwargs: TarsierVideosKwargs


class TarsierProcessor(ProcessorMixin):
    r"""Tokenizer + CLIP/SigLIP image processor + PyAV frame sampling for Tarsier.

    `__call__(text, images=None, videos=None, **kwargs)` and `apply_chat_template(...)` return:

    - `input_ids` `(B, L)` and `attention_mask` `(B, L)`, every placeholder expanded into its frames' runs;
    - `pixel_values` `(F, 3, S, S)` float: all frames of all samples in batch order (text order inside a
      sample), `S = image_size`;
    - `num_frames` `(B,)` int64: frames per sample (an image counts 1, text-only samples 0);
    - `assistant_masks` `(B, L)` with `apply_chat_template(..., return_assistant_tokens_mask=True)`;
    - `video_metadata` (one `transformers.video_utils.VideoMetadata` per video, with `frames_indices`) when
      `return_metadata=True`.

    Args:
        image_processor: a CLIP or SigLIP image processor (PIL backend); supplies image size, mean and std.
        tokenizer: the LLM's tokenizer; must already hold the four special tokens (see `from_parts`).
        chat_template: a Jinja template string (or a `CHAT_TEMPLATES` name).
        patch_size: vision tower patch size (rows = cols = image_size // patch_size // vision_feature_pooling).
        use_frame_separators: `<image_newline>` after every patch row and `<frame_end>` after every frame.
        resize_mode: `"stretch"`, `"pad"` or `"released"` (`video_processing_tarsier.RESIZE_MODES`).
        frame_sampling: the default `FrameSampling` (or its dict form), saved in `processor_config.json`;
            default `UniformSampling(num_frames=8)`, the paper's inference setting.
        image_newline_token / frame_end_token: the tokens at the row-newline and end-of-frame embedding rows
            (a converted released checkpoint whose rows are ordinary tokens, e.g. `<0x0A>`, names those).
        padding_side: `"left"` (default, as transformers' VLM processors) so that `generate` on a batch continues
            every sample right after its own prompt; set on the tokenizer.
        num_additional_image_tokens: features per frame besides the patches (1 for CLIP's CLS feature when the
            model's `vision_feature_select_strategy` is `"full"`); needs `use_frame_separators=False`.
        vision_feature_pooling: the model's average pooling of the patch grid (`TarsierConfig`).
    """

    valid_processor_kwargs = TarsierProcessorKwargs
    text_kwargs = {"padding": True, "return_tensors": "pt"}
    skip_tensor_conversion = ["video_metadata", "text_replacement_offsets", "offset_mapping"]

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        chat_template=None,
        patch_size: int = 14,
        use_frame_separators: bool = True,
        resize_mode: str = "stretch",
        frame_sampling: FrameSampling | dict | None = None,
        image_newline_token: str = IMAGE_NEWLINE_TOKEN,
        frame_end_token: str = FRAME_END_TOKEN,
        padding_side: str = "left",
        num_additional_image_tokens: int = 0,
        vision_feature_pooling: int = 1,
        **kwargs,
    ):
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
        if isinstance(chat_template, str) and chat_template in CHAT_TEMPLATES:
            chat_template = CHAT_TEMPLATES[chat_template]
        self.patch_size = int(patch_size)
        self.use_frame_separators = bool(use_frame_separators)
        self.num_additional_image_tokens = int(num_additional_image_tokens)
        self.vision_feature_pooling = int(vision_feature_pooling)
        self.resize_mode = resize_mode
        self.frame_sampling = UniformSampling() if frame_sampling is None else as_frame_sampling(frame_sampling)
        self.padding_side = padding_side
        tokenizer.padding_side = padding_side
        self.image_token, self.video_token = IMAGE_TOKEN, VIDEO_TOKEN
        self.image_newline_token, self.frame_end_token = image_newline_token, frame_end_token
        tokens = [IMAGE_TOKEN, VIDEO_TOKEN, image_newline_token, frame_end_token]
        missing = [t for t in tokens if t not in tokenizer.get_vocab()]
        if missing:
            raise ValueError(f"the tokenizer lacks the special tokens {missing}; build the processor with "
                             "TarsierProcessor.from_parts(...), which adds them")
        ids = tokenizer.convert_tokens_to_ids(tokens)
        self.image_token_id, self.video_token_id, self.image_newline_token_id, self.frame_end_token_id = ids
        super().__init__(image_processor, tokenizer, chat_template=chat_template)
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        self._layout = frame_layout(self.image_size // self.patch_size // self.vision_feature_pooling,
                                    self.use_frame_separators, self.num_additional_image_tokens)

    @classmethod
    def from_parts(cls, tokenizer, image_processor="clip", chat_template: str | None = "vicuna",
                   image_size: int | None = None, **kwargs) -> "TarsierProcessor":
        """Assemble a processor from a tokenizer and an image processor, adding the special tokens if missing.

        Args:
            tokenizer: the LLM tokenizer. Missing special tokens are added to it in place; the caller must then
                resize the LM embeddings to `len(tokenizer)`.
            image_processor: an image processor instance, or `"clip"` (CLIP ViT-L/14-336 statistics, 336 px) /
                `"siglip"` (SigLIP statistics, 384 px) for the PIL backends.
            chat_template: a `CHAT_TEMPLATES` name (vicuna, tarsier-34b, mistral, yi, chatml), a Jinja string, or
                None to keep the tokenizer's own template.
            image_size: square frame size; defaults to the image processor's.
            **kwargs: the other `TarsierProcessor` arguments (`patch_size`, `frame_sampling`, ...).
        """
        from tokenizers import AddedToken

        if isinstance(image_processor, str):
            image_processor = build_image_processor(image_processor, image_size)
        elif image_size is not None:
            set_image_size(image_processor, image_size)
        tokens = (IMAGE_TOKEN, VIDEO_TOKEN, kwargs.get("image_newline_token", IMAGE_NEWLINE_TOKEN),
                  kwargs.get("frame_end_token", FRAME_END_TOKEN))
        missing = [t for t in tokens if t not in tokenizer.get_vocab()]
        if missing:
            tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in missing], special_tokens=True)
        if chat_template is None:
            chat_template = getattr(tokenizer, "chat_template", None)
        elif "{" not in chat_template and chat_template not in CHAT_TEMPLATES:
            raise ValueError(f"unknown chat template name {chat_template!r}; known: {sorted(CHAT_TEMPLATES)} "
                             f"(files in {CHAT_TEMPLATE_DIR}), or pass the Jinja text")
        if "patch_size" not in kwargs and type(image_processor).__name__.startswith("Siglip"):
            kwargs["patch_size"] = 16 if image_size_of(image_processor) % 14 else 14
        return cls(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template, **kwargs)

    @classmethod
    def from_args_and_dict(cls, args, processor_dict: dict, **kwargs):
        """Loading: a config saved before `frame_sampling` existed keeps its sampling (one object from its keys)."""
        legacy = {k: processor_dict[k] for k in _LEGACY_SAMPLING_KEYS if k in processor_dict}
        if legacy and "frame_sampling" not in processor_dict:
            policy = legacy.get("sampling", "uniform")
            options = {"num_frames": legacy.get("num_frames", 8)} if policy != "fps" else {
                "fps": legacy.get("video_fps") or 1.0, "max_frames": legacy.get("max_frames", 64)}
            processor_dict = {**processor_dict, "frame_sampling": {"policy": policy, **options}}
        return super().from_args_and_dict(args, processor_dict, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output["frame_sampling"] = self.frame_sampling.to_dict()
        return output

    # -- layout: `configuration_tarsier.frame_layout` in this processor's tokens --------------------------------

    @property
    def image_size(self) -> int:
        return image_size_of(self.image_processor)

    @property
    def tokens_per_frame(self) -> int:
        return len(self._layout)

    def frame_token_ids(self) -> list[int]:
        """Token ids of one frame's run (`tokens_per_frame` long)."""
        ids = {"image": self.image_token_id, "newline": self.image_newline_token_id,
               "frame_end": self.frame_end_token_id}
        return [ids[kind] for kind in self._layout]

    def frame_text(self) -> str:
        """One frame's run as text (what a placeholder expands into, once per frame)."""
        text = {"image": self.image_token, "newline": self.image_newline_token, "frame_end": self.frame_end_token}
        return "".join(text[kind] for kind in self._layout)

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        return self.frame_text()

    def replace_video_token(self, video_inputs: dict, video_idx: int, **kwargs) -> str:
        return self.frame_text() * len(video_inputs["frames"][video_idx])

    # -- pixels -------------------------------------------------------------------------------------------------

    def resize_frames(self, frames: np.ndarray | list[np.ndarray]) -> list[np.ndarray]:
        """Resize `(H, W, 3)` uint8 frames to `(S, S, 3)` per `resize_mode` with the image processor's resampling."""
        return resize_frames(frames, self.image_processor, self.resize_mode)

    def preprocess_frames(self, frames: np.ndarray | list[np.ndarray]):
        """`(n, H, W, 3)` uint8 frames -> `(n, 3, S, S)` float32 tensor (resize, rescale, normalise)."""
        return preprocess_frames(frames, self.image_processor, self.resize_mode)

    def _process_images(self, images: list, **kwargs) -> tuple[dict, list[str]]:
        inputs = {"frames": [self.resize_frames([load_image(image)]) for image in images]}
        return inputs, [self.replace_image_token(inputs, i) for i in range(len(images))]

    def _process_videos(self, videos: list, frame_sampling=None, complex_clip: bool = False, rng=None,
                        num_frames: int | None = None, fps: float | None = None, **kwargs) -> tuple[dict, list[str]]:
        """Sample, decode and resize every video (each distinct frame resized once, before repeats are copied)."""
        sampling = call_sampling(self.frame_sampling, frame_sampling, num_frames, fps)
        if rng is not None and not isinstance(rng, np.random.Generator):
            rng = np.random.default_rng(rng)  # one stream for the call: a seed does not repeat itself per video
        frames, metadata = [], []
        for video in videos:
            sample = load_video(video, sampling, complex_clip=complex_clip, rng=rng,
                                transform=lambda frame: self.resize_frames([frame])[0])
            frames.append(list(sample.frames))
            metadata.append(sample.video_metadata())
        inputs = {"frames": frames, "video_metadata": metadata}
        return inputs, [self.replace_video_token(inputs, i) for i in range(len(videos))]

    # -- main entry ---------------------------------------------------------------------------------------------

    def __call__(self, images: Any = None, text: str | list[str] | None = None, videos: Any = None, audio=None,
                 **kwargs: Unpack[TarsierProcessorKwargs]) -> BatchFeature:
        """Tokenize text with expanded visual placeholders and preprocess the frames (see the class docstring).

        Args:
            images: images in text order: a flat list over the batch, or one list per sample.
            text: one prompt or a batch; each `<video>` / `<image>` consumes the next video / image.
            videos: video sources (see `media_loading_tarsier.load_video`) in text order: flat over the batch,
                or one list per sample.
            **kwargs: `TarsierProcessorKwargs`: tokenizer options (`padding`, `padding_side`, `max_length`,
                `truncation`, `add_special_tokens`, `return_tensors`, ...) and video options
                (`TarsierVideosKwargs`: `frame_sampling`, `num_frames`, `fps`, `complex_clip`, `rng`,
                `return_metadata`). Truncation never cuts a visual run silently: it raises.
        """
        if text is None:
            raise ValueError("TarsierProcessor needs text (use <video> / <image> placeholders to place visuals)")
        if audio is not None:
            raise ValueError("TarsierProcessor does not take audio")
        unknown = sorted(set(kwargs) - _valid_options(self.image_processor))
        if unknown:  # the mixin would only warn and go on without them
            raise TypeError(f"TarsierProcessor got unknown options {unknown}; frame sampling is one `frame_sampling` "
                            "object (frame_sampling_tarsier.FrameSampling), adjusted by `num_frames` / `fps`")
        merged = self._merge_kwargs(TarsierProcessorKwargs, tokenizer_init_kwargs=self.tokenizer.init_kwargs, **kwargs)
        text_kwargs, videos_kwargs = merged["text_kwargs"], merged["videos_kwargs"]
        texts = [text] if isinstance(text, str) else list(text)
        sample_images = _split_per_sample(images, texts, self.image_token, "images")
        sample_videos = _split_per_sample(videos, texts, self.video_token, "videos")
        image_inputs, image_replacements = self._process_images([i for sample in sample_images for i in sample])
        video_inputs, video_replacements = self._process_videos(
            [v for sample in sample_videos for v in sample],
            **{k: videos_kwargs[k] for k in ("frame_sampling", "complex_clip", "rng", "num_frames", "fps")
               if videos_kwargs.get(k) is not None},
        )
        # pixels in text order: each placeholder takes the next image's frame or the next video's frames
        next_image, next_video = iter(image_inputs["frames"]), iter(video_inputs["frames"])
        pattern = f"{re.escape(self.image_token)}|{re.escape(self.video_token)}"
        frames, counts = [], []
        for sample_text in texts:
            start = len(frames)
            for match in re.finditer(pattern, sample_text):
                frames.extend(next(next_image) if match.group() == self.image_token else next(next_video))
            counts.append(len(frames) - start)

        expanded, replacement_offsets = self.get_text_with_replacements(texts, image_replacements, video_replacements)
        return_tensors = text_kwargs.pop("return_tensors", None)
        text_kwargs.pop("return_mm_token_type_ids", None)
        text_kwargs.pop("return_text_replacement_offsets", None)
        data = dict(self.tokenizer(expanded, **text_kwargs))
        self._check_visual_runs(data["input_ids"], counts)
        if merged.get("return_text_replacement_offsets"):
            data["text_replacement_offsets"] = replacement_offsets
        if frames:
            data["pixel_values"] = self.preprocess_frames(frames)
        else:
            data["pixel_values"] = torch.zeros((0, 3, self.image_size, self.image_size), dtype=torch.float32)
        if return_tensors is None:
            data["pixel_values"] = data["pixel_values"].numpy()
        data["num_frames"] = counts
        if videos_kwargs.get("return_metadata"):
            data["video_metadata"] = video_inputs["video_metadata"]
        return BatchFeature(data, tensor_type=return_tensors, skip_tensor_conversion=self.skip_tensor_conversion)

    def _check_visual_runs(self, input_ids: list[list[int]], counts: list[int]) -> None:
        per_frame = self._layout.count("image")
        for sample, (ids, count) in enumerate(zip(input_ids, counts)):
            found = sum(1 for t in ids if t == self.image_token_id)
            if found != count * per_frame:
                raise ValueError(
                    f"sample {sample}: {found} {self.image_token} tokens after tokenization but {count} frames need "
                    f"{count * per_frame}; truncation (max_length) cut a visual run, or the text holds literal "
                    f"{self.image_token} strings"
                )

    def apply_chat_template(self, conversation, *args, **kwargs):
        """`ProcessorMixin.apply_chat_template`, with `assistant_masks` returned as a tensor like the other outputs
        (the mixin leaves it a list unless `return_tensors` is passed)."""
        out = super().apply_chat_template(conversation, *args, **kwargs)
        if isinstance(out, BatchFeature) and isinstance(out.get("assistant_masks"), list):
            input_ids = out["input_ids"]
            if hasattr(input_ids, "new_tensor"):
                out["assistant_masks"] = input_ids.new_tensor(out["assistant_masks"])
        return out

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values", "num_frames"]


def _valid_options(image_processor) -> set[str]:
    """Every option name `__call__` accepts: the typed kwargs of each modality, the flat ones, and the image
    processor's own."""
    annotations = TarsierProcessorKwargs.__annotations__
    valid = set(annotations)
    for modality in ("text_kwargs", "images_kwargs", "videos_kwargs", "audio_kwargs"):
        valid |= set(annotations[modality].__annotations__)
    return valid | set(getattr(getattr(image_processor, "valid_kwargs", None), "__annotations__", {}))


def _split_per_sample(items: Any, texts: list[str], token: str, name: str) -> list[list[Any]]:
    """Distribute images/videos over samples by counting each sample's placeholders.

    Accepts one list per sample (`[[v0, v1], [], [v2]]`, as `apply_chat_template` passes them) or one flat list
    in text order over the batch. A list of frames (PIL images, `(H, W, 3)` arrays, frame files) standing alone
    is one video.
    """
    counts = [t.count(token) for t in texts]
    if items is None:
        items = []
    elif not isinstance(items, (list, tuple)) or (name == "videos" and is_frame_list(items)):
        items = [items]
    items = list(items)
    per_sample = len(items) == len(texts) and all(isinstance(x, (list, tuple)) for x in items)
    if per_sample and [len(x) for x in items] == counts:
        return [list(x) for x in items]
    if len(items) != sum(counts):
        raise ValueError(f"the text holds {sum(counts)} {token} placeholders but {len(items)} {name} were given")
    out, start = [], 0
    for count in counts:
        out.append(items[start : start + count])
        start += count
    return out


TarsierProcessor.register_for_auto_class("AutoProcessor")

__all__ = ["TarsierProcessor", "TarsierProcessorKwargs", "TarsierVideosKwargs", "CHAT_TEMPLATES", "SPECIAL_TOKENS"]
