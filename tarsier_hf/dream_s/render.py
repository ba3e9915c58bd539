"""Render a `ClipSpec` to RGB frames with numpy, and compute per-frame object boxes from the same geometry."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .scene import GROW_FACTOR, ROTATION_DEGREES, SHRINK_FACTOR, ClipSpec
from .vocab import BACKGROUNDS, COLOURS

CHECKER_PERIOD = 0.125  # world units per background cell
SQUARE_HALF_SIDE = math.sqrt(math.pi) / 2  # x size: a square with the area of the circle of radius `size`
TRIANGLE_RADIUS = 1.4  # x size: circumradius of the equilateral triangle
# Every camera motion starts from the rest pose (centre 0.5, zoom 1), so the first frame (the single-frame input of
# the released sampling rule) shows nothing of the camera motion; the motion only shows between frames.
PAN_SPAN = 0.08  # camera centre travel of a pan over the clip (well below a move)
ZOOM_FACTOR = 1.15  # zoom at the end of a zoom in (a zoom out ends at 1 / ZOOM_FACTOR): less than grow / shrink


@dataclass
class Tracks:
    """Per-frame state of every shape: arrays of shape `(T, N)` (`colour`: `(T, N, 3)`) and the camera `(T,)`."""

    x: np.ndarray
    y: np.ndarray
    size: np.ndarray
    angle: np.ndarray
    colour: np.ndarray
    alpha: np.ndarray
    cam_x: np.ndarray
    cam_y: np.ndarray
    zoom: np.ndarray
    shot: np.ndarray  # 0 before the cut, 1 after


def frame_times(num_frames: int) -> np.ndarray:
    """Normalised time of every frame, `(T,)`: 0 for the first frame, 1 for the last."""
    return np.linspace(0.0, 1.0, num_frames) if num_frames > 1 else np.zeros(1)


def _progress(t: np.ndarray, t0: float, t1: float) -> np.ndarray:
    p = np.clip((t - t0) / max(t1 - t0, 1e-9), 0.0, 1.0)
    return p * p * (3.0 - 2.0 * p)  # smoothstep: shapes start and stop gently


def compute_tracks(clip: ClipSpec) -> Tracks:
    """Apply the clip's events over time; each event only acts inside its window `clip.event_window(k)`."""
    t = frame_times(clip.num_frames)
    num, n = len(t), len(clip.shapes)
    x = np.tile([s.x for s in clip.shapes], (num, 1)).astype(np.float64)
    y = np.tile([s.y for s in clip.shapes], (num, 1)).astype(np.float64)
    size = np.tile([s.size for s in clip.shapes], (num, 1)).astype(np.float64)
    angle = np.tile([s.angle for s in clip.shapes], (num, 1)).astype(np.float64)
    colour = np.tile(np.array([COLOURS[s.colour] for s in clip.shapes], dtype=np.float64), (num, 1, 1)).reshape(num, n, 3)
    alpha = np.tile([1.0 if s.visible_at_start else 0.0 for s in clip.shapes], (num, 1))
    for k, event in enumerate(clip.events):
        t0, t1 = clip.event_window(k)
        p = _progress(t, t0, t1)
        i = event.subject
        if event.action.startswith("move"):
            x[:, i] += event.delta[0] * p
            y[:, i] += event.delta[1] * p
        elif event.action == "appear":
            alpha[:, i] = p
        elif event.action == "disappear":
            alpha[:, i] *= 1.0 - p
        elif event.action == "grow":
            size[:, i] *= 1.0 + (GROW_FACTOR - 1.0) * p
        elif event.action == "shrink":
            size[:, i] *= 1.0 + (SHRINK_FACTOR - 1.0) * p
        elif event.action == "rotate":
            angle[:, i] += ROTATION_DEGREES[clip.shapes[i].shape] * p
        elif event.action == "change colour":
            new = np.array(COLOURS[event.colour], dtype=np.float64)
            colour[:, i] = colour[:, i] * (1.0 - p[:, None]) + new * p[:, None]
        elif event.action == "collide":
            mid = 0.5 * (t0 + t1)
            approach, bounce = _progress(t, t0, mid), _progress(t, mid, t1)
            x[:, i] += event.delta[0] * (approach - 0.5 * bounce)
            y[:, i] += event.delta[1] * (approach - 0.5 * bounce)
            x[:, event.target] += event.push[0] * bounce
            y[:, event.target] += event.push[1] * bounce
        else:
            raise ValueError(f"unknown action {event.action!r}")

    cam_x, cam_y, zoom = np.full(num, 0.5), np.full(num, 0.5), np.ones(num)
    if clip.camera == "pan left":  # the camera travels left, so the scene drifts right in the image
        cam_x = 0.5 - PAN_SPAN * t
    elif clip.camera == "pan right":
        cam_x = 0.5 + PAN_SPAN * t
    elif clip.camera == "zoom in":
        zoom = ZOOM_FACTOR**t
    elif clip.camera == "zoom out":
        zoom = ZOOM_FACTOR ** (-t)
    elif clip.camera != "static":
        raise ValueError(f"unknown camera motion {clip.camera!r}")
    shot = np.zeros(num, dtype=np.int64)
    cut = clip.cut_time()
    if cut is not None:
        after = t >= cut - 1e-9
        shot[after] = 1
        cam_x = np.where(after, cam_x + clip.cut_jump[0], cam_x)
        cam_y = np.where(after, cam_y + clip.cut_jump[1], cam_y)
        zoom = np.where(after, zoom * clip.cut_jump[2], zoom)
    return Tracks(x, y, size, angle, colour, alpha, cam_x, cam_y, zoom, shot)


