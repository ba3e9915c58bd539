"""Describe videos in batch with a Tarsier checkpoint: files, folders or lists of paths -> JSONL.

    python -m tarsier_hf.inference.describe clip.mp4 more_clips/ list.txt --model_name_or_path path/to/tarsier --output_file descriptions.jsonl
    python -m tarsier_hf.inference.describe videos/ --model_name_or_path ... --num_frames 16 --prompt "Describe the camera motion." \
        --max_new_tokens 256 --do_sample --temperature 0.7
    accelerate launch --multi_gpu --num_processes 4 -m tarsier_hf.inference.describe videos/ --model_name_or_path ... --output_file out.jsonl

Inputs: a video file, a folder (its video files, `--recursive` for sub-folders) or a `.txt` list with one path
per line (relative paths are relative to the list). Each output line is
`{"id", "video", "prompt", "prediction", "num_frames", "frame_indices", "run"}` where `prediction` is the
description and `run` holds the checkpoint, frames and generation settings. A video that cannot be read is
reported with the reason, written as an `{"id", "video", "error"}` line and skipped; the others go on. Results are
appended as they are produced: running the same command again resumes (finished videos are not redone).
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from tarsier_hf.cli import consent_boundary, help_text, renamed
from tarsier_hf.inference.batch import get_state, run_inference, settings_from
from tarsier_hf.inference.engine import DEFAULT_DESCRIPTION_PROMPT, GenerationArguments, VideoRequest
from media_limits_tarsier import VIDEO_EXTENSIONS

LIST_EXTENSIONS = {".txt", ".lst", ".list"}


@dataclass(kw_only=True)
class DescribeArguments(GenerationArguments):
    """Arguments of `python -m tarsier_hf.inference.describe`."""

    checkpoint: str = field(metadata={"help": "Tarsier checkpoint folder or Hub id.",
                                      **renamed("--model_name_or_path", "--checkpoint")})
    output: str = field(default="descriptions.jsonl", metadata={"help": "JSONL file (appended; resumed if present).",
                                                                **renamed("--output_file", "--output")})
    num_frames: int | None = field(default=None, metadata={
        "help": "Frames per video under the checkpoint's own sampling policy (Tarsier: 8 uniform frames, first and last included, §5.1; Tarsier2: 16 by the release's rule)."})
    fps: float | None = field(default=None, metadata={"help": "Sample by rate instead (capped by max_frames)."})
    max_frames: int = field(default=64, metadata={"help": "Cap for --fps."})
    prompt: str = field(default=DEFAULT_DESCRIPTION_PROMPT, metadata={"help": "Instruction given with every video."})
    recursive: bool = field(default=False, metadata={"help": "Look into sub-folders of folder inputs."})
    no_progress: bool = field(default=False, metadata={"help": "Hide the progress bar."})
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Run the checkpoint's own code files instead of this repository's classes."},
    )


def collect_videos(inputs: list[str], recursive: bool = False) -> list[str]:
    """Video paths from files, folders and `.txt` lists, in the given order, without duplicates.

    A folder contributes every entry with a video extension (sorted), whatever it is: a dangling symbolic link or
    a sub-folder named like a video is kept, so it shows up in the output with its error instead of vanishing
    (with `recursive`, sub-folders are searched instead). A list contributes every non-empty, non-comment line.
    Missing inputs raise `FileNotFoundError`; entries are checked later, per video, so one bad entry does not stop
    the batch.
    """
    paths: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            found = sorted(
                p for p in path.glob(pattern)
                if p.suffix.lower() in VIDEO_EXTENSIONS and not (recursive and p.is_dir())
            )
            if not found:
                logging.getLogger(__name__).warning("%s: folder holds no video files", path)
            paths += [str(p) for p in found]
        elif path.suffix.lower() in LIST_EXTENSIONS and path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    entry = Path(line)
                    paths.append(str(entry if entry.is_absolute() else path.parent / entry))
        elif path.exists() or path.is_symlink():
            paths.append(str(path))
        else:
            raise FileNotFoundError(f"{item}: no such video file, folder or list")
    return list(dict.fromkeys(paths))


def describe(inputs: list[str], args: DescribeArguments, model=None, processor=None) -> dict[str, dict]:
    """Describe the videos of `inputs` (files, folders, lists); returns `{video path: record}` (records with
    `prediction` or `error`)."""
    videos = collect_videos(inputs, args.recursive)
    if not videos:
        raise ValueError(f"no videos found in {inputs}")
    requests = [VideoRequest(id=video, video=video, prompt=args.prompt) for video in videos]
    return run_inference(
        requests, args.output, settings_from(args), batch_size=args.batch_size, model=model, processor=processor,
        progress=not args.no_progress, num_workers=args.num_workers, trust_remote_code=args.trust_remote_code,
    )


@consent_boundary
def main(argv: list[str] | None = None) -> int:

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = HfArgumentParser(DescribeArguments, **help_text(
        "Describe videos (files, folders or .txt lists of paths) with a Tarsier or Tarsier2 checkpoint, one JSONL "
        "line per video.",
        "tarsier-describe clips/ --model_name_or_path tarsier-7b --output_file descriptions.jsonl",
        usage="%(prog)s --model_name_or_path MODEL [--output_file FILE] [options] INPUT [INPUT ...]"))
    parser.add_argument("inputs", nargs="+", help="video files, folders, or .txt lists of paths")
    args, positional = parser.parse_args_into_dataclasses(args=argv)
    try:
        results = describe(positional.inputs, args)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not get_state().is_main_process:
        return 0
    failed = [r for r in results.values() if "error" in r]
    print(f"{len(results) - len(failed)} of {len(results)} videos described -> {os.path.abspath(args.output)}")
    if failed:
        print(f"{len(failed)} video(s) skipped:", file=sys.stderr)
        for record in failed:
            print(f"  {record['error']}", file=sys.stderr)
    return 0 if len(failed) < len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
