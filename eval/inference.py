"""Batched, sharded, resumable video -> text generation with a Tarsier checkpoint.

    # one process
    python -m tarsier_hf.eval.inference --checkpoint path/to/tarsier --requests requests.jsonl --output predictions.jsonl
    # several processes (GPUs, or CPU processes with the gloo backend)
    accelerate launch --multi_gpu --num_processes 2 -m tarsier_hf.eval.inference --checkpoint ... --output ...

`requests.jsonl` holds one `{"id": ..., "video": path, "prompt": text}` per line. Results are appended to
`--output` as they are produced (one JSON object per sample, see `RESULT_FIELDS`), so a killed run started again
with the same arguments skips every finished sample and redoes only the rest.

Throughput: requests are ordered by prompt length (stable) before they are cut into batches, so a batch pads
little; `num_workers` DataLoader processes decode and preprocess the next batches while the model generates the
current one; each batch's records are appended to `--output` as soon as it finishes.

Determinism across process counts: the requests are cut into batches once, and batch `i` goes to process
`i % num_processes` with its own seed `seed + i`. Every batch therefore holds the same samples, padded the same
way and sampled with the same seed whatever the number of processes, so 2 processes write the same predictions as
1 (the file order may differ; readers key on `id`).

Note on `accelerate launch` without a GPU: in accelerate 1.15, `--cpu --num_processes 2` starts a single process
unless MPI is set up; `--multi_gpu --num_processes 2` starts two through torch.distributed and this module then
uses the gloo backend on CPU.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

from tarsier_hf.eval.results import append_jsonl, first_by_id, read_jsonl

logger = logging.getLogger(__name__)

RESULT_FIELDS = ("id", "video", "prompt", "prediction", "num_frames", "frame_indices", "meta", "run")
VIDEO_PLACEHOLDER = "<video>"


@dataclass
class GenerationSettings:
    """Decoding options passed to `model.generate` (recorded with every result)."""

    max_new_tokens: int = 512
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 50
    num_beams: int = 1
    repetition_penalty: float = 1.0
    seed: int = 0

    def generate_kwargs(self) -> dict:
        kwargs = {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": self.do_sample,
            "num_beams": self.num_beams,
            "repetition_penalty": self.repetition_penalty,
        }
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        return kwargs


@dataclass
class InferenceSettings:
    """Everything that decides what a checkpoint writes for a video (recorded in every result as `run`).

    Attributes:
        checkpoint: model folder or Hub id.
        num_frames: frames sampled per video (policy `uniform`: first and last included, as §5.1).
        sampling: frame sampling policy of the processor (`uniform` or `fps`).
        fps / max_frames: parameters of the `fps` policy.
        system_prompt: optional system message put before every user turn.
        dtype: `auto` (bfloat16 on GPU, float32 on CPU), `float32`, `bfloat16` or `float16`.
        generation: decoding options.
    """

    checkpoint: str
    num_frames: int = 8
    sampling: str = "uniform"
    fps: float | None = None
    max_frames: int = 64
    system_prompt: str | None = None
    dtype: str = "auto"
    generation: GenerationSettings = field(default_factory=GenerationSettings)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["checkpoint"] = str(self.checkpoint)
        return data


@dataclass
class VideoRequest:
    """One sample to run: a video, the user prompt (a leading `<video>` is optional) and fields to carry along."""

    id: str
    video: str
    prompt: str
    meta: dict = field(default_factory=dict)


def plan_batches(
    requests: Sequence[VideoRequest], batch_size: int, length: Callable[[VideoRequest], int] | None = None
) -> list[list[VideoRequest]]:
    """Cut requests into consecutive batches of `batch_size` (the last may be shorter).

    Without `length` the input order is kept; with it, requests are first sorted by `length(request)` (stable, so
    equal lengths keep input order) and each batch holds prompts of similar length.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ids = [str(r.id) for r in requests]
    if len(set(ids)) != len(ids):
        duplicates = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(f"request ids must be unique; repeated: {duplicates}")
    if length is not None:
        requests = sorted(requests, key=length)
    return [list(requests[i : i + batch_size]) for i in range(0, len(requests), batch_size)]


def shard(batches: Sequence[Any], rank: int, world_size: int) -> list[tuple[int, Any]]:
    """`(global_index, batch)` pairs this process runs: every `world_size`-th batch starting at `rank`."""
    return [(i, batches[i]) for i in range(rank, len(batches), world_size)]


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {name!r}") from None