def to_image(tracks: Tracks, f: int, points: np.ndarray) -> np.ndarray:
    """World points `(..., 2)` -> normalised image coordinates of frame `f` (0-1 across the view)."""
    return (np.asarray(points) - [tracks.cam_x[f], tracks.cam_y[f]]) * tracks.zoom[f] + 0.5


def triangle_vertices(x: float, y: float, size: float, angle: float) -> np.ndarray:
    """`(3, 2)` vertices of the equilateral triangle (pointing up at angle 0; angles turn clockwise on screen)."""
    radius = TRIANGLE_RADIUS * size
    theta = np.radians(angle - 90.0 + np.array([0.0, 120.0, 240.0]))
    return np.stack([x + radius * np.cos(theta), y + radius * np.sin(theta)], axis=1)


def _outline(kind: str, x: float, y: float, size: float, angle: float) -> np.ndarray:
    """Points whose bounding box is the shape's bounding box, `(P, 2)` in world units."""
    if kind == "circle":
        return np.array([[x - size, y - size], [x + size, y + size]])
    if kind == "square":
        h = SQUARE_HALF_SIDE * size
        c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        corners = np.array([[-h, -h], [h, -h], [h, h], [-h, h]])
        return np.stack([x + corners[:, 0] * c - corners[:, 1] * s, y + corners[:, 0] * s + corners[:, 1] * c], axis=1)
    return triangle_vertices(x, y, size, angle)


def _mask(kind: str, wx: np.ndarray, wy: np.ndarray, x: float, y: float, size: float, angle: float) -> np.ndarray:
    """Boolean `(H, W)` coverage of a shape given pixel-centre world coordinates `wx (W,)`, `wy (H,)`."""
    dx, dy = wx[None, :] - x, wy[:, None] - y
    if kind == "circle":
        return dx * dx + dy * dy <= size * size
    if kind == "square":
        h = SQUARE_HALF_SIDE * size
        c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        return (np.abs(dx * c + dy * s) <= h) & (np.abs(-dx * s + dy * c) <= h)
    v = triangle_vertices(x, y, size, angle)
    inside = np.ones((wy.size, wx.size), dtype=bool)
    for a, b in ((0, 1), (1, 2), (2, 0)):  # same side of all three edges (vertices are in clockwise screen order)
        ex, ey = v[b] - v[a]
        inside &= ex * (wy[:, None] - v[a, 1]) - ey * (wx[None, :] - v[a, 0]) >= 0
    return inside


def render_frames(clip: ClipSpec, supersample: int = 2, tracks: Tracks | None = None) -> np.ndarray:
    """Render the clip.

    Returns:
        `(T, size, size, 3)` uint8 RGB frames; shapes are drawn in index order, later shapes on top.
    """
    tracks = compute_tracks(clip) if tracks is None else tracks
    n = clip.size * supersample
    u = (np.arange(n) + 0.5) / n - 0.5
    frames = np.empty((clip.num_frames, clip.size, clip.size, 3), dtype=np.uint8)
    for f in range(clip.num_frames):
        wx = tracks.cam_x[f] + u / tracks.zoom[f]
        wy = tracks.cam_y[f] + u / tracks.zoom[f]
        palette = np.array(BACKGROUNDS[clip.backgrounds[tracks.shot[f]]], dtype=np.float64)
        cells = (np.floor(wx / CHECKER_PERIOD)[None, :] + np.floor(wy / CHECKER_PERIOD)[:, None]).astype(np.int64) % 2
        image = palette[cells]
        for i, shape in enumerate(clip.shapes):
            a = tracks.alpha[f, i]
            if a <= 0.0:
                continue
            geometry = (tracks.x[f, i], tracks.y[f, i], tracks.size[f, i], tracks.angle[f, i])
            # only the pixels of the shape's bounding box can change (the same image, a fraction of the work)
            corners = to_image(tracks, f, _outline(shape.shape, *geometry))
            (c0, r0), (c1, r1) = np.clip(np.floor(corners.min(axis=0) * n) - 1, 0, n).astype(int), \
                np.clip(np.ceil(corners.max(axis=0) * n) + 1, 0, n).astype(int)
            if c1 <= c0 or r1 <= r0:
                continue
            m = _mask(shape.shape, wx[c0:c1], wy[r0:r1], *geometry)
            weight = (a * m)[..., None]
            image[r0:r1, c0:c1] = image[r0:r1, c0:c1] * (1.0 - weight) + tracks.colour[f, i] * weight
        # the mean of each supersample x supersample block, as a sum of strided views (a multi-axis `mean` of the
        # 5-d reshape took half of the render time)
        image = sum(image[i::supersample, j::supersample] for i in range(supersample) for j in range(supersample)) \
            / supersample ** 2
        frames[f] = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return frames


def compute_boxes(clip: ClipSpec, tracks: Tracks | None = None) -> np.ndarray:
    """Per-frame boxes in normalised image coordinates.

    Returns:
        `(T, N, 4)` float array of `(x1, y1, x2, y2)` in [0, 1] (clipped to the frame); NaN where the shape is
        not visible (opacity below one half, or entirely outside the view).
    """
    tracks = compute_tracks(clip) if tracks is None else tracks
    boxes = np.full((clip.num_frames, len(clip.shapes), 4), np.nan)
    for f in range(clip.num_frames):
        for i, shape in enumerate(clip.shapes):
            if tracks.alpha[f, i] < 0.5:
                continue
            pts = _outline(shape.shape, tracks.x[f, i], tracks.y[f, i], tracks.size[f, i], tracks.angle[f, i])
            img = to_image(tracks, f, pts)
            x1, y1 = np.clip(img.min(axis=0), 0.0, 1.0)
            x2, y2 = np.clip(img.max(axis=0), 0.0, 1.0)
            if x2 > x1 and y2 > y1:
                boxes[f, i] = (x1, y1, x2, y2)
    return boxes
