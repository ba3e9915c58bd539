"""Scene and event sampling: a clip is 1-3 shapes, 1-4 sequential events, one camera motion and an optional cut.

Coordinates are normalised world units: the camera at rest sees the square [0, 1] x [0, 1], x to the right and
y downwards, so a clip renders identically at any pixel size. `sample_clip` simulates the state of every shape
while it draws events, so each event is feasible (a move stays inside the frame, a collision has room to
happen, nothing acts after it disappeared) and the ground truth is true of the pixels by construction.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from .vocab import ACTIONS, BACKGROUNDS, CAMERA_MOTIONS, COLOURS, MOVES, SHAPES, action_supported

# Legibility (docs/tiny_recipe.md): shapes start at the centres of a GRID x GRID grid of cells, the grid of the tiny
# tower's patches (96 px frames, 32 px patches), so at rest every shape sits inside one patch; a move goes one cell,
# grow / shrink change the size 1.5x, and a rotation ends in a pose that no start pose has (a square becomes a
# diamond, a triangle points down). Sizes are circle radii in frame widths: a medium shape is ~15 px wide at 96 px.
GRID = 3
BOUNDS = (0.16, 0.84)  # where shape centres may be: the cell centres 1/6 .. 5/6, with a little slack
MOVE_DISTANCE = 1.0 / GRID
GROW_FACTOR, SHRINK_FACTOR = 1.5, 0.6
START_SIZES = (0.075, 0.085)  # circle radius at the start (squares and triangles: the same area)
MAX_SIZE, MIN_SIZE = 0.13, 0.045
START_TILT = 8.0  # degrees: squares start upright and triangles pointing up, within this tilt
ROTATION_DEGREES = {"square": 45.0, "triangle": 60.0}  # half a symmetry period: the end pose is the farthest
COLLIDE_PUSH = 0.12  # how far the hit shape slides
MIN_APPROACH = 0.12  # a collision needs visible motion before contact
CLEARANCE = 0.03  # free space kept between shapes that are not colliding
EVENT_MARGIN = 0.06  # share of the clip kept still at each end, so the first frame shows the initial state


@dataclass
class ShapeSpec:
    """One shape: its identity (`colour` `shape`, unique in a clip) and its state at the start of the clip."""

    colour: str
    shape: str
    x: float
    y: float
    size: float  # circle radius; squares and triangles are scaled to a similar area
    angle: float = 0.0  # degrees, clockwise on screen
    visible_at_start: bool = True

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass
class EventSpec:
    """One event. Geometry is resolved at sampling time so rendering is a pure function of the spec."""

    subject: int  # index into `ClipSpec.shapes`
    action: str  # one of `vocab.ACTIONS`
    target: int | None = None  # collide: the shape that is hit
    colour: str | None = None  # change colour: the new colour
    delta: tuple[float, float] = (0.0, 0.0)  # move: displacement; collide: subject's path to contact
    push: tuple[float, float] = (0.0, 0.0)  # collide: displacement of the hit shape


@dataclass
class ClipSpec:
    """Everything needed to render a clip and write its descriptions."""

    shapes: list[ShapeSpec]
    events: list[EventSpec]
    camera: str = "static"  # one of `vocab.CAMERA_MOTIONS`, for the whole clip
    cut_after: int | None = None  # the shot cuts right after this event (0-based), None = one shot
    cut_jump: tuple[float, float, float] = (0.0, 0.0, 1.0)  # camera (dx, dy, zoom factor) applied at the cut
    backgrounds: tuple[int, int] = (0, 1)  # palette index of shot 1 and shot 2
    num_frames: int = 16
    fps: float = 8.0
    size: int = 96

    @property
    def n_shots(self) -> int:
        return 1 if self.cut_after is None else 2

    def event_window(self, k: int) -> tuple[float, float]:
        """Normalised time span `[t0, t1]` (0 = first frame, 1 = last frame) of event `k`."""
        width = (1.0 - 2 * EVENT_MARGIN) / len(self.events)
        return EVENT_MARGIN + k * width, EVENT_MARGIN + (k + 1) * width

    def cut_time(self) -> float | None:
        return None if self.cut_after is None else self.event_window(self.cut_after)[1]

    def gt_events(self) -> list[dict]:
        """Ground-truth events: `{"subject", "action", "object", "order"}` with 1-based `order`."""
        events = []
        for order, event in enumerate(self.events, start=1):
            obj = None
            if event.action == "collide":
                obj = self.shapes[event.target].name
            elif event.action == "change colour":
                obj = event.colour
            events.append({"subject": self.shapes[event.subject].name, "action": event.action, "object": obj, "order": order})
        return events

    def combinations(self) -> set[tuple[str, str, str]]:
        """The (colour, shape, action) triples this clip shows; a collision counts for both shapes."""
        return {triple for event in self.events for triple in event_triples(self, event)}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ClipSpec":
        data = dict(data)
        data["shapes"] = [ShapeSpec(**s) for s in data["shapes"]]
        data["events"] = [EventSpec(**{**e, "delta": tuple(e["delta"]), "push": tuple(e["push"])}) for e in data["events"]]
        data["cut_jump"] = tuple(data["cut_jump"])
        data["backgrounds"] = tuple(data["backgrounds"])
        return cls(**data)


def event_triples(clip: ClipSpec, event: EventSpec) -> list[tuple[str, str, str]]:
    subject = clip.shapes[event.subject]
    triples = [(subject.colour, subject.shape, event.action)]
    if event.action == "collide":
        target = clip.shapes[event.target]
        triples.append((target.colour, target.shape, "collide"))
    return triples


def all_combinations() -> list[tuple[str, str, str]]:
    return [(c, s, a) for c in COLOURS for s in SHAPES for a in ACTIONS if action_supported(s, a)]


def heldout_combinations(seed: int, fraction: float = 0.1, max_per_subject: int = 2) -> set[tuple[str, str, str]]:
    """Pick the (colour, shape, action) triples that only the test split shows.

    At most `max_per_subject` actions per (colour, shape), so every shape keeps most of its actions in training
    and a held-out triple is a new composition of seen parts, never an unseen colour, shape or action.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"heldout fraction must be in [0, 1), got {fraction}")
    triples = all_combinations()
    rng = np.random.default_rng([seed, 7919])
    wanted = int(round(fraction * len(triples)))
    chosen: set[tuple[str, str, str]] = set()
    per_subject: dict[tuple[str, str], int] = {}
    for index in rng.permutation(len(triples)):
        if len(chosen) >= wanted:
            break
        colour, shape, action = triples[index]
        if per_subject.get((colour, shape), 0) >= max_per_subject:
            continue
        per_subject[(colour, shape)] = per_subject.get((colour, shape), 0) + 1
        chosen.add(triples[index])
    return chosen


