"""DREAM-S is legible at the tiny model's input: a small probe trained on the model's input pixels of single frames
(not on the generator's state) reads every object's colour, shape and coarse position on held-out frames.

The targets come from the generator's tracks; the probe sees only `TarsierProcessor.preprocess_frames` output at
the recipe's vision-tower resolution, i.e. exactly what the vision tower sees.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dataset_builders.dream_s.build import clip_rng
from dataset_builders.dream_s.render import compute_tracks, render_frames
from dataset_builders.dream_s.scene import heldout_combinations, sample_clip
from dataset_builders.dream_s.vocab import COLOURS, SHAPES

REPO = Path(__file__).resolve().parents[1]
TOWER = json.loads((REPO / "recipes" / "tiny" / "vision_tower.json").read_text())
GRID = 3  # coarse position: a 3 x 3 grid of the image


def _frames_and_targets(split: str, count: int, processor):
    """Model-input pixels `(N, 3, S, S)` of every frame of `count` clips, and per colour slot `(N, 7)` targets:
    `present`, `shape`, `column`, `row` (3 x 3 grid), `clear` (the slot's presence is unambiguous: no shape of a
    colour fading in or out, blending into another colour or crossing the image border) and `scored` (a present
    shape whose position is over a pixel away from a grid line)."""
    heldout = heldout_combinations(0, 0.1)
    colours = list(COLOURS)
    palette = np.array([COLOURS[c] for c in colours], dtype=np.float64)
    margin = GRID / TOWER["image_size"]  # one pixel, in grid cells
    pixels, targets = [], []
    for index in range(count):
        clip = sample_clip(clip_rng(0, split, index), heldout, split, size=64)
        tracks = compute_tracks(clip)
        pixels.append(processor.preprocess_frames(render_frames(clip, tracks=tracks)))
        t = np.zeros((6, clip.num_frames, len(colours)), dtype=np.int64)  # present shape column row clear scored
        t[4] = 1
        for f in range(clip.num_frames):
            for i, spec in enumerate(clip.shapes):
                x = ((tracks.x[f, i] - tracks.cam_x[f]) * tracks.zoom[f] + 0.5) * GRID
                y = ((tracks.y[f, i] - tracks.cam_y[f]) * tracks.zoom[f] + 0.5) * GRID
                exact = np.flatnonzero(np.abs(palette - tracks.colour[f, i]).max(axis=1) < 1.0)
                alpha = tracks.alpha[f, i]
                if alpha < 0.01:
                    continue
                if alpha < 0.99 or not exact.size or not (0 <= x <= GRID and 0 <= y <= GRID):
                    # fading, blending or half outside: every colour it may read as is ambiguous
                    near = np.abs(palette - tracks.colour[f, i]).max(axis=1) < 200
                    t[4, f, near] = 0
                    continue
                slot = int(exact[0])
                t[:4, f, slot] = (1, SHAPES.index(spec.shape), min(int(x), GRID - 1), min(int(y), GRID - 1))
                t[5, f, slot] = abs(x - round(x)) > margin and abs(y - round(y)) > margin
        targets.append(t)
    return torch.cat(pixels), *(torch.from_numpy(np.concatenate([t[k] for t in targets])) for k in range(6))


class Probe(torch.nn.Module):
    """Three strided convolutions and, per colour slot, four linear read-outs (present, shape, column, row)."""

    def __init__(self, side: int, slots: int):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 32, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(32, 64, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(64, 64, 3, stride=2, padding=1), torch.nn.ReLU(), torch.nn.Flatten())
        width = 64 * (side // 8) ** 2
        self.slots = slots
        self.heads = torch.nn.ModuleList(torch.nn.Linear(width, slots * k) for k in (2, len(SHAPES), GRID, GRID))

    def forward(self, pixels):
        h = self.features(pixels)
        return [head(h).view(len(pixels), self.slots, -1) for head in self.heads]


@pytest.mark.slow
def test_a_probe_on_single_frames_reads_colour_shape_and_position(smollm2_dir):
    from transformers import AutoTokenizer

    from processing_tarsier import TarsierProcessor

    processor = TarsierProcessor.from_parts(AutoTokenizer.from_pretrained(smollm2_dir), image_processor="clip",
                                            image_size=TOWER["image_size"], patch_size=TOWER["patch_size"])
    train = _frames_and_targets("train", 400, processor)
    test = _frames_and_targets("test", 60, processor)  # other clips, and the test split's scenes
    torch.manual_seed(0)
    probe = Probe(TOWER["image_size"], len(COLOURS))
    optimizer = torch.optim.Adam(probe.parameters(), lr=2e-3)
    pixels, present, shape, column, row, clear, _ = train
    generator = torch.Generator().manual_seed(0)
    for _ in range(1500):
        batch = torch.randint(len(pixels), (128,), generator=generator)
        logits = probe(pixels[batch])
        mask = present[batch].bool()
        known = clear[batch].bool()
        loss = torch.nn.functional.cross_entropy(logits[0][known], present[batch][known])
        for head, target in zip(logits[1:], (shape, column, row)):
            loss = loss + torch.nn.functional.cross_entropy(head[mask], target[batch][mask])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    pixels, present, shape, column, row, clear, scored = test
    with torch.no_grad():
        logits = probe(pixels)
    mask = scored.bool()
    assert mask.sum() > 500, "too few held-out objects to measure 98%"
    accuracy = {name: (head.argmax(-1)[mask] == target[mask]).float().mean().item()
                for name, head, target in zip(("shape", "column", "row"), logits[1:], (shape, column, row))}
    # colour: for every colour whose presence is unambiguous, the probe says whether a shape of it is there
    accuracy["colour"] = (logits[0].argmax(-1) == present)[clear.bool()].float().mean().item()
    assert min(accuracy.values()) >= 0.98, accuracy
