"""The closed grammar of DREAM-S descriptions and its exact parser.

Event clauses (`S` = "the <colour> <shape>"):

    S moves left|right|up|down        S appears        S disappears        S grows bigger
    S shrinks        S rotates        S turns <colour>        S collides with S' and they bounce apart

Descriptions:
- detailed: "At the start, there is/are <shapes>." (or "At the start, the scene is empty."), each shape with its
  place in the first frame ("a red circle at the top left"), then one sentence per event in order, opened by
  "First, " / "Then, " / "After that, " / "Finally, " when there are several events, "The scene cuts to another
  shot." between the two events a cut separates, where the shapes are in the last frame ("At the end, the red
  circle is at the top centre." or "At the end, the scene is empty."), and a camera sentence: "The camera stays
  still." / "The camera pans left|right." / "The camera zooms in|out." Places are the cells of the 3x3 scene grid
  in image coordinates: "top left" ... "centre" ... "bottom right".
- one sentence: the event clauses joined by ", then ".
- camera: the camera sentence and "There are no cuts." or "There is one cut."

`parse_description` inverts every description of this grammar: it lower-cases, collapses whitespace, accepts
"color" for "colour", splits sentences on . ! ? ; and newlines and clauses on ", then" / "and then", and matches
each clause exactly. A clause outside the grammar is kept in `unmatched`; the parser never raises on text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .render import CHECKER_PERIOD, compute_tracks
from .scene import ClipSpec
from .vocab import COLOURS, NUMBER_WORDS, SHAPES

CONNECTIVES = {1: [""], 2: ["First, ", "Then, "], 3: ["First, ", "Then, ", "Finally, "], 4: ["First, ", "Then, ", "After that, ", "Finally, "]}
CUT_SENTENCE = "The scene cuts to another shot."
CAMERA_SENTENCES = {
    "static": "The camera stays still.",
    "pan left": "The camera pans left.",
    "pan right": "The camera pans right.",
    "zoom in": "The camera zooms in.",
    "zoom out": "The camera zooms out.",
}


def _np(name: str) -> str:
    return f"the {name}"


# The clause of each action: {s} the subject's noun phrase, {o} the object as given, {on} the object's noun phrase.
_CLAUSES = {
    "appear": "{s} appears",
    "disappear": "{s} disappears",
    "grow": "{s} grows bigger",
    "shrink": "{s} shrinks",
    "rotate": "{s} rotates",
    "change colour": "{s} turns {o}",
    "collide": "{s} collides with {on} and they bounce apart",
}


def event_clause(event: dict) -> str:
    """The clause of one ground-truth event (lower case, no final period)."""
    subject, action, obj = _np(event["subject"]), event["action"], event.get("object")
    if action.startswith("move "):
        return f"{subject} moves {action[5:]}"
    if action not in _CLAUSES:
        raise ValueError(f"unknown action {action!r}")
    return _CLAUSES[action].format(s=subject, o=obj, on=_np(obj) if obj is not None else None)


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def _list_phrase(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def place_name(row: str, column: str) -> str:
    """A cell of the 3x3 scene grid in words: "top left", ..., "centre" (not "middle centre"), ..., "bottom right"."""
    return "centre" if (row, column) == ("middle", "centre") else f"{row} {column}"


def _places(clip: ClipSpec, tracks, frame: int) -> dict[int, str]:
    """Shape index -> its cell in one frame ("top left", "centre", ...) for the shapes `frame_objects` sees."""
    return {o["index"]: place_name(o["row"], o["column"]) for o in frame_objects(clip, tracks, frame)}


def intro_sentence(clip: ClipSpec, tracks=None) -> str:
    """The shapes of the first frame, each with its place (`tracks`: `render.compute_tracks(clip)`, computed if not
    given)."""
    places = _places(clip, compute_tracks(clip) if tracks is None else tracks, 0)
    visible = [f"{'an' if s.colour[0] in 'aeiou' else 'a'} {s.name}" + (f" at the {places[i]}" if i in places else "")
               for i, s in enumerate(clip.shapes) if s.visible_at_start]
    if not visible:
        return "At the start, the scene is empty."
    verb = "is" if len(visible) == 1 else "are"
    return f"At the start, there {verb} {_list_phrase(visible)}."


def ending_sentence(clip: ClipSpec, tracks=None) -> str:
    """Where the shapes of the last frame are, each named as in the events ("the red circle is at the centre")."""
    places = _places(clip, compute_tracks(clip) if tracks is None else tracks, clip.num_frames - 1)
    items = [f"the {clip.shapes[i].name} is at the {place}" for i, place in sorted(places.items())]
    return f"At the end, {_list_phrase(items)}." if items else "At the end, the scene is empty."


def camera_sentence(clip: ClipSpec) -> str:
    return CAMERA_SENTENCES[clip.camera]


def cut_sentence(clip: ClipSpec) -> str:
    return "There are no cuts." if clip.n_shots == 1 else "There is one cut."


def detailed_description(clip: ClipSpec) -> str:
    """Intro, every event in order (with the cut where it happens), the last frame's places and the camera motion."""
    events = clip.gt_events()
    tracks = compute_tracks(clip)
    sentences = [intro_sentence(clip, tracks)]
    for k, (event, connective) in enumerate(zip(events, CONNECTIVES[len(events)])):
        clause = event_clause(event)
        sentences.append((connective + clause if connective else _capitalise(clause)) + ".")
        if clip.cut_after == k:
            sentences.append(CUT_SENTENCE)
    sentences.append(ending_sentence(clip, tracks))
    sentences.append(camera_sentence(clip))
    return " ".join(sentences)