@dataclass
class _State:
    x: float
    y: float
    size: float
    alive: bool = True  # False after it disappeared
    locked: bool = False  # True after it changed colour: its name would no longer match its look
    touched: bool = False  # took part in an event (so it cannot "appear" any more)


def _centre(index: int) -> float:
    """The normalised coordinate of the centre of grid cell `index` along one axis."""
    return (index + 0.5) / GRID


def _inside(x: float, y: float) -> bool:
    return BOUNDS[0] <= x <= BOUNDS[1] and BOUNDS[0] <= y <= BOUNDS[1]


def _segment_distance(px: float, py: float, x0: float, y0: float, x1: float, y1: float) -> float:
    vx, vy = x1 - x0, y1 - y0
    length2 = vx * vx + vy * vy
    t = 0.0 if length2 == 0 else min(1.0, max(0.0, ((px - x0) * vx + (py - y0) * vy) / length2))
    return math.hypot(px - (x0 + t * vx), py - (y0 + t * vy))


def _clear(states: list[_State], movers: tuple[int, ...], start: tuple[float, float], end: tuple[float, float], size: float) -> bool:
    """True if a shape of radius `size` sweeping from `start` to `end` keeps clear of every other live shape.

    Shapes that have not appeared yet count as obstacles too, so they never appear on top of another one.
    """
    for j, other in enumerate(states):
        if j in movers or not other.alive:
            continue
        if _segment_distance(other.x, other.y, *start, *end) < size + other.size + CLEARANCE:
            return False
    return True


