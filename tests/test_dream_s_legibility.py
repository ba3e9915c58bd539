"""DREAM-S legibility at the tiny model's input: a reader of the model's input pixels of single frames (never of the
generator's state) reads every object's colour, shape and coarse position on frames of held-out clips.

Pixels and targets are `tarsier_hf.dream_s.legibility`'s: real x264 videos written by the DREAM-S builder, decoded by
PyAV, normalised by the tower's image processor; per cell of the 3 x 3 grid of the tower's patches, empty or the
colour and shape of the object whose centre lies in it, scored where the frame defines it.

The reader is closed-form, so the check takes seconds: each pixel is given the nearest palette or background colour,
4-connected regions of one palette colour are the objects (each grown by one pixel, weighted by how far each pixel
is from the background towards the object's colour, which undoes the blocky edges of yuv420p's half-resolution
colour), a region's centre gives its cell and its rotation-invariant 3- and 4-fold moments its shape. The trained
probe of issue #13 (1,200 clips, 4,000 steps, minutes) is `benchmarks/bench_dream_s_legibility.py`.
"""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch

from tarsier_hf.dream_s import BuildConfig, build_dataset
from tarsier_hf.dream_s.legibility import EMPTY, UNSCORED, accuracies, cell_target, cell_targets, load_split
from tarsier_hf.dream_s.scene import GRID
from tarsier_hf.dream_s.vocab import BACKGROUNDS, COLOURS, SHAPES
from video_processing_tarsier import build_image_processor

REPO = Path(__file__).resolve().parents[1]
TOWER = json.loads((REPO / "recipes" / "tiny" / "vision_tower.json").read_text())
GOAL = 0.98  # issue #13: >= 98 % on colour, shape and coarse position
# |sum of w z^k| / sum of w |z|^k over a region (z: position from its centre): 0 for a disc, 0.659 (k = 3) for an
# equilateral triangle and 0.429 (k = 4) for a square, whatever their size and rotation; a region is called a
# triangle or a square from half of that value up
SYMMETRY = {3: ("triangle", 0.659 / 2), 4: ("square", 0.429 / 2)}
MIN_MASS = 12.0  # pixels: the smallest scored object covers ~44 (a shrunk shape, zoomed out); less is an edge's fringe


def _normalised(colours, image_processor) -> torch.Tensor:
    """RGB colours as the image processor normalises them: `(K, 3)`."""
    rgb = torch.tensor(colours, dtype=torch.float32) * image_processor.rescale_factor
    return (rgb - torch.tensor(image_processor.image_mean)) / torch.tensor(image_processor.image_std)


def _regions(classes: np.ndarray) -> np.ndarray:
    """`(T, H, W)` pixel classes (0 background) -> `(T, H, W)` region labels, -1 on the background: pixels of one class
    joined left-right or up-down share the flat index of one of them (min-label propagation with pointer jumping)."""
    flat = classes.reshape(-1)
    foreground = np.flatnonzero(flat > 0)
    compact = np.full(flat.shape, -1, dtype=np.int64)
    compact[foreground] = np.arange(len(foreground))
    width = classes.shape[-1]
    same_right = np.pad((classes[:, :, 1:] == classes[:, :, :-1]) & (classes[:, :, 1:] > 0), ((0, 0), (0, 0), (0, 1)))
    same_down = np.pad((classes[:, 1:] == classes[:, :-1]) & (classes[:, 1:] > 0), ((0, 0), (0, 1), (0, 0)))
    right, down = np.flatnonzero(same_right), np.flatnonzero(same_down)
    u, v = compact[np.concatenate([right, down])], compact[np.concatenate([right + 1, down + width])]
    label = np.arange(len(foreground))
    while True:
        low = np.minimum(label[u], label[v])
        new = label.copy()
        np.minimum.at(new, u, low)
        np.minimum.at(new, v, low)
        new = new[new]
        if np.array_equal(new, label):
            break
        label = new
    out = np.full(flat.shape, -1, dtype=np.int64)
    out[foreground] = foreground[label]
    return out.reshape(classes.shape)