def short_description(clip: ClipSpec) -> str:
    """All events in one sentence."""
    return _capitalise(", then ".join(event_clause(e) for e in clip.gt_events())) + "."


def camera_description(clip: ClipSpec) -> str:
    """Camera motion and shot structure only."""
    return f"{camera_sentence(clip)} {cut_sentence(clip)}"


# ------------------------------------------------------------------------------------------------- frame facts
# What one frame shows, for stage 0 (pre-training the vision tower on single frames). Positions and sizes are in
# image coordinates (after the camera), binned so that every event changes at least one fact between its first and
# last frame: a move (0.3 of the frame) always crosses a fifth, grow / shrink change the size word, a rotation the
# pose. The background facts (palette, checker phase and cell size) are what camera motion and cuts change.
_COLUMNS = ("left", "centre", "right")  # the columns and rows of the scene grid (scene.GRID = 3)
_ROWS = ("top", "middle", "bottom")
_SIZE_WORDS = ((0.06, "small"), (0.105, "medium"), (float("inf"), "large"))  # image-space radius upper bounds
_CELL_WORDS = ((0.122, "small"), (0.131, "medium"), (float("inf"), "large"))  # checker cell side, frame widths
_PHASES = 4


def _bin(value: float, count: int) -> int:
    return min(count - 1, max(0, int(value * count)))


def _pose(kind: str, angle: float) -> str:
    """`upright` / `diamond` (square), `pointing up` / `pointing down` (triangle), `tilted` in between."""
    if kind == "circle":
        return ""
    period = 90.0 if kind == "square" else 120.0
    phase = (angle % period) / period  # 0: start pose, 0.5: the pose after a rotation
    if min(phase, 1.0 - phase) < 0.125:
        return "upright" if kind == "square" else "pointing up"
    if abs(phase - 0.5) < 0.125:
        return "diamond" if kind == "square" else "pointing down"
    return "tilted"