def _candidates(states: list[_State], shapes: list[ShapeSpec], free_colours: list[str]) -> list[EventSpec]:
    """Every feasible event given the current state (change colour's new colour is drawn later)."""
    out: list[EventSpec] = []
    for i, (st, spec) in enumerate(zip(states, shapes)):
        if not st.alive or st.locked:
            continue
        if not st.touched:
            out.append(EventSpec(i, "appear"))
        for direction, (ux, uy) in MOVES.items():
            dx, dy = ux * MOVE_DISTANCE, uy * MOVE_DISTANCE
            if _inside(st.x + dx, st.y + dy) and _clear(states, (i,), (st.x, st.y), (st.x + dx, st.y + dy), st.size):
                out.append(EventSpec(i, f"move {direction}", delta=(dx, dy)))
        out.append(EventSpec(i, "disappear"))
        if st.size * GROW_FACTOR <= MAX_SIZE and _clear(states, (i,), (st.x, st.y), (st.x, st.y), st.size * GROW_FACTOR):
            out.append(EventSpec(i, "grow"))
        if st.size * SHRINK_FACTOR >= MIN_SIZE:
            out.append(EventSpec(i, "shrink"))
        if action_supported(spec.shape, "rotate"):
            out.append(EventSpec(i, "rotate"))
        if free_colours:
            out.append(EventSpec(i, "change colour"))
        for j, other in enumerate(states):
            if j == i or not other.alive or other.locked:
                continue
            dist = math.hypot(other.x - st.x, other.y - st.y)
            approach = dist - (st.size + other.size)
            if approach < MIN_APPROACH:
                continue
            ux, uy = (other.x - st.x) / dist, (other.y - st.y) / dist
            pushed = (other.x + ux * COLLIDE_PUSH, other.y + uy * COLLIDE_PUSH)
            contact = (st.x + ux * approach, st.y + uy * approach)
            if not _inside(*pushed):
                continue
            if not (_clear(states, (i, j), (st.x, st.y), contact, st.size) and _clear(states, (i, j), (other.x, other.y), pushed, other.size)):
                continue
            out.append(EventSpec(i, "collide", target=j, delta=(ux * approach, uy * approach), push=(ux * COLLIDE_PUSH, uy * COLLIDE_PUSH)))
    return out


def _apply(event: EventSpec, states: list[_State], shapes: list[ShapeSpec]) -> None:
    st = states[event.subject]
    st.touched = True
    if event.action.startswith("move"):
        st.x, st.y = st.x + event.delta[0], st.y + event.delta[1]
    elif event.action == "appear":
        shapes[event.subject].visible_at_start = False
    elif event.action == "disappear":
        st.alive = False
    elif event.action == "grow":
        st.size *= GROW_FACTOR
    elif event.action == "shrink":
        st.size *= SHRINK_FACTOR
    elif event.action == "change colour":
        st.locked = True
    elif event.action == "collide":
        other = states[event.target]
        other.touched = True
        # the subject bounces back halfway along its approach; the hit shape slides on
        st.x, st.y = st.x + 0.5 * event.delta[0], st.y + 0.5 * event.delta[1]
        other.x, other.y = other.x + event.push[0], other.y + event.push[1]


