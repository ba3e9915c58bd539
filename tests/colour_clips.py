"""Colour clips for training and scoring tests: four single-colour videos with a moving bar, and their rows."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from tarsier_hf.dream_s.video_writer import write_video

COLORS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "white": (240, 240, 240)}
BAD_FILES = ("videos/corrupt.mp4", "videos/missing.mp4")


def conversation_row(video: str, answer: str, idx, source="colors", prompt="Describe the video."):
    return {
        "messages": [
            {"role": "user", "content": [{"type": "video", "path": video}, {"type": "text", "text": prompt}]},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ],
        "task": "caption_short",
        "source": source,
        "idx": idx,
    }


def write_colour_clips(root: Path) -> Path:
    """Four single-colour clips (a memorisation set), one corrupt file, one missing file, and JSONL files."""
    (root / "videos").mkdir()
    rows = []
    for i, (name, colour) in enumerate(COLORS.items()):
        frames = [np.full((32, 32, 3), colour, np.uint8) for _ in range(12)]
        for t, frame in enumerate(frames):  # a moving bar, so frames differ in time
            frame[:, (t * 2) % 32 : (t * 2) % 32 + 4] = 0
        write_video(root / "videos" / f"{name}.mp4", frames, fps=6)
        rows.append(conversation_row(f"videos/{name}.mp4", f"The screen stays {name}.", i))
    (root / "videos" / "corrupt.mp4").write_bytes(os.urandom(3000))
    bad = [conversation_row(path, "Never trained.", 100 + i, source="bad") for i, path in enumerate(BAD_FILES)]
    (root / "good.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "with_bad.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows + bad))
    return root