def frame_objects(clip: ClipSpec, tracks, frame: int) -> list[dict]:
    """The shapes at least half visible in one frame, left to right: `{"index", "colour", "shape", "size", "pose",
    "row", "column", "x"}` (index: in `clip.shapes`; colour: the nearest palette colour, so a shape changing colour is named by the colour
    it is closer to). `tracks` is `render.compute_tracks(clip)`."""
    palette = {name: tuple(rgb) for name, rgb in COLOURS.items()}
    zoom = tracks.zoom[frame]
    objects = []
    for i, shape in enumerate(clip.shapes):
        x = (tracks.x[frame, i] - tracks.cam_x[frame]) * zoom + 0.5
        y = (tracks.y[frame, i] - tracks.cam_y[frame]) * zoom + 0.5
        if tracks.alpha[frame, i] < 0.5 or not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
            continue
        rgb = tracks.colour[frame, i]
        objects.append({
            "index": i,
            "colour": min(palette, key=lambda name: sum((a - b) ** 2 for a, b in zip(palette[name], rgb))),
            "shape": shape.shape,
            "size": next(word for bound, word in _SIZE_WORDS if tracks.size[frame, i] * zoom < bound),
            "pose": _pose(shape.shape, tracks.angle[frame, i]),
            "row": _ROWS[_bin(y, len(_ROWS))], "column": _COLUMNS[_bin(x, len(_COLUMNS))], "x": float(x),
        })
    return sorted(objects, key=lambda o: o["x"])


def frame_caption(clip: ClipSpec, tracks, frame: int) -> str:
    """One frame in words, e.g. "a medium red triangle pointing up at the upper left; a small blue circle at the
    middle right" (the shapes of `frame_objects`)."""
    items = []
    for o in frame_objects(clip, tracks, frame):
        where = f"{o['row']} {o['column']}".replace("middle centre", "centre")
        items.append(f"a {o['size']} {o['colour']} {o['shape']}{' ' + o['pose'] if o['pose'] else ''} at the {where}")
    return "; ".join(items) if items else "nothing but the background"


def frame_labels(clip: ClipSpec, tracks, frame: int, size: int = 64) -> list[str]:
    """The facts of one frame as labels for multi-label classification: per shape (named by its colour, unique in
    a clip) its shape, size, row, column and pose, the background's palette, checker phase and cell size, and each
    shape's facts once more without its colour ("object ..."), so that where and what a shape is has one label
    whatever its colour: held-out test clips pair colours with shapes and actions that training never shows, and the
    colour-free labels made the tower's shape reading reach the LM (docs/tiny_recipe.md). E.g. `["red triangle",
    "red medium", "red row top", "red column left", "red pointing up", "background 0", "checker x 2", "checker y 1",
    "cells medium", "object triangle", "object medium", "object row top", "object column left", "object pointing up"]`."""
    labels, colour_free = [], []
    for o in frame_objects(clip, tracks, frame):
        c = o["colour"]
        facts = [o["shape"], o["size"], f"row {o['row']}", f"column {o['column']}"] + ([o["pose"]] if o["pose"] else [])
        labels += [f"{c} {fact}" for fact in facts]
        colour_free += [f"object {fact}" for fact in facts]
    zoom, period = tracks.zoom[frame], 2 * CHECKER_PERIOD  # the checkerboard repeats every two cells
    left, top = tracks.cam_x[frame] - 0.5 / zoom, tracks.cam_y[frame] - 0.5 / zoom  # world point at the image corner
    cell = CHECKER_PERIOD * zoom
    labels += [f"background {clip.backgrounds[tracks.shot[frame]]}",
               f"checker x {_bin((left / period) % 1.0, _PHASES)}", f"checker y {_bin((top / period) % 1.0, _PHASES)}",
               f"cells {next(word for bound, word in _CELL_WORDS if cell < bound)}"]
    return labels + colour_free


# ---------------------------------------------------------------------------------------------------- parsing
# Word classes of the grammar, for per-class scores (e.g. tarsier_hf.eval.reference_loss): which content the model gets right.
_ACTION_WORDS = {"moves", "appears", "disappears", "grows", "bigger", "shrinks", "rotates", "turns", "collides",
                 "bounce", "apart", "left", "right", "up", "down"}
_CAMERA_WORDS = {"camera", "stays", "still", "pans", "zooms", "cuts", "cut", "shot"}
_CAMERA_AFTER = {"pans", "zooms"}  # "pans left" / "zooms in": the direction belongs to the camera
_PLACE_WORDS = set(_ROWS) | {"centre"}  # "at the top left": the column after a row word is a place, not a move