def read_cells(pixels: torch.Tensor, image_processor) -> torch.Tensor:
    """The closed-form reader (module docstring): `(T, 3, S, S)` normalised frames -> `(T, GRID * GRID)` cell
    targets."""
    frames, _, height, width = pixels.shape
    palette = _normalised(list(COLOURS.values()), image_processor)
    backgrounds = _normalised([tone for pair in BACKGROUNDS for tone in pair], image_processor)
    rgb = pixels.permute(0, 2, 3, 1).reshape(-1, 3)
    distance = ((rgb[:, None] - torch.cat([backgrounds, palette])) ** 2).sum(-1)
    nearest = distance.argmin(-1)
    classes = torch.where(nearest >= len(backgrounds), nearest - len(backgrounds) + 1, 0)
    classes = classes.view(frames, height, width).numpy()
    regions = _regions(classes)
    grown = regions.copy()  # each region with the background pixels next to it
    for a, b in ((np.s_[:, 1:], np.s_[:, :-1]), (np.s_[:, :-1], np.s_[:, 1:]),
                 (np.s_[:, :, 1:], np.s_[:, :, :-1]), (np.s_[:, :, :-1], np.s_[:, :, 1:])):
        grown[a] = np.where((grown[a] < 0) & (regions[a] < 0), regions[b], grown[a])
    where = np.flatnonzero(grown.reshape(-1) >= 0)
    ids, member = np.unique(grown.reshape(-1)[where], return_inverse=True)
    colour = classes.reshape(-1)[ids] - 1
    # weight: the pixel's share of the region's colour over the nearest background tone
    pixel, tone = rgb[where], backgrounds[distance[where, :len(backgrounds)].argmin(-1)]
    towards = palette[torch.from_numpy(colour[member])] - tone
    weight = (((pixel - tone) * towards).sum(-1) / (towards ** 2).sum(-1)).clamp(0, 1).double().numpy()
    y, x = (where // width) % height + 0.5, where % width + 0.5
    mass = np.bincount(member, weight)
    cy, cx = np.bincount(member, weight * y) / mass, np.bincount(member, weight * x) / mass
    z = (x - cx[member]) + 1j * (y - cy[member])
    shape = np.full(len(ids), SHAPES.index("circle"))
    for k, (name, threshold) in sorted(SYMMETRY.items()):  # the 3-fold moment (a triangle) decides first
        moment = weight * z ** k
        symmetry = np.hypot(np.bincount(member, moment.real), np.bincount(member, moment.imag)) \
            / np.maximum(np.bincount(member, weight * np.abs(z) ** k), 1e-12)
        shape = np.where((symmetry >= threshold) & (shape == SHAPES.index("circle")), SHAPES.index(name), shape)
    cell = (cy // (height / GRID)).astype(int) * GRID + (cx // (width / GRID)).astype(int)
    predicted = np.full((frames, GRID * GRID), EMPTY, dtype=np.int64)
    for r in np.argsort(mass, kind="stable"):  # the largest region in a cell names it
        if mass[r] >= MIN_MASS:
            predicted[ids[r] // (height * width), cell[r]] = cell_target(int(colour[r]), int(shape[r]))
    return torch.from_numpy(predicted)


@pytest.fixture(scope="module")
def test_frames(tmp_path_factory):
    """Build DREAM-S's held-out split as the tiny recipe does (its video size, two shapes at most, the seed of the
    benchmark's probe): `(N, 3, S, S)` pixels at the model's input and their cell targets."""
    data = tmp_path_factory.mktemp("legibility") / "data"
    build_dataset(BuildConfig(out=str(data), seed=11, num_train=0, num_test=60, size=TOWER["image_size"],
                              max_subjects=2), progress=False)
    image_processor = build_image_processor("clip", TOWER["image_size"])
    return (*load_split(data, "test", image_processor, TOWER["image_size"]), image_processor)


def _read(pixels: torch.Tensor, image_processor) -> torch.Tensor:
    return torch.cat([read_cells(pixels[i:i + 64], image_processor) for i in range(0, len(pixels), 64)])


def test_a_reader_reads_colour_shape_and_position_of_every_object_on_held_out_frames(test_frames):
    """Issue #13's legibility goal: >= 98 % on colour, shape and coarse position of every object on frames of
    held-out clips (measured with this reader: colour 1.0, shape 1.0, position 1.0 on 1,187 objects; on the test
    splits of seeds 12-18 shape 0.9915-0.9991, colour and position 1.0. The trained probe of
    `benchmarks/bench_dream_s_legibility.py`: colour 0.993, shape 0.985, position 0.9998)."""
    pixels, target, image_processor = test_frames
    scores = accuracies(_read(pixels, image_processor), target)
    print("legibility reader on held-out frames:", scores)
    assert scores["objects"] > 1000
    assert min(scores["colour"], scores["shape"], scores["position"]) >= GOAL, scores


def test_the_reader_fails_on_frames_that_do_not_show_the_shapes(test_frames):
    """The check can fail: the same frames at a quarter of the resolution (24 px, then stretched back) no longer
    show which shape is which, and the reader's shape accuracy falls below the goal (measured: 0.853; on seeds 12-18
    0.775-0.820; at 32 px 0.913-0.961, at 48 px 0.981-1.0)."""
    pixels, target, image_processor = test_frames
    coarse = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(pixels, 4), scale_factor=4, mode="nearest")
    scores = accuracies(_read(coarse, image_processor), target)
    print("legibility reader on 24 px frames:", scores)
    assert scores["shape"] < GOAL, scores


def test_cell_targets_follow_the_frame(tmp_path):
    """The targets are facts of the frame: a shape sits in its start cell, a moving shape changes cell, a shape that
    fades in is not scored while it fades."""
    from tarsier_hf.dream_s import ClipSpec, EventSpec, ShapeSpec

    clip = ClipSpec(shapes=[ShapeSpec("red", "square", 0.5, 0.5, 0.08), ShapeSpec("blue", "circle", 1 / 6, 1 / 6, 0.08, visible_at_start=False)],
                    events=[EventSpec(0, "move right", delta=(1 / 3, 0.0)), EventSpec(1, "appear")], num_frames=16)
    targets = cell_targets(clip, TOWER["image_size"])
    red_square = 1 + list(COLOURS).index("red") * len(SHAPES) + SHAPES.index("square")
    blue_circle = 1 + list(COLOURS).index("blue") * len(SHAPES) + SHAPES.index("circle")
    assert targets[0, 4] == red_square and (targets[0, np.arange(9) != 4] == EMPTY).all()
    assert targets[-1, 5] == red_square and targets[-1, 0] == blue_circle and targets[-1, 4] == EMPTY
    fading = [f for f in range(16) if UNSCORED in targets[f, :1]]
    assert fading, "the fade-in frames of the blue circle are not scored"


def test_a_mirrored_frame_keeps_its_objects_in_the_mirrored_cells():
    """The benchmark probe's `flip` moves the cell targets with the pixels: a red square at the top left, mirrored
    left-right, is at the top right, and mirrored top-bottom too, at the bottom right, where the frame's red pixels
    now are."""
    from tarsier_hf.dream_s import ClipSpec, ShapeSpec
    from tarsier_hf.dream_s.render import render_frames

    # benchmarks/ holds scripts, not a package: run the script's definitions by its path
    flip = runpy.run_path(str(REPO / "benchmarks" / "bench_dream_s_legibility.py"), run_name="bench")["flip"]
    size = TOWER["image_size"]
    clip = ClipSpec(shapes=[ShapeSpec("red", "square", 1 / 6, 1 / 6, 0.08)], events=[], num_frames=2)
    pixels = torch.from_numpy(render_frames(clip)).permute(0, 3, 1, 2).float()
    target = torch.from_numpy(cell_targets(clip, size))
    red_square = 1 + list(COLOURS).index("red") * len(SHAPES) + SHAPES.index("square")
    assert target[0, 0] == red_square
    for horizontal, vertical, cell in ((True, False, 2), (False, True, 6), (True, True, 8)):
        flipped_pixels, flipped = flip(pixels, target, horizontal, vertical)
        assert flipped[0, cell] == red_square and (flipped[0, np.arange(9) != cell] == EMPTY).all()
        redness = (flipped_pixels[0, 0] - flipped_pixels[0, 1]).unfold(0, size // GRID, size // GRID).unfold(1, size // GRID, size // GRID)
        assert int(redness.sum((-1, -2)).flatten().argmax()) == cell
