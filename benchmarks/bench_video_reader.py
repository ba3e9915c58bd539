"""Benchmark: load + sample + preprocess 8 and 16 frames, Tarsier's PyAV reader vs transformers and decord.

Every reader gets the same frame indices (uniform, first and last included) and the same preprocessing
(`TarsierProcessor.preprocess_frames`: stretch to 336x336, CLIP normalisation), so the table compares decoding.

Videos: (a) the shared demo_test.mp4 (1920x800 H.264, 84 frames), (b) a generated 60 s 1280x720 30 fps H.264
clip with a 2 s GOP, (c) the same at 10 minutes. Generated files are cached under ~/.cache/tarsier/bench
(never in the repo). decord is optional (`pip install decord`, benchmark only); without it its column says so.

    python benchmarks/bench_video_reader.py --demo demo_test.mp4   # all three videos, median of 5 runs, markdown table
    python benchmarks/bench_video_reader.py --demo demo_test.mp4 --videos demo --repeats 5
    python benchmarks/bench_video_reader.py --no_baselines --videos 60s 10min --frames 4 8 16 32
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from processing_tarsier import TarsierProcessor
from frame_sampling_tarsier import UniformSampling
from video_reader_tarsier import VideoReader
from transformers import HfArgumentParser

from tarsier_hf.dream_s.video_writer import draw_frame_code, write_video
from tarsier_hf.tiny_recipe.local_llm import materialize_smollm2

CACHE = Path(os.environ.get("TARSIER_CACHE", Path.home() / ".cache" / "tarsier")) / "bench"


@dataclass
class Args:
    videos: list[str] = field(default_factory=lambda: ["demo", "60s", "10min"],
                              metadata={"choices": ["demo", "60s", "10min"], "help": "videos to time"})
    frames: list[int] = field(default_factory=lambda: [8, 16], metadata={"help": "frames sampled per video"})
    repeats: int = field(default=5, metadata={"help": "timed runs per reader (median reported)"})
    baselines: bool = field(default=True, metadata={
        "help": "also time transformers' and decord's readers (--no_baselines: only the Tarsier reader, e.g. its "
                "scaling with --frames 4 8 16 32)"})
    demo: str | None = field(default=None, metadata={"help": "the 'demo' video (the shared demo_test.mp4)"})


def generated_video(seconds: int, width: int = 1280, height: int = 720, fps: int = 30, gop_seconds: int = 2) -> Path:
    """A cached H.264 clip with moving texture and the frame number drawn in its top quarter."""
    path = CACHE / f"bench_{seconds}s_{width}x{height}_{fps}fps_gop{gop_seconds * fps}.mp4"
    if path.is_file() and path.stat().st_size > 0:
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:height, 0 : width + 2 * fps]
    texture = np.stack(
        [127 + 100 * np.sin(xx / 37.0), 127 + 100 * np.sin(yy / 23.0 + xx / 91.0), 127 + 100 * np.cos(yy / 53.0)],
        axis=-1,
    ).astype(np.uint8)

    def frames():
        for index in range(seconds * fps):
            shift = (index * 2) % (2 * fps)
            frame = np.ascontiguousarray(texture[:, shift : shift + width])
            yield draw_frame_code(frame, index, height_fraction=0.25)

    tmp = path.with_suffix(".partial.mp4")
    write_video(tmp, frames(), fps=fps, gop_size=gop_seconds * fps, crf=23)
    os.replace(tmp, path)
    return path


def read_tarsier(path: str, indices: np.ndarray) -> np.ndarray:
    with VideoReader(path) as reader:
        return reader.get_frames(indices)


def read_transformers(path: str, indices: np.ndarray) -> np.ndarray:
    from transformers.video_utils import load_video

    frames, _ = load_video(path, backend="pyav", sample_indices_fn=lambda metadata, **kw: indices)
    return np.asarray(frames)


def read_decord(path: str, indices: np.ndarray) -> np.ndarray:
    import decord

    reader = decord.VideoReader(path, num_threads=1)
    return reader.get_batch(list(map(int, indices))).asnumpy()


def time_readers(readers: dict, path: str, indices: np.ndarray, processor: TarsierProcessor, repeats: dict) -> dict:
    """Median seconds of read + preprocess per reader; readers alternate inside every round so that load from
    other processes on the machine hits them alike. Returns {name: (median_seconds, frames)}."""
    times = {name: [] for name in readers}
    frames = {}
    for round_ in range(max(repeats.values())):
        for name, read in readers.items():
            if round_ >= repeats[name]:
                continue
            start = time.perf_counter()
            frames[name] = read(path, indices)
            processor.preprocess_frames(frames[name])
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(times[name]), frames[name]) for name in readers}


def main(args: Args) -> None:
    from transformers import AutoTokenizer

    processor = TarsierProcessor.from_parts(AutoTokenizer.from_pretrained(materialize_smollm2()), "clip")
    try:
        import decord  # noqa: F401

        have_decord = True
    except ImportError:
        have_decord = False

    if "demo" in args.videos and not args.demo:
        raise SystemExit("--videos demo needs --demo PATH (the shared demo_test.mp4)")
    sources = {"demo": Path(args.demo or ""), "60s": None, "10min": None}
    rows = []
    for name in args.videos:
        path = sources[name] if name == "demo" else generated_video(60 if name == "60s" else 600)
        with VideoReader(path) as reader:
            total, size = reader.num_frames, reader.get_frames([0]).shape[1:3]
        for n in args.frames:
            indices = UniformSampling(n).indices(total)
            readers = {"ours": read_tarsier, "hf": read_transformers} if args.baselines else {"ours": read_tarsier}
            # transformers decodes every frame up to the last wanted one: a single run on long videos is plenty.
            repeats = {"ours": args.repeats, "hf": args.repeats if total < 1000 else 1}
            if have_decord and args.baselines:
                readers["decord"], repeats["decord"] = read_decord, args.repeats
            result = time_readers(readers, str(path), indices, processor, repeats)
            ours, ours_frames = result["ours"]
            row = {"video": f"{name} ({size[1]}x{size[0]}, {total} frames)", "n": n, "ours": ours,
                   "hf": None, "same_hf": None, "decord": None, "same_decord": None}
            if "hf" in result:
                row["hf"], row["same_hf"] = result["hf"][0], np.array_equal(ours_frames, result["hf"][1])
            if "decord" in result:
                row["decord"] = result["decord"][0]
                row["same_decord"] = float(np.abs(ours_frames.astype(int) - result["decord"][1].astype(int)).mean())
            rows.append(row)
            print(f"done {name} n={n}", file=sys.stderr, flush=True)

    print("| video | frames | tarsier (ms) | transformers pyav (ms) | speed-up vs transformers | decord (ms) | "
          "speed-up vs decord | identical to transformers | mean abs diff vs decord |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        hf = f"{r['hf'] * 1000:.0f}" if r["hf"] is not None else "-"
        hf_ratio = f"{r['hf'] / r['ours']:.2f}x" if r["hf"] is not None else "-"
        if r["decord"] is not None:
            dec, dec_ratio = f"{r['decord'] * 1000:.0f}", f"{r['decord'] / r['ours']:.2f}x"
        else:
            dec, dec_ratio = ("not installed" if not have_decord else "-"), "-"
        dec_diff = f"{r['same_decord']:.2f}" if r["same_decord"] is not None else "-"
        same_hf = r["same_hf"] if r["same_hf"] is not None else "-"
        print(f"| {r['video']} | {r['n']} | {r['ours'] * 1000:.0f} | {hf} | {hf_ratio}"
              f" | {dec} | {dec_ratio} | {same_hf} | {dec_diff} |")


if __name__ == "__main__":
    (arguments,) = HfArgumentParser(Args, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
                                    ).parse_args_into_dataclasses()
    main(arguments)
