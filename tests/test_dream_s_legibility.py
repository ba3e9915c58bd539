"""DREAM-S legibility at the tiny model's input: a small probe trained on the model's input pixels of single frames
(never on the generator's state) reads every object's colour, shape and coarse position on frames of held-out clips.

The pixels are what the tiny recipe's vision tower sees: real x264 videos written by the DREAM-S builder, decoded by
PyAV through `load_video`, normalised by the tower's image processor. The targets come from the generator's tracks,
per cell of the 3 x 3 grid of the tower's patches: empty, or the colour and shape of the object whose centre lies in
that cell. A fact is scored where the frame defines it: an object is scored when it is fully opaque, its colour is
one palette colour (not mid-blend in a colour change) and its centre is at least `BORDER_MARGIN` pixels from a cell
border (mid-move the coarse position of a shape on the border is neither cell); an empty cell is scored when no such
ambiguous object is near it, and a cell holding two objects is not scored. Moving, rotating, growing and shrunk objects are all scored.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tarsier_hf.dream_s import BuildConfig, build_dataset
from tarsier_hf.dream_s.build import load_clip_spec
from tarsier_hf.dream_s.render import compute_tracks, to_image
from tarsier_hf.dream_s.scene import GRID
from tarsier_hf.dream_s.vocab import COLOURS, SHAPES
from media_loading_tarsier import load_video
from video_processing_tarsier import build_image_processor, preprocess_frames

REPO = Path(__file__).resolve().parents[1]
TOWER = json.loads((REPO / "recipes" / "tiny" / "vision_tower.json").read_text())
BORDER_MARGIN = 3.0  # pixels at the model's input
UNSCORED, EMPTY = -1, 0  # cell targets: otherwise 1 + colour index * len(SHAPES) + shape index
GOAL = 0.98  # issue #13: >= 98 % on colour, shape and coarse position
# the probe reads what it has seen enough of: with 300 training clips it read shape at 0.82 (train 0.99), with 1,200
# at 0.97; mirrored frames (`_flip`) give it four times the views at no cost (docs/tiny_recipe.md, "legibility")
NUM_TRAIN_CLIPS, STEPS = 1200, 4000


def _cell_targets(clip, size: int) -> np.ndarray:
    """`(T, GRID * GRID)` targets of every frame (see the module docstring)."""
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
                targets[f, index] = UNSCORED if taken else 1 + int(colour[0]) * len(SHAPES) + SHAPES.index(spec.shape)
                continue
            # ambiguous (fading, blending, on a border, leaving the view): no cell it may touch is scored
            for r in range(GRID):
                for c in range(GRID):
                    dx = max(c * cell - x, 0.0, x - (c + 1) * cell)
                    dy = max(r * cell - y, 0.0, y - (r + 1) * cell)
                    if np.hypot(dx, dy) < cell / 2:
                        targets[f, r * GRID + c] = UNSCORED
    return targets


def _load_split(data: Path, split: str, image_processor) -> tuple[torch.Tensor, torch.Tensor]:
    pixels, targets = [], []
    for line in (data / f"clips_{split}.jsonl").read_text().splitlines():
        record = json.loads(line)
        clip = load_clip_spec(record)
        frames = load_video(str(data / record["video"]), indices=list(range(clip.num_frames))).frames
        pixels.append(preprocess_frames(frames, image_processor))
        targets.append(torch.from_numpy(_cell_targets(clip, TOWER["image_size"])))
    return torch.cat(pixels), torch.cat(targets)


class CellProbe(torch.nn.Module):
    """Three full-resolution convolutions with max pooling from `(B, 3, 96, 96)` pixels to a 12 x 12 map, then one
    convolution per 32 px cell (with a margin around it) to two read-outs per cell: `(B, 9, 1 + colours)` (empty or
    the colour) and `(B, 9, shapes)`."""

    def __init__(self, colours: int, shapes: int):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),  # 48
            torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),  # 24
            torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),  # 12
            torch.nn.Conv2d(32, 64, 6, stride=4, padding=1), torch.nn.ReLU())  # 3 x 3, one per cell
        self.colour = torch.nn.Conv2d(64, 1 + colours, 1)
        self.shape = torch.nn.Conv2d(64, shapes, 1)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(pixels)
        return self.colour(h).flatten(2).transpose(1, 2), self.shape(h).flatten(2).transpose(1, 2)


def _flip(pixels: torch.Tensor, target: torch.Tensor, horizontal: bool, vertical: bool):
    """A frame mirrored left-right and/or top-bottom, with its `(B, 9)` cell targets moved to the mirrored cells:
    colour and shape do not change under a mirror (a triangle pointing down is still a triangle)."""
    cells = target.view(-1, GRID, GRID)
    if horizontal:
        pixels, cells = pixels.flip(-1), cells.flip(-1)
    if vertical:
        pixels, cells = pixels.flip(-2), cells.flip(-2)
    return pixels, cells.reshape(target.shape)


def _split_targets(target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell targets -> colour target (0 empty, 1 + colour; -1 unscored) and shape target (-1 where no object)."""
    occupied = target > EMPTY
    colour = torch.where(occupied, torch.div(target - 1, len(SHAPES), rounding_mode="floor") + 1, target)
    shape = torch.where(occupied, (target - 1) % len(SHAPES), torch.full_like(target, UNSCORED))
    return colour, shape


