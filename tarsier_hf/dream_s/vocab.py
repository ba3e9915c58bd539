"""The closed vocabulary of DREAM-S: colours, shapes, actions, camera motions and background palettes."""

from __future__ import annotations

# Saturated colours that stay apart after yuv420p chroma subsampling and differ from every background palette.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 70),
    "blue": (50, 100, 245),
    "yellow": (245, 220, 40),
    "purple": (165, 60, 220),
    "orange": (250, 140, 20),
    "pink": (250, 120, 200),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

MOVES: dict[str, tuple[float, float]] = {  # direction -> unit step in image coordinates (y grows downwards)
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
}
# Action labels, as they appear in ground-truth events and in the action-recognition answers.
ACTIONS: tuple[str, ...] = (
    "move left",
    "move right",
    "move up",
    "move down",
    "appear",
    "disappear",
    "grow",
    "shrink",
    "rotate",
    "change colour",
    "collide",
)
CAMERA_MOTIONS: tuple[str, ...] = ("static", "pan left", "pan right", "zoom in", "zoom out")

# Two-tone checkerboards (dim, low saturation) drawn in world coordinates, so camera motion moves them.
BACKGROUNDS: tuple[tuple[tuple[int, int, int], tuple[int, int, int]], ...] = (
    ((62, 62, 70), (92, 92, 104)),
    ((54, 72, 66), (80, 102, 94)),
    ((76, 64, 58), (106, 92, 84)),
)

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def action_supported(shape: str, action: str) -> bool:
    """A circle's rotation is invisible, so the generator never asks for it."""
    return not (shape == "circle" and action == "rotate")
