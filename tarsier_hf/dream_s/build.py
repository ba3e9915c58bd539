"""Build a DREAM-S dataset folder: videos, stage-1 / stage-2 / test JSONL, per-clip ground truth and info.json."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from functools import partial
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from tarsier_hf.cli import renamed

from .video_writer import write_video
from .grammar import camera_description, detailed_description, frame_caption, frame_labels, short_description
from .render import compute_boxes, compute_tracks, render_frames
from .scene import ClipSpec, all_combinations, heldout_combinations, sample_clip
from .tasks import stage1_rows, stage2_rows, test_row

SPLIT_CODES = {"train": 0, "test": 1}
GRAMMAR_VERSION = 2


@dataclass
class BuildConfig:
    """Options of `python -m tarsier_hf.dream_s` (every field is a `--flag`)."""

    out: str = field(metadata={"help": "output folder (created; files in it are overwritten)",
                               **renamed("--output_dir", "--out")})
    seed: int = field(default=0, metadata={"help": "everything (scenes, prompts, held-out combinations) follows from it"})
    num_train: int = field(default=300, metadata={"help": "train clips (5 stage-1 rows and 3 stage-2 rows each)"})
    num_test: int = field(default=60, metadata={"help": "held-out test clips (one test row each)"})
    num_frames: int = field(default=16, metadata={"help": "frames per clip"})
    stage0_frames_per_clip: int = field(default=16, metadata={
        "help": "frames of each train clip listed in stage0.jsonl (a seeded random subset when below --num-frames)"})
    size: int = field(default=96, metadata={"help": "frame side in pixels (even)"})
    fps: float = field(default=8.0, metadata={"help": "frame rate written in the videos"})
    heldout_fraction: float = field(default=0.1, metadata={"help": "share of (colour, shape, action) triples only the test split shows"})
    max_subjects: int = field(default=2, metadata={"help": "most shapes per clip (1-3)"})
    max_events: int = field(default=3, metadata={"help": "most events per clip (1-4)"})
    cut_prob: float = field(default=0.25, metadata={"help": "probability of one shot cut (clips with 2+ events)"})
    static_camera_prob: float = field(default=0.4, metadata={"help": "probability of a still camera (else pan or zoom)"})
    supersample: int = field(default=2, metadata={"help": "render at this multiple of --size and average down (anti-aliasing)"})
    crf: int = field(default=0, metadata={
        "help": "x264 constant rate factor; 0 (the default) is lossless: the decoded pixels are the rendered frames in "
                "yuv420p, whatever the encoder decides, so they do not depend on the machine (docs/tiny_recipe.md)"})
    num_workers: int = field(default=1, metadata={"help": "processes rendering and encoding clips (output is identical)"})

    def validate(self) -> None:
        if self.num_train < 0 or self.num_test < 0:
            raise ValueError(f"--num-train/--num-test must be >= 0, got {self.num_train}/{self.num_test}")
        if self.size < 16 or self.size % 2:
            raise ValueError(f"--size must be an even number >= 16 (yuv420p needs even sides), got {self.size}")
        if self.num_frames < 2 * self.max_events:
            raise ValueError(f"--num-frames must be >= 2 * --max-events = {2 * self.max_events}, got {self.num_frames}")
        if not 1 <= self.max_subjects <= 3 or not 1 <= self.max_events <= 4:
            raise ValueError("--max-subjects must be in [1, 3] and --max-events in [1, 4]")
        if self.num_test and self.heldout_fraction <= 0:
            raise ValueError("a test split needs --heldout-fraction > 0 (test clips show held-out combinations)")
        if not (0.0 <= self.cut_prob <= 1.0 and 0.0 <= self.static_camera_prob <= 1.0):
            raise ValueError("--cut-prob and --static-camera-prob must be probabilities in [0, 1]")
        if not 1 <= self.stage0_frames_per_clip <= self.num_frames:
            raise ValueError(f"--stage0-frames-per-clip must be in [1, --num-frames], got {self.stage0_frames_per_clip}")
        if self.fps <= 0 or self.supersample < 1 or self.num_workers < 1:
            raise ValueError("--fps must be > 0, --supersample and --num-workers >= 1")


def clip_rng(seed: int, split: str, index: int, stream: int = 0) -> np.random.Generator:
    """One generator per clip (stream 0: the scene, stream 1: prompts), so clips are independent and workers
    can build them in any order with the same result."""
    return np.random.default_rng([seed, SPLIT_CODES[split], index, stream])


def video_path(split: str, index: int) -> str:
    return f"videos/{split}/{index:06d}.mp4"


def build_clip(config: BuildConfig, heldout: set, split: str, index: int) -> dict:
    """Sample, render and encode one clip; return its rows and ground-truth record."""
    clip = sample_clip(
        clip_rng(config.seed, split, index),
        heldout,
        split,
        max_subjects=config.max_subjects,
        max_events=config.max_events,
        cut_prob=config.cut_prob,
        static_camera_prob=config.static_camera_prob,
        num_frames=config.num_frames,
        fps=config.fps,
        size=config.size,
    )
    tracks = compute_tracks(clip)
    frames = render_frames(clip, supersample=config.supersample, tracks=tracks)
    boxes = compute_boxes(clip, tracks=tracks)
    video = video_path(split, index)
    # Lossless by default (crf 0): x264's bytes for the same frames were seen to differ from one encode to the next
    # under load (with B-frames often, with one thread and none rarely); lossless, its decisions no longer reach the pixels.
    write_video(Path(config.out) / video, frames, fps=config.fps, codec="libx264", crf=config.crf, max_b_frames=0)
    idx = f"dream_s/{split}/{index:06d}"
    record = {
        "idx": idx,
        "split": split,
        "video": video,
        "events": clip.gt_events(),
        "descriptions": {
            "detailed": detailed_description(clip),
            "short": short_description(clip),
            "camera": camera_description(clip),
        },
        "camera": clip.camera,
        "n_shots": clip.n_shots,
        "shapes": [s.name for s in clip.shapes],
        # (T, N, 4) normalised [x1, y1, x2, y2] per frame and shape; null where the shape is not visible
        "boxes": [[None if np.isnan(b).any() else [round(float(v), 4) for v in b] for b in frame] for frame in boxes],
        "combinations": sorted(list(t) for t in clip.combinations()),
        "spec": clip.to_dict(),
    }
    task_rng = clip_rng(config.seed, split, index, stream=1)
    if split == "train":
        # fewer frames from more clips: the same number of frames teaches the tower more (docs/tiny_recipe.md)
        chosen = range(clip.num_frames)
        if config.stage0_frames_per_clip < clip.num_frames:
            chosen = sorted(int(f) for f in clip_rng(config.seed, split, index, stream=2).choice(
                clip.num_frames, config.stage0_frames_per_clip, replace=False))
        frames_rows = [{"video": video, "frame": f, "labels": frame_labels(clip, tracks, f, config.size),
                        "caption": frame_caption(clip, tracks, f)} for f in chosen]
        return {"record": record, "stage0": frames_rows, "stage1": stage1_rows(clip, task_rng, video, idx, boxes),
                "stage2": stage2_rows(clip, task_rng, video, idx)}
    return {"record": record, "test": [test_row(clip, video, idx)]}


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def build_dataset(config: BuildConfig, progress: bool = True) -> dict:
    """Generate the dataset under `config.out`; returns the content of `info.json`.

    Files (paths inside rows are relative to `config.out`):
        videos/{train,test}/NNNNNN.mp4, stage0.jsonl (the facts of every train frame), stage1.jsonl, stage2.jsonl,
        test.jsonl,
        clips_train.jsonl, clips_test.jsonl (full ground truth per clip), info.json.
    """
    config.validate()
    out = Path(config.out)
    for split in SPLIT_CODES:
        (out / "videos" / split).mkdir(parents=True, exist_ok=True)
    heldout = heldout_combinations(config.seed, config.heldout_fraction)
    jobs = [("train", i) for i in range(config.num_train)] + [("test", i) for i in range(config.num_test)]
    worker = partial(_build_job, config, heldout)
    results: list[dict] = []
    bar = tqdm(total=len(jobs), desc="DREAM-S clips", unit="clip", disable=not progress)
    if config.num_workers > 1 and len(jobs) > 1:
        with get_context("spawn").Pool(config.num_workers) as pool:
            chunk = max(1, math.ceil(len(jobs) / (8 * config.num_workers)))
            for result in pool.imap(worker, jobs, chunksize=chunk):  # imap keeps job order: same files as serial
                results.append(result)
                bar.update()
    else:
        for job in jobs:
            results.append(worker(job))
            bar.update()
    bar.close()

    train = [r for r in results if r["record"]["split"] == "train"]
    test = [r for r in results if r["record"]["split"] == "test"]
    _write_jsonl(out / "stage0.jsonl", [row for r in train for row in r["stage0"]])
    _write_jsonl(out / "stage1.jsonl", [row for r in train for row in r["stage1"]])
    _write_jsonl(out / "stage2.jsonl", [row for r in train for row in r["stage2"]])
    _write_jsonl(out / "test.jsonl", [row for r in test for row in r["test"]])
    _write_jsonl(out / "clips_train.jsonl", [r["record"] for r in train])
    _write_jsonl(out / "clips_test.jsonl", [r["record"] for r in test])
    info = {
        "name": "DREAM-S",
        "grammar_version": GRAMMAR_VERSION,
        "config": asdict(config) | {"out": None},  # no path: builds with the same options are byte-identical
        "counts": {
            "train_clips": len(train),
            "test_clips": len(test),
            "stage0_rows": sum(len(r["stage0"]) for r in train),
            "stage1_rows": sum(len(r["stage1"]) for r in train),
            "stage2_rows": sum(len(r["stage2"]) for r in train),
            "test_rows": len(test),
        },
        "heldout_combinations": sorted(list(t) for t in heldout),
        "num_combinations": len(all_combinations()),
        "files": ["stage0.jsonl", "stage1.jsonl", "stage2.jsonl", "test.jsonl", "clips_train.jsonl", "clips_test.jsonl"],
    }
    with open(out / "info.json", "w", encoding="utf-8") as f:
        json.dump(info, f, indent=1)
    return info


def _build_job(config: BuildConfig, heldout: set, job: tuple[str, int]) -> dict:
    return build_clip(config, heldout, *job)


def load_clip_spec(record: dict) -> ClipSpec:
    """Rebuild the `ClipSpec` of a `clips_*.jsonl` record (to re-render a clip exactly)."""
    return ClipSpec.from_dict(record["spec"])