def load_model_and_processor(
    checkpoint: str | os.PathLike, dtype: str = "auto", device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
):
    """Load a Tarsier checkpoint and its processor, ready for generation on `device`.

    By default the classes of this repository (`modeling_tarsier`, `processing_tarsier`, `configuration_tarsier`)
    load the checkpoint and none of the code files saved in it runs. `trust_remote_code=True` imports the
    checkpoint's own code instead (transformers' remote code), which runs whatever those files contain.
    """
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    device = torch.device(device)
    checkpoint = str(checkpoint)
    if not Path(checkpoint).exists() and (checkpoint.startswith((".", "/", "~")) or checkpoint.count("/") != 1):
        raise FileNotFoundError(f"{checkpoint}: no such checkpoint folder (and not a Hub id of the form org/name)")
    if trust_remote_code:
        processor = AutoProcessor.from_pretrained(checkpoint, trust_remote_code=True)
        model = AutoModelForImageTextToText.from_pretrained(
            checkpoint, trust_remote_code=True, dtype=resolve_dtype(dtype, device)
        )
    else:
        root = str(Path(__file__).resolve().parents[1])  # the repo root holds the model files
        if root not in sys.path:
            sys.path.insert(0, root)
        from configuration_tarsier import TarsierConfig
        from modeling_tarsier import TarsierForConditionalGeneration
        from processing_tarsier import TarsierProcessor

        # The tokenizer reads config.json through AutoConfig: with model_type "tarsier" registered to our class it
        # never looks at the checkpoint's configuration_tarsier.py.
        AutoConfig.register("tarsier", TarsierConfig, exist_ok=True)
        processor = TarsierProcessor.from_pretrained(checkpoint)
        model = TarsierForConditionalGeneration.from_pretrained(checkpoint, dtype=resolve_dtype(dtype, device))
    model.to(device).eval()
    return model, processor


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

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def prompt_length(self, request: VideoRequest) -> int:
        """Text tokens of the request's rendered prompt (its visual positions depend on the frames only)."""
        text = self.processor.apply_chat_template(
            self.conversation(request.prompt), add_generation_prompt=True, tokenize=False
        )
        return len(self.processor.tokenizer(text, add_special_tokens=False)["input_ids"])

    def conversation(self, prompt: str) -> list[dict]:
        text = prompt.replace(VIDEO_PLACEHOLDER, "").strip()
        messages = []
        if self.settings.system_prompt:
            messages.append({"role": "system", "content": [{"type": "text", "text": self.settings.system_prompt}]})
        messages.append({"role": "user", "content": [{"type": "video"}, {"type": "text", "text": text}]})
        return messages

    def encode(self, request: VideoRequest) -> dict:
        """One request -> `input_ids (L,)`, `pixel_values (n, 3, S, S)`, `frame_indices (n,)`. Raises on bad video."""
        video = request.video
        if os.path.islink(video) and not os.path.exists(video):
            raise FileNotFoundError(f"{video}: dangling symbolic link (to {os.readlink(video)}, which does not exist)")
        if os.path.isdir(video):
            raise IsADirectoryError(f"{video}: is a folder, not a video file")
        if not os.path.isfile(video):
            raise FileNotFoundError(f"{video}: no such video file")
        settings = self.settings
        sample = self.processor.load_video(
            request.video,
            num_frames=settings.num_frames,
            policy=settings.sampling,
            fps=settings.fps,
            max_frames=settings.max_frames,
        )
        return {**self.encode_frames(sample.frames, request.prompt), "frame_indices": [int(i) for i in sample.indices]}

    def encode_frames(self, frames, prompt: str) -> dict:
        """Already sampled frames `(n, H, W, 3)` + prompt -> `input_ids (L,)`, `pixel_values (n, 3, S, S)`."""
        text = self.processor.apply_chat_template(self.conversation(prompt), add_generation_prompt=True, tokenize=False)
        # hand the frames over as an array and keep all of them
        encoded = self.processor(
            text=text, videos=[frames], num_frames=len(frames), sampling="uniform", padding=False, return_tensors="pt"
        )
        return {"input_ids": encoded["input_ids"][0], "pixel_values": encoded["pixel_values"]}

    def collate(self, encoded: list[dict]) -> dict:
        """Left-pad encoded samples into `input_ids (B, L)`, `attention_mask (B, L)`, `pixel_values (F, 3, S, S)`,
        `num_frames (B,)`."""
        length = max(len(e["input_ids"]) for e in encoded)
        input_ids = torch.full((len(encoded), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(encoded), length), dtype=torch.long)
        for row, item in enumerate(encoded):
            n = len(item["input_ids"])
            input_ids[row, length - n :] = item["input_ids"]
            attention_mask[row, length - n :] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "pixel_values": torch.cat([e["pixel_values"] for e in encoded]),
            "num_frames": torch.tensor([len(e["pixel_values"]) for e in encoded], dtype=torch.long),
        }

    @torch.inference_mode()
    def generate(self, batch: dict, seed: int) -> list[str]:
        """Generate for a collated batch; returns the decoded new text of every row."""
        device = self.device
        dtype = next(self.model.parameters()).dtype
        inputs = {k: v.to(device) for k, v in batch.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        torch.manual_seed(seed)
        output = self.model.generate(
            **inputs, pad_token_id=self.pad_token_id, **self.settings.generation.generate_kwargs()
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


def completed(records: Iterable[dict]) -> dict[str, dict]:
    """`{id: record}` of finished samples (records with a prediction), first one per id."""
    return first_by_id(r for r in records if "prediction" in r)


def check_same_run(path: str | os.PathLike, done: dict[str, dict], run: dict) -> None:
    """Refuse to resume into a file written with other settings: results from two setups would mix silently."""
    for record in done.values():
        previous = record.get("run")
        if previous != run:
            keys = sorted(k for k in set(run) | set(previous or {}) if (previous or {}).get(k) != run.get(k))
            raise ValueError(
                f"{path}: holds results made with different settings ({', '.join(keys)} differ, e.g. "
                f"{keys[0]}={(previous or {}).get(keys[0])!r} there vs {run.get(keys[0])!r} now); "
                "write to a new --output file or delete this one"
            )
        return


def get_state():
    """accelerate's process state; on a machine without CUDA, processes talk through gloo."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def run_inference(
    requests: Sequence[VideoRequest],
    output: str | os.PathLike,
    settings: InferenceSettings,
    batch_size: int = 4,
    model=None,
    processor=None,
    progress: bool = True,
    state=None,
    trust_remote_code: bool = False,
    num_workers: int = 2,
) -> dict[str, dict]:
    """Generate for every request not yet finished in `output`, sharded over the processes of this launch.

    Args:
        requests: the samples; their ids must be unique.
        output: JSONL file the records are appended to (created if missing; resumed if present).
        settings: checkpoint, frames and generation settings; a resume with other settings is refused.
        batch_size: samples per `generate` call in each process.
        model, processor: already loaded objects (else loaded from `settings.checkpoint`).
        progress: show a tqdm bar on the main process.
        state: an accelerate `PartialState` (created when None).
        trust_remote_code: load the checkpoint with its own code files (see `load_model_and_processor`).
        num_workers: DataLoader processes decoding and preprocessing videos ahead of generation (0: in this one).

    Returns:
        `{id: record}` for every request, read back from `output` after all processes finished: predictions,
        or the latest error for samples whose video could not be read.
    """
    from tqdm.auto import tqdm

    state = state or get_state()
    output = Path(output)
    run = settings.to_dict()
    done = completed(read_jsonl(output))
    check_same_run(output, done, run)

    pending = [r for r in requests if str(r.id) not in done]
    if pending:
        if model is None or processor is None:
            model, processor = load_model_and_processor(
                settings.checkpoint, settings.dtype, state.device, trust_remote_code=trust_remote_code
            )
        generator = VideoTextGenerator(model, processor, settings)
    # while work remains the plan covers all requests (finished ones too): batch contents and seeds survive a resume
    batches = plan_batches(list(requests), batch_size, length=generator.prompt_length if pending else None)
    todo = []
    for index, batch in shard(batches, state.process_index, state.num_processes):
        remaining = [r for r in batch if str(r.id) not in done]
        if remaining:
            todo.append((index, remaining))
    if todo:
        bar = tqdm(
            total=sum(len(b) for _, b in todo), desc=f"generate [{state.process_index}]", unit="video",
            disable=not progress or not state.is_main_process, file=sys.stderr,
        )
        for index, batch, prepared in prefetched_batches(generator, todo, num_workers):
            records = generator.run_batch(batch, seed=settings.generation.seed + index, prepared=prepared)
            append_jsonl(output, records)
            for record in records:
                if "error" in record:
                    logger.warning("skipped %s", record["error"])
            bar.update(len(batch))
        bar.close()
    state.wait_for_everyone()
    return collect(output, requests)


def collect(output: str | os.PathLike, requests: Sequence[VideoRequest]) -> dict[str, dict]:
    """`{id: record}` for `requests` from `output`: the finished record, else the last error, else absent."""
    records = read_jsonl(output)
    done = completed(records)
    errors = {str(r["id"]): r for r in records if "error" in r and "id" in r}
    out = {}
    for request in requests:
        key = str(request.id)
        if key in done:
            out[key] = done[key]
        elif key in errors:
            out[key] = errors[key]
    return out


def read_requests(path: str | os.PathLike) -> list[VideoRequest]:
    """Requests from a JSONL file of `{"id", "video", "prompt"}` objects (other keys go to `meta`)."""
    requests = []
    for number, record in enumerate(read_jsonl(path), start=1):
        missing = [k for k in ("id", "video", "prompt") if k not in record]
        if missing:
            raise ValueError(f"{path}: request {number} lacks {missing}")
        meta = {k: v for k, v in record.items() if k not in ("id", "video", "prompt")}
        requests.append(VideoRequest(str(record["id"]), str(record["video"]), str(record["prompt"]), meta))
    return requests


@dataclass(kw_only=True)
class GenerationArguments:
    """Batching and decoding options shared by every command that generates (inference, runners, describe)."""

    batch_size: int = field(default=4, metadata={"help": "Videos per generate call per process."})
    dtype: str = field(default="auto", metadata={"help": "auto, float32, bfloat16 or float16."})
    system_prompt: str | None = field(default=None, metadata={"help": "Optional system message."})
    max_new_tokens: int = field(default=512, metadata={"help": "Generation length limit."})
    do_sample: bool = field(default=False, metadata={"help": "Sample instead of greedy decoding."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass."})
    num_beams: int = field(default=1, metadata={"help": "Beam search width."})
    seed: int = field(default=0, metadata={"help": "Base seed; batch i uses seed + i."})
    num_workers: int = field(
        default=2, metadata={"help": "DataLoader processes that decode and preprocess videos ahead of generation."}
    )

    def generation_settings(self) -> GenerationSettings:
        return GenerationSettings(
            max_new_tokens=self.max_new_tokens, do_sample=self.do_sample, temperature=self.temperature,
            top_p=self.top_p, num_beams=self.num_beams, seed=self.seed,
        )


@dataclass(kw_only=True)
class InferenceArguments(GenerationArguments):
    """Command-line arguments of `python -m tarsier_hf.eval.inference`."""

    checkpoint: str = field(metadata={"help": "Tarsier checkpoint folder or Hub id."})
    requests: str = field(metadata={"help": "JSONL of {id, video, prompt}."})
    output: str = field(metadata={"help": "JSONL to append results to (resumed when it exists)."})
    num_frames: int = field(default=8, metadata={"help": "Frames per video (uniform, first and last included)."})
    sampling: str = field(default="uniform", metadata={"help": "Frame sampling policy: uniform or fps."})
    fps: float | None = field(default=None, metadata={"help": "Rate of the fps policy."})
    max_frames: int = field(default=64, metadata={"help": "Cap of the fps policy."})
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Run the checkpoint's own code files instead of this repository's classes."},
    )

    def settings(self) -> InferenceSettings:
        return InferenceSettings(
            checkpoint=self.checkpoint, num_frames=self.num_frames, sampling=self.sampling, fps=self.fps,
            max_frames=self.max_frames, system_prompt=self.system_prompt, dtype=self.dtype,
            generation=self.generation_settings(),
        )


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit status: 0 when at least one request has a prediction (failures are
    counted and listed), 1 when none has."""
    from transformers import HfArgumentParser

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    (args,) = HfArgumentParser(InferenceArguments).parse_args_into_dataclasses(args=argv)
    requests = read_requests(args.requests)
    start = time.perf_counter()
    results = run_inference(
        requests, args.output, args.settings(), batch_size=args.batch_size, num_workers=args.num_workers,
        trust_remote_code=args.trust_remote_code,
    )
    failed = [r for r in results.values() if "error" in r]
    succeeded = len(results) - len(failed)
    if get_state().is_main_process:
        print(
            f"{succeeded}/{len(requests)} predictions in {args.output} "
            f"({len(failed)} failed, {time.perf_counter() - start:.1f}s)"
        )
        for record in failed:
            print(f"  failed: {record['error']}", file=sys.stderr)
    return 0 if succeeded else 1


if __name__ == "__main__":
    sys.exit(main())
