"""The video -> text engine: a Tarsier model + processor turning `VideoRequest`s into descriptions.

Used by `tarsier_hf.inference.describe`, the benchmark runners (`tarsier_hf.inference.batch.run_inference`) and the tiny-recipe
sweep. Every request goes through the processor's `apply_chat_template` with the run's `FrameSampling` (the path
training and the reference loss use), and the batch through `model.generate` with one `GenerationConfig`.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field, make_dataclass
from typing import Any, Callable, Sequence

import torch
from transformers import GenerationConfig

from tarsier_hf import families
from frame_sampling_tarsier import FpsSampling, FrameSampling, UniformSampling

VIDEO_PLACEHOLDER = "<video>"
# Processor outputs with one value per token: left-padded in a batch (every other tensor is concatenated).
SEQUENCE_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")
# The paper's detailed-description instruction (Appendix C), what `describe` and DREAM-1K ask by default.
DEFAULT_DESCRIPTION_PROMPT = "Describe the video in detail."

# Decoding options on the command line. Each is a `GenerationConfig` attribute: its type and help come from
# GenerationConfig's own documentation, and `None` leaves it to the checkpoint's generation_config.json. The only
# defaults set here are the paper's evaluation setting: greedy decoding, at most 512 new tokens.
GENERATION_OPTIONS = ("max_new_tokens", "do_sample", "num_beams", "temperature", "top_p", "top_k",
                      "repetition_penalty")
GENERATION_DEFAULTS = {"max_new_tokens": 512, "do_sample": False}


def default_generation_config() -> GenerationConfig:
    return GenerationConfig(**GENERATION_DEFAULTS)


def inference_sampling(num_frames: int | None = None, fps: float | None = None, max_frames: int = 64,
                       default: FrameSampling | Callable[[], FrameSampling] | None = None) -> FrameSampling:
    """The frame sampling of a command line: `default` (the checkpoint's own policy, or a function that reads it,
    e.g. `lambda: families.default_frame_sampling(checkpoint)`; else 8 uniform frames with the first and last, paper
    §5.1) with `num_frames` frames, or, with `fps` and no `num_frames`, a fixed rate capped at `max_frames`."""
    if fps is not None and num_frames is None:
        return FpsSampling(fps=fps, max_frames=max_frames)
    policy = default() if callable(default) else default
    policy = policy if policy is not None else UniformSampling(8)
    return policy if num_frames is None else policy.with_num_frames(num_frames)


@dataclass
class InferenceSettings:
    """Everything that decides what a checkpoint writes for a video (recorded in every result as `run`).

    Attributes:
        checkpoint: model folder or Hub id.
        frame_sampling: how frames are sampled from each video (default: 8 uniform frames, paper §5.1).
        system_prompt: optional system message put before every user turn.
        dtype: `auto` (bfloat16 on GPU, float32 on CPU), `float32`, `bfloat16` or `float16`.
        generation: decoding options (`model.generate(generation_config=...)`; unset options follow the checkpoint).
        seed: base seed; batch `i` is generated with `seed + i`.
    """

    checkpoint: str
    frame_sampling: FrameSampling = field(default_factory=UniformSampling)
    system_prompt: str | None = None
    dtype: str = "auto"
    generation: GenerationConfig = field(default_factory=default_generation_config)
    seed: int = 0

    @property
    def frames(self) -> int | str:
        """Frames per video as results report them: a count, or the rate of an `fps` policy."""
        if isinstance(self.frame_sampling, FpsSampling):
            return f"{self.frame_sampling.fps} fps"
        return self.frame_sampling.max_frames_per_video()

    def to_dict(self) -> dict:
        generation = {k: v for k, v in self.generation.to_diff_dict().items() if k != "transformers_version"}
        return {"checkpoint": str(self.checkpoint), "frame_sampling": self.frame_sampling.to_dict(),
                "system_prompt": self.system_prompt, "dtype": self.dtype, "generation": generation, "seed": self.seed}


@dataclass
class VideoRequest:
    """One sample to run: a video (a file path, or frames `load_video` reads), the user prompt (a leading `<video>`
    is optional) and fields to carry along."""

    id: str
    video: Any
    prompt: str
    meta: dict = field(default_factory=dict)


def _documented_option(name: str) -> tuple[type, str]:
    """`(type, first sentence of the help)` of a `GenerationConfig` attribute, from its docstring."""
    match = re.search(rf"^\s*{name} \(`(int|float|bool)`[^)]*\)\s*:\s*\n\s*(.+?)(?:\.\s|\n\s*\n)",
                      GenerationConfig.__doc__ or "", re.M | re.S)
    if match is None:
        raise RuntimeError(f"GenerationConfig documents no {name!r} option in this transformers version")
    return {"int": int, "float": float, "bool": bool}[match.group(1)], " ".join(match.group(2).split()) + "."


_GenerationOptions = make_dataclass(
    "_GenerationOptions",
    [(name, kind | None, field(default=GENERATION_DEFAULTS.get(name), metadata={"help": f"GenerationConfig: {text}"}))
     for name, (kind, text) in ((n, _documented_option(n)) for n in GENERATION_OPTIONS)],
    kw_only=True,
)


@dataclass(kw_only=True)
class GenerationArguments(_GenerationOptions):
    """Batching and decoding options shared by every command that generates (inference, runners, describe).

    The decoding options are `GenerationConfig` attributes (`GENERATION_OPTIONS`: `max_new_tokens`, `do_sample`,
    `num_beams`, `temperature`, `top_p`, `top_k`, `repetition_penalty`), built into one `GenerationConfig`.
    """

    batch_size: int = field(default=4, metadata={"help": "Videos per generate call per process."})
    dtype: str = field(default="auto", metadata={"help": "auto, float32, bfloat16 or float16."})
    system_prompt: str | None = field(default=None, metadata={"help": "Optional system message."})
    seed: int = field(default=0, metadata={"help": "Base seed; batch i uses seed + i."})
    num_workers: int = field(
        default=2, metadata={"help": "DataLoader processes that decode and preprocess videos ahead of generation."}
    )

    def generation_config(self) -> GenerationConfig:
        """The decoding options as a validated `GenerationConfig` (unset ones left to the checkpoint)."""
        config = GenerationConfig(**{n: getattr(self, n) for n in GENERATION_OPTIONS if getattr(self, n) is not None})
        config.validate(strict=True)
        return config


def load_model_and_processor(
    checkpoint: str | os.PathLike, dtype: str = "auto", device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
):
    """A video checkpoint of any family (`tarsier_hf.families`) and its processor, ready for generation on `device`.

    By default the classes of this repository load the checkpoint and none of the code files saved in it runs;
    `trust_remote_code=True` imports the checkpoint's own code instead, which runs whatever those files contain.
    """
    model, processor, family = families.load_model_and_processor(checkpoint, dtype, device, trust_remote_code)
    if not family.multimodal:
        raise families.UnsupportedCheckpointError(f"{checkpoint}: a text-only {family.name} checkpoint cannot "
                                                  "describe videos")
    return model, processor


def one_sample(encoded) -> dict:
    """A processor output of a batch of one -> the tensors `collate_left_padded` batches: the per-token ones
    (`SEQUENCE_KEYS`) without the batch axis, `(L,)`, the others as they are; values that are not tensors are left
    out."""
    return {key: value[0] if key in SEQUENCE_KEYS else value
            for key, value in encoded.items() if isinstance(value, torch.Tensor)}


def collate_left_padded(encoded: list[dict], pad_token_id: int) -> dict:
    """The batching rule of every generation here (the describe engine, `tarsier-serve`): left-pad the per-token
    tensors (`SEQUENCE_KEYS`, each `(L_i,)`) of encoded samples to `(B, max L_i)` (`input_ids` with `pad_token_id`,
    the others with 0) and concatenate every other tensor along its first axis (frames, patches, grids, frame
    counts). Keys are those of the first sample; values that are not tensors (per-sample facts) are left out."""
    length = max(len(e["input_ids"]) for e in encoded)
    batch = {}
    for key, value in encoded[0].items():
        if not isinstance(value, torch.Tensor):
            continue
        if key in SEQUENCE_KEYS:
            fill = pad_token_id if key == "input_ids" else 0
            padded = torch.full((len(encoded), length), fill, dtype=value.dtype)
            for row, item in enumerate(encoded):
                padded[row, length - len(item[key]):] = item[key]
            batch[key] = padded
        else:
            batch[key] = torch.cat([e[key] for e in encoded])
    return batch


class VideoTextGenerator:
    """Turns batches of `VideoRequest`s into text with a Tarsier model and processor.

    Each request is encoded on its own (so one unreadable video fails alone, with its reason), then the batch
    is left-padded and run through `model.generate` with the KV cache.
    """

    def __init__(self, model, processor, settings: InferenceSettings):
        self.model = model
        self.processor = processor
        self.settings = settings
        tokenizer = processor.tokenizer
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.pad_token_id = tokenizer.pad_token_id
        # the run's decoding options plus the pad id of left-padded batches, in one config (transformers warns when
        # generation arguments come beside a generation_config)
        self._generation_config = copy.deepcopy(settings.generation)
        self._generation_config.pad_token_id = self.pad_token_id

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def prompt_length(self, request: VideoRequest) -> int:
        """Text tokens of the request's rendered prompt (its visual positions depend on the frames only)."""
        text = self.processor.apply_chat_template(
            self.conversation(request.prompt), add_generation_prompt=True, tokenize=False
        )
        return len(self.processor.tokenizer(text, add_special_tokens=False)["input_ids"])

    def conversation(self, prompt: str, video: Any = None) -> list[dict]:
        """The chat of one request: the optional system prompt, then a user turn with the video and the prompt."""
        text = prompt.replace(VIDEO_PLACEHOLDER, "").strip()
        messages = []
        if self.settings.system_prompt:
            messages.append({"role": "system", "content": [{"type": "text", "text": self.settings.system_prompt}]})
        block = {"type": "video"} if video is None else {"type": "video", "video": video}
        messages.append({"role": "user", "content": [block, {"type": "text", "text": text}]})
        return messages

    def encode(self, request: VideoRequest) -> dict:
        """One request -> the processor's tensors of a batch of one (`input_ids (L,)` and the other per-token
        tensors of `SEQUENCE_KEYS` with the batch axis dropped; visual tensors as the processor returns them, e.g.
        Tarsier's `pixel_values (n, 3, S, S)` and `num_frames (1,)`, Qwen2-VL's `pixel_values_videos (P, D)` and
        `video_grid_thw (1, 3)`) plus `frame_indices (n,)`: the processor samples the video with
        `settings.frame_sampling` and renders the prompt with the checkpoint's chat template. Raises on a bad video."""
        video = request.video
        if isinstance(video, (str, os.PathLike)):
            if os.path.islink(video) and not os.path.exists(video):
                raise FileNotFoundError(
                    f"{video}: dangling symbolic link (to {os.readlink(video)}, which does not exist)")
            if os.path.isdir(video):
                raise IsADirectoryError(f"{video}: is a folder, not a video file")
            if not os.path.isfile(video):
                raise FileNotFoundError(f"{video}: no such video file")
            video = str(video)
        encoded = self.processor.apply_chat_template(
            self.conversation(request.prompt, video), add_generation_prompt=True, tokenize=True, return_dict=True,
            return_tensors="pt", processor_kwargs={"frame_sampling": self.settings.frame_sampling,
                                                   "return_metadata": True, "padding": False},
        )
        item = one_sample(encoded)
        item["frame_indices"] = [int(i) for i in encoded["video_metadata"][0].frames_indices]
        return item

    def collate(self, encoded: list[dict]) -> dict:
        """`collate_left_padded` with the tokenizer's pad id."""
        return collate_left_padded(encoded, self.pad_token_id)

    @torch.inference_mode()
    def generate(self, batch: dict, seed: int) -> list[str]:
        """Generate for a collated batch; returns the decoded new text of every row."""
        device = self.device
        dtype = next(self.model.parameters()).dtype
        inputs = {k: v.to(device, dtype) if v.is_floating_point() else v.to(device) for k, v in batch.items()}
        torch.manual_seed(seed)
        output = self.model.generate(
            **inputs, generation_config=self._generation_config
        )
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        return [t.strip() for t in self.processor.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]

    def encode_batch(self, requests: list[VideoRequest]) -> tuple[list[tuple[VideoRequest, dict]], dict[str, dict]]:
        """Decode and preprocess a batch: `([(request, encoded)], {id: error record})` (DataLoader workers run this)."""
        run = self.settings.to_dict()
        encoded, errors = [], {}
        for request in requests:
            try:
                encoded.append((request, self.encode(request)))
            except Exception as error:  # noqa: BLE001 - any reader failure is reported per video, with its reason
                errors[request.id] = error_record(request, error, run)
        return encoded, errors

    def run_batch(self, requests: list[VideoRequest], seed: int, prepared=None) -> list[dict]:
        """Records (predictions and per-video errors) for one batch, in request order; `prepared` is the result of
        `encode_batch(requests)` when a worker already made it."""
        run = self.settings.to_dict()
        encoded, records = prepared if prepared is not None else self.encode_batch(requests)
        if encoded:
            texts = self.generate(self.collate([e for _, e in encoded]), seed)
            for (request, item), text in zip(encoded, texts):
                records[request.id] = {
                    "id": request.id,
                    "video": request.video,
                    "prompt": request.prompt,
                    "prediction": text,
                    "num_frames": len(item["frame_indices"]),
                    "frame_indices": item["frame_indices"],
                    "meta": request.meta,
                    "run": run,
                }
        return [records[r.id] for r in requests]