@pytest.fixture(scope="module")
def probe_result(tmp_path_factory):
    """Build DREAM-S as the tiny recipe does (its video size, two shapes at most), train the probe, score it."""
    data = tmp_path_factory.mktemp("legibility") / "data"
    build_dataset(BuildConfig(out=str(data), seed=11, num_train=NUM_TRAIN_CLIPS, num_test=60, size=TOWER["image_size"],
                              max_subjects=2, num_workers=2), progress=False)
    image_processor = build_image_processor("clip", TOWER["image_size"])
    x_train, y_train = _load_split(data, "train", image_processor)
    x_test, y_test = _load_split(data, "test", image_processor)
    torch.manual_seed(0)
    probe = CellProbe(len(COLOURS), len(SHAPES))
    optimiser = torch.optim.AdamW(probe.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=3e-3, total_steps=STEPS)
    generator = torch.Generator().manual_seed(0)
    for _ in range(STEPS):
        batch = torch.randint(len(x_train), (32,), generator=generator)
        horizontal, vertical = torch.randint(2, (2,), generator=generator).tolist()
        pixels, target = _flip(x_train[batch], y_train[batch], bool(horizontal), bool(vertical))
        colour_target, shape_target = _split_targets(target)
        colour_logits, shape_logits = probe(pixels)
        loss = torch.nn.functional.cross_entropy(colour_logits.flatten(0, 1), colour_target.flatten(), ignore_index=UNSCORED) \
            + torch.nn.functional.cross_entropy(shape_logits.flatten(0, 1), shape_target.flatten(), ignore_index=UNSCORED)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
    with torch.no_grad():
        outputs = [probe(x_test[i:i + 256]) for i in range(0, len(x_test), 256)]
    colour = torch.cat([c.argmax(-1) for c, _ in outputs])
    shape = torch.cat([s.argmax(-1) for _, s in outputs])
    predicted = torch.where(colour > EMPTY, 1 + (colour - 1) * len(SHAPES) + shape, colour)  # back to cell targets
    return predicted, y_test


def _accuracies(predicted: torch.Tensor, target: torch.Tensor) -> dict:
    scored, occupied = target != UNSCORED, target > EMPTY
    colour = lambda t: torch.div(t - 1, len(SHAPES), rounding_mode="floor")  # noqa: E731
    shape = lambda t: (t - 1) % len(SHAPES)  # noqa: E731
    hit = predicted[occupied] > EMPTY
    return {
        "objects": int(occupied.sum()),
        "colour": float((hit & (colour(predicted[occupied]) == colour(target[occupied]))).float().mean()),
        "shape": float((hit & (shape(predicted[occupied]) == shape(target[occupied]))).float().mean()),
        # an object is found in its own cell and no cell is taken for an object that is not there
        "position": float(((predicted[scored] > EMPTY) == occupied[scored]).float().mean()),
    }


@pytest.mark.slow
def test_probe_reads_colour_shape_and_position_of_every_object_on_held_out_frames(probe_result):
    """Issue #13's legibility goal: >= 98 % on colour, shape and coarse position of every object on frames of
    held-out clips (measured: colour 0.993, shape 0.985, position 0.9998 on 1,187 objects)."""
    predicted, target = probe_result
    scores = _accuracies(predicted, target)
    print("legibility probe on held-out frames:", scores)
    assert scores["objects"] > 1000
    assert min(scores["colour"], scores["shape"], scores["position"]) >= GOAL, scores


def test_cell_targets_follow_the_frame(tmp_path):
    """The targets are facts of the frame: a shape sits in its start cell, a moving shape changes cell, a shape that
    fades in is not scored while it fades."""
    from tarsier_hf.dream_s import ClipSpec, EventSpec, ShapeSpec

    clip = ClipSpec(shapes=[ShapeSpec("red", "square", 0.5, 0.5, 0.08), ShapeSpec("blue", "circle", 1 / 6, 1 / 6, 0.08, visible_at_start=False)],
                    events=[EventSpec(0, "move right", delta=(1 / 3, 0.0)), EventSpec(1, "appear")], num_frames=16)
    targets = _cell_targets(clip, TOWER["image_size"])
    red_square = 1 + list(COLOURS).index("red") * len(SHAPES) + SHAPES.index("square")
    blue_circle = 1 + list(COLOURS).index("blue") * len(SHAPES) + SHAPES.index("circle")
    assert targets[0, 4] == red_square and (targets[0, np.arange(9) != 4] == EMPTY).all()
    assert targets[-1, 5] == red_square and targets[-1, 0] == blue_circle and targets[-1, 4] == EMPTY
    fading = [f for f in range(16) if UNSCORED in targets[f, :1]]
    assert fading, "the fade-in frames of the blue circle are not scored"


def test_a_mirrored_frame_keeps_its_objects_in_the_mirrored_cells():
    """`_flip` moves the cell targets with the pixels: a red square at the top left, mirrored left-right, is at the
    top right, and mirrored top-bottom too, at the bottom right, where the frame's red pixels now are."""
    from tarsier_hf.dream_s import ClipSpec, ShapeSpec
    from tarsier_hf.dream_s.render import render_frames

    size = TOWER["image_size"]
    clip = ClipSpec(shapes=[ShapeSpec("red", "square", 1 / 6, 1 / 6, 0.08)], events=[], num_frames=2)
    pixels = torch.from_numpy(render_frames(clip)).permute(0, 3, 1, 2).float()
    target = torch.from_numpy(_cell_targets(clip, size))
    red_square = 1 + list(COLOURS).index("red") * len(SHAPES) + SHAPES.index("square")
    assert target[0, 0] == red_square
    for horizontal, vertical, cell in ((True, False, 2), (False, True, 6), (True, True, 8)):
        flipped_pixels, flipped = _flip(pixels, target, horizontal, vertical)
        assert flipped[0, cell] == red_square and (flipped[0, np.arange(9) != cell] == EMPTY).all()
        redness = (flipped_pixels[0, 0] - flipped_pixels[0, 1]).unfold(0, size // GRID, size // GRID).unfold(1, size // GRID, size // GRID)
        assert int(redness.sum((-1, -2)).flatten().argmax()) == cell