def _try_sample(
    rng: np.random.Generator,
    heldout: set[tuple[str, str, str]],
    split: str,
    max_subjects: int,
    max_events: int,
    cut_prob: float,
    static_camera_prob: float,
    **render_kwargs,
) -> ClipSpec | None:
    n_subjects = int(rng.integers(1, max_subjects + 1))
    n_events = int(rng.integers(1, max_events + 1))
    colours = [str(c) for c in rng.choice(list(COLOURS), n_subjects, replace=False)]
    kinds = [str(s) for s in rng.choice(SHAPES, n_subjects)]
    shapes: list[ShapeSpec] = []
    used: set[int] = set()  # grid cells taken by earlier shapes
    for colour, kind in zip(colours, kinds):
        free = [cell for cell in range(GRID * GRID) if cell not in used]
        cell = free[int(rng.integers(len(free)))]
        used.add(cell)
        x, y = _centre(cell % GRID), _centre(cell // GRID)
        angle = float(rng.uniform(-START_TILT, START_TILT)) if kind != "circle" else 0.0
        shapes.append(ShapeSpec(colour, kind, float(x), float(y), float(rng.uniform(*START_SIZES)), angle))
    states = [_State(s.x, s.y, s.size) for s in shapes]
    free_colours = [c for c in COLOURS if c not in colours]
    forced = int(rng.integers(n_events)) if split == "test" else None
    clip = ClipSpec(shapes=shapes, events=[], **render_kwargs)
    for k in range(n_events):
        seen = {(e.subject, e.action, e.target) for e in clip.events}
        # an event never repeats exactly (change colour cannot repeat anyway), so every event is a unique key
        candidates = [e for e in _candidates(states, shapes, free_colours) if (e.subject, e.action, e.target) not in seen]
        # training never shows a held-out triple; a test clip shows one at its forced slot (others are free)
        if k == forced:
            candidates = [e for e in candidates if _is_heldout(clip, e, heldout)]
        elif split == "train":
            candidates = [e for e in candidates if not _is_heldout(clip, e, heldout)]
        if not candidates:
            return None
        # draw the action first so rarer actions (collide, appear) are not drowned by the many move options
        actions = sorted({e.action for e in candidates}, key=ACTIONS.index)
        action = actions[int(rng.integers(len(actions)))]
        options = [e for e in candidates if e.action == action]
        event = options[int(rng.integers(len(options)))]
        if event.action == "change colour":
            event.colour = free_colours.pop(int(rng.integers(len(free_colours))))
        _apply(event, states, shapes)
        clip.events.append(event)
    clip.camera = "static" if rng.random() < static_camera_prob else str(rng.choice(CAMERA_MOTIONS[1:]))
    if n_events >= 2 and rng.random() < cut_prob:
        clip.cut_after = int(rng.integers(0, n_events - 1))
        dx, dy = rng.uniform(-0.07, 0.07, size=2)
        clip.cut_jump = (float(dx), float(dy), float(rng.choice([0.87, 1.15])))
    first = int(rng.integers(len(BACKGROUNDS)))
    clip.backgrounds = (first, (first + 1 + int(rng.integers(len(BACKGROUNDS) - 1))) % len(BACKGROUNDS))
    return clip


def _is_heldout(clip: ClipSpec, event: EventSpec, heldout: set) -> bool:
    return any(t in heldout for t in event_triples(clip, event))


def sample_clip(
    rng: np.random.Generator,
    heldout: set[tuple[str, str, str]] = frozenset(),
    split: str = "train",
    *,
    max_subjects: int = 2,
    max_events: int = 3,
    cut_prob: float = 0.25,
    static_camera_prob: float = 0.4,
    num_frames: int = 16,
    fps: float = 8.0,
    size: int = 96,
    max_tries: int = 500,
) -> ClipSpec:
    """Draw one clip.

    Args:
        rng: the clip's own generator (the builder seeds one per clip, so clips are independent of each other).
        heldout: (colour, shape, action) triples reserved for the test split.
        split: `"train"` never shows a held-out triple; `"test"` shows at least one; `"any"` ignores them.
    """
    if split not in ("train", "test", "any"):
        raise ValueError(f"split must be 'train', 'test' or 'any', got {split!r}")
    if split == "test" and not heldout:
        raise ValueError("a test split needs held-out combinations (heldout fraction > 0)")
    for _ in range(max_tries):
        clip = _try_sample(
            rng, heldout, split, max_subjects, max_events, cut_prob, static_camera_prob,
            num_frames=num_frames, fps=fps, size=size,
        )
        if clip is not None:
            return clip
    raise RuntimeError(f"could not sample a feasible {split} clip in {max_tries} tries (too many held-out combinations?)")