def word_classes(tokens: list[str]) -> list[str]:
    """The class of each token of a description: `colour`, `shape`, `action`, `camera`, `place` or `other`.

    `tokens` are the pieces of a tokenized description in order (e.g. `[" The", " red", " circle", " shr", "inks",
    "."]`). Pieces are joined into words (a piece that does not start with a space continues the word before it),
    every piece gets its word's class, "left" / "right" / "in" / "out" right after "pans" or "zooms" count as
    camera, and a place ("top left", "centre") is `place`, so "left" there is not a move. Connectives, articles and punctuation are `other`.
    """
    words: list[list[int]] = []  # token positions of each word
    for position, token in enumerate(tokens):
        starts_word = not words or token[:1].isspace() or not token[:1].isalpha() or not tokens[position - 1][-1:].isalpha()
        if starts_word:
            words.append([position])
        else:
            words[-1].append(position)
    classes = ["other"] * len(tokens)
    previous = ""
    for positions in words:
        word = "".join(tokens[p] for p in positions).strip().strip(".,").lower()
        if not word:
            continue
        if word in COLOURS:
            kind = "colour"
        elif word in SHAPES:
            kind = "shape"
        elif previous in _CAMERA_AFTER or word in _CAMERA_WORDS:
            kind = "camera"
        elif word in _PLACE_WORDS or previous in _ROWS:
            kind = "place"
        elif word in _ACTION_WORDS:
            kind = "action"
        else:
            kind = "other"
        for p in positions:
            classes[p] = kind
        previous = word
    return classes


_COLOUR = "|".join(COLOURS)
_SHAPE = "|".join(SHAPES)
_SUBJECT = rf"(?:the )?(?P<{{name}}c>{_COLOUR}) (?P<{{name}}s>{_SHAPE})"
_SUBJ = _SUBJECT.format(name="a")
_OBJ = _SUBJECT.format(name="b")
_EVENT_PATTERNS = [
    (re.compile(rf"^{_SUBJ} moves (?P<dir>left|right|up|down)$"), lambda m: f"move {m['dir']}", None),
    (re.compile(rf"^{_SUBJ} appears$"), lambda m: "appear", None),
    (re.compile(rf"^{_SUBJ} disappears$"), lambda m: "disappear", None),
    (re.compile(rf"^{_SUBJ} grows bigger$"), lambda m: "grow", None),
    (re.compile(rf"^{_SUBJ} shrinks$"), lambda m: "shrink", None),
    (re.compile(rf"^{_SUBJ} rotates$"), lambda m: "rotate", None),
    (re.compile(rf"^{_SUBJ} turns (?P<col>{_COLOUR})$"), lambda m: "change colour", lambda m: m["col"]),
    (
        re.compile(rf"^{_SUBJ} collides with {_OBJ} and they bounce apart$"),
        lambda m: "collide",
        lambda m: f"{m['bc']} {m['bs']}",
    ),
]
_INTRO = re.compile(r"^at the start,? (?:the scene is empty|there (?:is|are) (?P<list>.+))$")
_PLACE = "|".join(place_name(row, column) for row in _ROWS for column in _COLUMNS)
_INTRO_ITEM = re.compile(rf"^an? (?P<c>{_COLOUR}) (?P<s>{_SHAPE})(?: at the (?P<p>{_PLACE}))?$")
_ENDING = re.compile(r"^at the end,? (?:the scene is empty|(?P<list>.+))$")
_ENDING_ITEM = re.compile(rf"^the (?P<c>{_COLOUR}) (?P<s>{_SHAPE}) is at the (?P<p>{_PLACE})$")
_CAMERA = re.compile(r"^the camera (?P<m>stays still|pans left|pans right|zooms in|zooms out)$")
_CAMERA_NAMES = {"stays still": "static", "pans left": "pan left", "pans right": "pan right", "zooms in": "zoom in", "zooms out": "zoom out"}
_SCENE_CUT = re.compile(r"^the scene cuts to another shot$")
_CUT_COUNT = re.compile(rf"^there (?:are no cuts|is one cut|are (?P<n>{'|'.join(NUMBER_WORDS[2:])}) cuts)$")
_SENTENCE_SPLIT = re.compile(r"[.!?;\n]+")
_CLAUSE_SPLIT = re.compile(r",\s*(?:and\s+)?then\s*,?\s*|\s+and then\s*,?\s*")
_LEADING = re.compile(r"^(?:first|then|after that|next|finally|afterwards)\s*,?\s*")


