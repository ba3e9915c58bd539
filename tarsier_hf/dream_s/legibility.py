"""What a DREAM-S frame shows at the tiny model's input, per cell of the tower's patch grid, and how a reader of it
is scored: the ground truth of the legibility checks (`tests/test_dream_s_legibility.py`, a closed-form reader;
`benchmarks/bench_dream_s_legibility.py`, a trained convolutional probe).

The pixels are what the tiny recipe's vision tower sees: real x264 videos written by the DREAM-S builder, decoded by
PyAV through `load_video`, normalised by the tower's image processor. The targets come from the generator's tracks,
per cell of the `GRID` x `GRID` grid of the tower's patches: empty, or the colour and shape of the object whose centre
lies in that cell. A fact is scored where the frame defines it: an object is scored when it is fully opaque, its
colour is one palette colour (not mid-blend in a colour change) and its centre is at least `BORDER_MARGIN` pixels from
a cell border (mid-move the coarse position of a shape on the border is neither cell); an empty cell is scored when no
such ambiguous object is near it, and a cell holding two objects is not scored. Moving, rotating, growing and shrunk
objects are all scored.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from media_loading_tarsier import load_video
from video_processing_tarsier import preprocess_frames

from .build import load_clip_spec
from .render import compute_tracks, to_image
from .scene import ClipSpec, GRID
from .vocab import COLOURS, SHAPES

BORDER_MARGIN = 3.0  # pixels at the model's input
UNSCORED, EMPTY = -1, 0  # cell targets: otherwise `cell_target(colour index, shape index)`


def cell_target(colour: int, shape: int) -> int:
    """The target of a cell holding the object of palette colour `colour` and shape `shape` (indices)."""
    return 1 + colour * len(SHAPES) + shape


def cell_targets(clip: ClipSpec, size: int) -> np.ndarray:
    """`(T, GRID * GRID)` targets of every frame of `clip` rendered at `size` pixels (see the module docstring)."""
    tracks = compute_tracks(clip)
    palette = np.array(list(COLOURS.values()), dtype=np.float64)
    cell = size / GRID
    targets = np.full((clip.num_frames, GRID * GRID), EMPTY, dtype=np.int64)
    for f in range(clip.num_frames):
        for i, spec in enumerate(clip.shapes):
            alpha = tracks.alpha[f, i]
            if alpha <= 0.0:
                continue
            x, y = to_image(tracks, f, (tracks.x[f, i], tracks.y[f, i])) * size
            colour = np.flatnonzero(np.abs(palette - tracks.colour[f, i]).max(axis=1) < 0.5)
            near_border = min(abs(x / cell - round(x / cell)), abs(y / cell - round(y / cell))) * cell < BORDER_MARGIN
            inside = 0 <= x < size and 0 <= y < size
            if alpha >= 1.0 and colour.size and not near_border and inside:
                index = int(y // cell) * GRID + int(x // cell)
                # two shapes in one cell (a collision) have no single answer: the cell is not scored
                taken = targets[f, index] != EMPTY
                targets[f, index] = UNSCORED if taken else cell_target(int(colour[0]), SHAPES.index(spec.shape))
                continue
            # ambiguous (fading, blending, on a border, leaving the view): no cell it may touch is scored
            for r in range(GRID):
                for c in range(GRID):
                    dx = max(c * cell - x, 0.0, x - (c + 1) * cell)
                    dy = max(r * cell - y, 0.0, y - (r + 1) * cell)
                    if np.hypot(dx, dy) < cell / 2:
                        targets[f, r * GRID + c] = UNSCORED
    return targets


def load_split(data: Path, split: str, image_processor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every frame of every clip of a built DREAM-S `split` at the model's input and its cell targets:
    `(N, 3, size, size)` normalised pixels and `(N, GRID * GRID)` targets, clip after clip."""
    pixels, targets = [], []
    for line in (data / f"clips_{split}.jsonl").read_text().splitlines():
        record = json.loads(line)
        clip = load_clip_spec(record)
        frames = load_video(str(data / record["video"]), indices=list(range(clip.num_frames))).frames
        pixels.append(preprocess_frames(frames, image_processor))
        targets.append(torch.from_numpy(cell_targets(clip, size)))
    return torch.cat(pixels), torch.cat(targets)


def accuracies(predicted: torch.Tensor, target: torch.Tensor) -> dict:
    """Scores of `(N, GRID * GRID)` predicted cell targets: the number of scored objects, the share of them read
    with the right colour and with the right shape (in their own cell), and the share of scored cells whose
    occupancy is right (an object is found in its own cell and no cell is taken for an object that is not there)."""
    scored, occupied = target != UNSCORED, target > EMPTY
    colour = lambda t: torch.div(t - 1, len(SHAPES), rounding_mode="floor")  # noqa: E731
    shape = lambda t: (t - 1) % len(SHAPES)  # noqa: E731
    hit = predicted[occupied] > EMPTY
    return {
        "objects": int(occupied.sum()),
        "colour": float((hit & (colour(predicted[occupied]) == colour(target[occupied]))).float().mean()),
        "shape": float((hit & (shape(predicted[occupied]) == shape(target[occupied]))).float().mean()),
        "position": float(((predicted[scored] > EMPTY) == occupied[scored]).float().mean()),
    }
