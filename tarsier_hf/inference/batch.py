"""Batched, sharded, resumable video -> text generation with a Tarsier checkpoint.

    # one process
    python -m tarsier_hf.inference.batch --model_name_or_path path/to/tarsier --requests requests.jsonl --output_file predictions.jsonl
    # several processes (GPUs, or CPU processes with the gloo backend)
    accelerate launch --multi_gpu --num_processes 2 -m tarsier_hf.inference.batch --model_name_or_path ... --output_file ...

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

from tarsier_hf.cli import consent_boundary, help_text, renamed
from tarsier_hf.jsonl import append_jsonl, first_by_id, read_jsonl
from tarsier_hf.families import default_frame_sampling
from tarsier_hf.inference.engine import (
    GenerationArguments, InferenceSettings, VideoRequest, VideoTextGenerator, inference_sampling,
    load_model_and_processor, prefetched_batches,
)

logger = logging.getLogger(__name__)

RESULT_FIELDS = ("id", "video", "prompt", "prediction", "num_frames", "frame_indices", "meta", "run")


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


def completed(records: Iterable[dict]) -> dict[str, dict]:
    """`{id: record}` of finished samples (records with a prediction), first one per id."""
    return first_by_id(r for r in records if "prediction" in r)


def check_same_run(path: str | os.PathLike, done: dict[str, dict], run: dict) -> None:
    """Refuse to resume into a file written with other settings: results from two setups would mix silently."""
    for record in done.values():
        previous = record.get("run") or {}
        if previous != run:
            keys = sorted(k for k in set(run) | set(previous) if previous.get(k) != run.get(k))
            raise ValueError(
                f"{path}: holds results made with different settings (record id={record.get('id')!r}: "
                f"{', '.join(keys)} differ, e.g. {keys[0]}={previous.get(keys[0])!r} there vs {run.get(keys[0])!r} "
                "now); write to a new --output_file or delete this one"
            )


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
            records = generator.run_batch(batch, seed=settings.seed + index, prepared=prepared)
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
class InferenceArguments(GenerationArguments):
    """Command-line arguments of `python -m tarsier_hf.inference.batch`."""

    checkpoint: str = field(metadata={"help": "Tarsier checkpoint folder or Hub id.",
                                      **renamed("--model_name_or_path", "--checkpoint")})
    requests: str = field(metadata={"help": "JSONL of {id, video, prompt}."})
    output: str = field(metadata={"help": "JSONL to append results to (resumed when it exists).",
                                  **renamed("--output_file", "--output")})
    num_frames: int | None = field(default=None, metadata={
        "help": "Frames per video under the checkpoint's own sampling policy (Tarsier: 8 uniform frames, first and last included, §5.1; Tarsier2: 16 by the release's rule)."})
    fps: float | None = field(default=None, metadata={"help": "Sample at this rate instead (capped by --max_frames)."})
    max_frames: int = field(default=64, metadata={"help": "Cap of --fps."})
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Run the checkpoint's own code files instead of this repository's classes."},
    )

    def settings(self) -> InferenceSettings:
        return settings_from(self)


def settings_from(args) -> InferenceSettings:
    """The `InferenceSettings` of a command line that generates (`tarsier-infer`'s `InferenceArguments`,
    `tarsier-describe`'s): `args` has the `GenerationArguments` and `checkpoint`, `num_frames`, `fps`,
    `max_frames`, `trust_remote_code`; without `--num_frames` / `--fps` the checkpoint's own frame sampling."""
    return InferenceSettings(
        checkpoint=args.checkpoint,
        frame_sampling=inference_sampling(args.num_frames, args.fps, args.max_frames,
                                          default=lambda: default_frame_sampling(args.checkpoint, args.trust_remote_code)),
        system_prompt=args.system_prompt, dtype=args.dtype, generation=args.generation_config(), seed=args.seed,
    )


@consent_boundary
def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit status: 0 when at least one request has a prediction (failures are
    counted and listed), 1 when none has."""
    from transformers import HfArgumentParser

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = HfArgumentParser(InferenceArguments, **help_text(
        "Answer a JSONL of {id, video, prompt} requests with a checkpoint, appending one result line per request "
        "(resumable, sharded over accelerate processes).",
        "tarsier-infer --model_name_or_path tarsier-7b --requests requests.jsonl --output_file predictions.jsonl",
        usage="%(prog)s --model_name_or_path MODEL --requests FILE --output_file FILE [options]"))
    (args,) = parser.parse_args_into_dataclasses(args=argv)
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
