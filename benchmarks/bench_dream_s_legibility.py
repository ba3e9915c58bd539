"""DREAM-S legibility measured by a trained probe: a small convolutional probe trained on the model's input pixels of
single frames (never on the generator's state) reads every object's colour, shape and coarse position on frames of
held-out clips (docs/tiny_recipe.md, "Legibility probe"; issue #13's goal: >= 98 % on all three).

DREAM-S is built as the tiny recipe builds it (its video size, two shapes at most); pixels and per-cell targets are
`tarsier_hf.dream_s.legibility`'s. The probe trains for `--steps` AdamW steps of 32 frames, each batch mirrored
left-right and/or top-bottom at random, and is scored on every frame of the test clips. Measured with the defaults
(1,200 clips, 4,000 steps; ~150 s on 2 idle cores): colour 0.993, shape 0.985, position 0.9998 on 1,187 objects.
`tests/test_dream_s_legibility.py` checks the same facts in seconds with a closed-form reader of the same pixels.

    python benchmarks/bench_dream_s_legibility.py
    python benchmarks/bench_dream_s_legibility.py --num_train_clips 300 --steps 2000
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser

from tarsier_hf.dream_s import BuildConfig, build_dataset
from tarsier_hf.dream_s.legibility import EMPTY, UNSCORED, accuracies, load_split
from tarsier_hf.dream_s.scene import GRID
from tarsier_hf.dream_s.vocab import COLOURS, SHAPES
from video_processing_tarsier import build_image_processor

REPO = Path(__file__).resolve().parents[1]
TOWER = json.loads((REPO / "recipes" / "tiny" / "vision_tower.json").read_text())
GOAL = 0.98  # issue #13: >= 98 % on colour, shape and coarse position


@dataclass
class Args:
    # the probe reads what it has seen enough of: with 300 training clips it read shape at 0.82 (train 0.99), with
    # 1,200 at 0.97; mirrored frames (`flip`) give it four times the views at no cost
    num_train_clips: int = field(default=1200, metadata={"help": "DREAM-S training clips whose frames train the probe"})
    num_test_clips: int = field(default=60, metadata={"help": "held-out clips whose frames score it"})
    steps: int = field(default=4000, metadata={"help": "AdamW steps of 32 frames"})
    seed: int = field(default=11, metadata={"help": "DREAM-S build seed"})
    num_workers: int = field(default=2, metadata={"help": "processes building DREAM-S"})


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


def flip(pixels: torch.Tensor, target: torch.Tensor, horizontal: bool, vertical: bool):
    """A frame mirrored left-right and/or top-bottom, with its `(B, 9)` cell targets moved to the mirrored cells:
    colour and shape do not change under a mirror (a triangle pointing down is still a triangle)."""
    cells = target.view(-1, GRID, GRID)
    if horizontal:
        pixels, cells = pixels.flip(-1), cells.flip(-1)
    if vertical:
        pixels, cells = pixels.flip(-2), cells.flip(-2)
    return pixels, cells.reshape(target.shape)


def split_targets(target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell targets -> colour target (0 empty, 1 + colour; -1 unscored) and shape target (-1 where no object)."""
    occupied = target > EMPTY
    colour = torch.where(occupied, torch.div(target - 1, len(SHAPES), rounding_mode="floor") + 1, target)
    shape = torch.where(occupied, (target - 1) % len(SHAPES), torch.full_like(target, UNSCORED))
    return colour, shape


def train_and_score(x_train, y_train, x_test, steps: int) -> torch.Tensor:
    """Train a `CellProbe` on `(N, 3, 96, 96)` pixels and their cell targets; its `(M, 9)` cell targets of `x_test`."""
    torch.manual_seed(0)
    probe = CellProbe(len(COLOURS), len(SHAPES))
    optimiser = torch.optim.AdamW(probe.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=3e-3, total_steps=steps)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        batch = torch.randint(len(x_train), (32,), generator=generator)
        horizontal, vertical = torch.randint(2, (2,), generator=generator).tolist()
        pixels, target = flip(x_train[batch], y_train[batch], bool(horizontal), bool(vertical))
        colour_target, shape_target = split_targets(target)
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
    return torch.where(colour > EMPTY, 1 + (colour - 1) * len(SHAPES) + shape, colour)  # back to cell targets


def main() -> None:
    (args,) = HfArgumentParser(Args).parse_args_into_dataclasses()
    size = TOWER["image_size"]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        start = time.perf_counter()
        build_dataset(BuildConfig(out=str(data), seed=args.seed, num_train=args.num_train_clips,
                                  num_test=args.num_test_clips, size=size, max_subjects=2,
                                  num_workers=args.num_workers), progress=False)
        image_processor = build_image_processor("clip", size)
        x_train, y_train = load_split(data, "train", image_processor, size)
        x_test, y_test = load_split(data, "test", image_processor, size)
        built = time.perf_counter() - start
    predicted = train_and_score(x_train, y_train, x_test, args.steps)
    trained = time.perf_counter() - start - built
    scores = accuracies(predicted, y_test)
    print(f"DREAM-S built and decoded in {built:.0f} s, probe trained in {trained:.0f} s ({args.steps} steps)")
    print("legibility probe on held-out frames:", scores)
    print("issue #13 goal (>= 0.98 on colour, shape and position):",
          "met" if min(scores["colour"], scores["shape"], scores["position"]) >= GOAL else "NOT met")


if __name__ == "__main__":
    main()