@dataclass
class ParsedDescription:
    """What the parser read from a description.

    Attributes:
        events: `{"subject", "action", "object", "order"}` dicts in text order, `order` from 1.
        unmatched: clauses outside the grammar (normalised text).
        camera: camera motion named by a camera sentence (last one wins), or None.
        n_cuts: cuts stated ("There is one cut.") or else the number of "The scene cuts to another shot." sentences.
        initial: shapes the intro sentence lists ("red circle", ...), None without an intro.
        places: where the intro puts each shape (`{"red circle": "top left"}`, shapes with a place only).
        final_places: where the "At the end" sentence puts each shape, None without that sentence.
    """

    events: list[dict] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)
    camera: str | None = None
    n_cuts: int = 0
    initial: list[str] | None = None
    places: dict[str, str] = field(default_factory=dict)
    final_places: dict[str, str] | None = None


def normalise(text: str) -> str:
    text = text.lower().replace("color", "colour")
    return re.sub(r"\s+", " ", text).strip()


def _parse_event(clause: str) -> dict | None:
    for pattern, action, obj in _EVENT_PATTERNS:
        m = pattern.match(clause)
        if m:
            return {"subject": f"{m['ac']} {m['as']}", "action": action(m), "object": obj(m) if obj else None}
    return None


def _parse_items(listed: str | None, pattern: re.Pattern) -> list[tuple[str, str | None]] | None:
    """`[(shape name, place or None), ...]` of an intro's or ending's list, None if an item is outside the grammar."""
    if listed is None:
        return []
    items = []
    for item in re.split(r",\s*|\s+and\s+", listed):
        m = pattern.match(item.strip())
        if m is None:
            return None
        items.append((f"{m['c']} {m['s']}", m["p"]))
    return items


def parse_description(text: str) -> ParsedDescription:
    """Parse any DREAM-S description (or a model's attempt at one) into events and scene facts."""
    result = ParsedDescription()
    if not isinstance(text, str):
        result.unmatched.append(repr(text))
        return result
    stated_cuts, scene_cuts = None, 0
    for sentence in _SENTENCE_SPLIT.split(normalise(text)):
        sentence = sentence.strip(" ,")
        if not sentence:
            continue
        intro = _INTRO.match(sentence)
        if intro:
            items = _parse_items(intro["list"], _INTRO_ITEM)
            if items is not None:
                result.initial = [name for name, _ in items]
                result.places = {name: place for name, place in items if place}
                continue
        ending = _ENDING.match(sentence)
        if ending:
            items = _parse_items(ending["list"], _ENDING_ITEM)
            if items is not None:
                result.final_places = dict(items)
                continue
        camera = _CAMERA.match(sentence)
        if camera:
            result.camera = _CAMERA_NAMES[camera["m"]]
            continue
        if _SCENE_CUT.match(sentence):
            scene_cuts += 1
            continue
        count = _CUT_COUNT.match(sentence)
        if count:
            stated_cuts = 0 if "no cuts" in sentence else 1 if "one cut" in sentence else NUMBER_WORDS.index(count["n"])
            continue
        for clause in _CLAUSE_SPLIT.split(_LEADING.sub("", sentence)):
            clause = _LEADING.sub("", clause.strip(" ,"))
            if not clause:
                continue
            event = _parse_event(clause)
            if event is None:
                result.unmatched.append(clause)
            else:
                event["order"] = len(result.events) + 1
                result.events.append(event)
    result.n_cuts = stated_cuts if stated_cuts is not None else scene_cuts
    return result


def parse_events(text: str) -> list[dict]:
    """The events of a description, in order: `[{"subject", "action", "object", "order"}, ...]`.

    Clauses outside the grammar are skipped (see `parse_description(text).unmatched` for them).
    """
    return parse_description(text).events