class EncodedBatches(torch.utils.data.Dataset):
    """`(batch index, requests, encode_batch(requests))` per planned batch, for a DataLoader whose workers decode
    and preprocess videos ahead of generation."""

    def __init__(self, generator: VideoTextGenerator, batches: Sequence[tuple[int, list[VideoRequest]]]):
        self.generator = generator
        self.batches = list(batches)

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, position: int):
        index, requests = self.batches[position]
        return index, requests, self.generator.encode_batch(requests)


def _unchanged(item):
    return item


def prefetched_batches(generator: VideoTextGenerator, batches, num_workers: int):
    """Iterate `(index, requests, prepared)` in order; with `num_workers > 0` workers stay 2 batches ahead each."""
    dataset = EncodedBatches(generator, batches)
    if num_workers == 0:
        yield from (dataset[i] for i in range(len(dataset)))
        return
    yield from torch.utils.data.DataLoader(
        dataset, batch_size=None, shuffle=False, num_workers=min(num_workers, len(dataset)), prefetch_factor=2,
        collate_fn=_unchanged,
    )


def error_record(request: VideoRequest, error: BaseException, run: dict) -> dict:
    reason = str(error) or type(error).__name__
    if request.video not in reason:
        reason = f"{request.video}: {reason}"
    return {"id": request.id, "video": request.video, "prompt": request.prompt, "error": reason,
            "error_type": type(error).__name__, "meta": request.meta, "run": run}
