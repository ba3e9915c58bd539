"""An evaluation session: the sampled videos, both descriptions and the recorded A/B order of every pair.

The session is written once to `OUT/session.json` and reused by every later `serve` and `report` on the same
folder, so a restarted server shows the same pairs in the same order and labels always map back to models.
Slot 1 is the first result file, slot 2 the second; `swap=False` shows model 1 as "A".

By default every annotator labels every pair. With `annotators` (the paper's Appendix D design: three annotators,
100 different videos each) the first `overlap` sampled pairs go to everyone (so agreement can be measured) and
the rest are dealt out round-robin, so each annotator sees a disjoint share.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .results import ResultsError, load_results, resolve_video

SESSION_FILE = "session.json"
SESSION_VERSION = 1
ANNOTATOR_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class SessionError(ValueError):
    """The session folder cannot be used (built from other inputs, unreadable, ...) or an annotator is unknown."""


def check_annotator(name: str) -> str:
    """Annotator names become file names: letters, digits, `_`, `-`, `.` only (at most 64, not dot-leading)."""
    if not isinstance(name, str) or not ANNOTATOR_PATTERN.match(name) or name.startswith("."):
        raise SessionError(f"invalid annotator name {name!r}: use 1-64 letters, digits, '_', '-' or '.'")
    return name


@dataclass
class Pair:
    """One sampled video and its two descriptions; `swap=True` shows model 2's description as "A"."""

    index: int
    id: str
    video: str
    text_1: str
    text_2: str
    swap: bool

    @property
    def text_a(self) -> str:
        return self.text_2 if self.swap else self.text_1

    @property
    def text_b(self) -> str:
        return self.text_1 if self.swap else self.text_2

    def winner(self, label: str) -> str:
        """Map a label as seen on the page (`A`, `B`, `same`) to `model_1`, `model_2` or `same`."""
        if label == "same":
            return "same"
        if label not in ("A", "B"):
            raise ValueError(f"unknown label {label!r} (expected A, B or same)")
        shows_model_1 = (label == "A") != self.swap
        return "model_1" if shows_model_1 else "model_2"


@dataclass
class Session:
    """The sampled pairs plus what they were built from (to refuse reusing a folder with other inputs)."""

    model_1: str
    model_2: str
    results_1: str
    results_2: str
    sha256_1: str
    sha256_2: str
    video_dir: str
    num: int
    seed: int
    pairs: list[Pair] = field(default_factory=list)
    annotators: list[str] = field(default_factory=list)
    overlap: int = 0
    assignments: dict[str, list[int]] = field(default_factory=dict)
    version: int = SESSION_VERSION

    def pairs_for(self, annotator: str) -> list[Pair]:
        """The pairs one annotator labels, in presentation order.

        Raises:
            SessionError: the session assigns pairs to named annotators and `annotator` is not one of them.
        """
        if not self.assignments:
            return list(self.pairs)
        if annotator not in self.assignments:
            raise SessionError(f"annotator {annotator!r} is not in this session (expected one of {', '.join(self.annotators)})")
        return [self.pairs[index] for index in self.assignments[annotator]]

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict, where: str) -> "Session":
        try:
            pairs = [Pair(**pair) for pair in data.pop("pairs")]
            return cls(pairs=pairs, **data)
        except (KeyError, TypeError) as error:
            raise SessionError(f"{where}: not a side-by-side session file ({error})") from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def assign_pairs(num_pairs: int, annotators: list[str], overlap: int) -> dict[str, list[int]]:
    """`{annotator: [pair index, ...]}`: pairs `0..overlap-1` for everyone, the rest dealt out round-robin."""
    if not annotators:
        return {}
    if len(set(annotators)) != len(annotators):
        raise SessionError(f"--annotators lists a name twice: {', '.join(annotators)}")
    if not 0 <= overlap <= num_pairs:
        raise SessionError(f"--overlap must be between 0 and the number of pairs ({num_pairs}), got {overlap}")
    shares = {name: list(range(overlap)) for name in annotators}
    for position, index in enumerate(range(overlap, num_pairs)):
        shares[annotators[position % len(annotators)]].append(index)
    return shares


def sample_session(
    results_1: str | os.PathLike,
    results_2: str | os.PathLike,
    video_dir: str | os.PathLike,
    num: int,
    seed: int = 0,
    model_1: str | None = None,
    model_2: str | None = None,
    annotators: list[str] | None = None,
    overlap: int = 0,
) -> Session:
    """Sample `num` ids present in both result files (all of them when `num` is 0) and shuffle each pair.

    The ids are sorted before sampling, so the sample depends only on the seed and the set of ids, not on
    line order. Every sampled video must exist. `annotators`/`overlap`: see the module docstring.

    Raises:
        ResultsError: unreadable result files, too few common ids, or missing videos (all listed).
        SessionError: a bad annotator list or overlap.
    """
    annotators = list(annotators or [])
    for name in annotators:
        check_annotator(name)
    video_dir = Path(video_dir)
    if not video_dir.is_dir():
        raise ResultsError(f"{video_dir}: video folder not found")
    first = load_results(results_1, model_1)
    second = load_results(results_2, model_2)
    common = sorted(set(first.predictions) & set(second.predictions), key=lambda key: (len(key), key))
    if not common:
        raise ResultsError(f"{first.path} and {second.path} have no id in common")
    if num < 0:
        raise ResultsError(f"--num must be >= 0, got {num}")
    if num > len(common):
        raise ResultsError(f"--num {num} but only {len(common)} ids are present in both {first.path} and {second.path}")
    rng = random.Random(seed)
    chosen = rng.sample(common, num) if num else rng.sample(common, len(common))
    pairs, missing = [], []
    for index, key in enumerate(chosen):
        one, two = first.predictions[key], second.predictions[key]
        try:
            video = resolve_video(video_dir, one, two, first.path, second.path)
        except ResultsError as error:
            missing.append(str(error))
            continue
        pairs.append(Pair(index, key, str(video), one.prediction, two.prediction, swap=rng.random() < 0.5))
    if missing:
        shown = "\n  ".join(missing[:10])
        more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise ResultsError(f"{len(missing)} of {len(chosen)} sampled videos are unusable:\n  {shown}{more}")
    return Session(
        model_1=first.model,
        model_2=second.model,
        results_1=str(first.path.resolve()),
        results_2=str(second.path.resolve()),
        sha256_1=_sha256(first.path),
        sha256_2=_sha256(second.path),
        video_dir=str(video_dir.resolve()),
        num=num,
        seed=seed,
        pairs=pairs,
        annotators=annotators,
        overlap=overlap,
        assignments=assign_pairs(len(pairs), annotators, overlap),
    )


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON to a temporary sibling, fsync it and rename it over `path`."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        json.dump(data, handle, ensure_ascii=False, indent=1)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_session(out_dir: str | os.PathLike) -> Session:
    """Read `OUT/session.json`."""
    path = Path(out_dir) / SESSION_FILE
    if not path.is_file():
        raise SessionError(f"{path}: session file not found (run `tarsier-side-by-side serve` first)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise SessionError(f"{path}: malformed JSON ({error.msg} at line {error.lineno})") from None
    if not isinstance(data, dict) or data.get("version") != SESSION_VERSION:
        raise SessionError(f"{path}: not a version-{SESSION_VERSION} side-by-side session file")
    return Session.from_json(data, str(path))


def open_session(out_dir: str | os.PathLike, *args, **kwargs) -> Session:
    """Create the session in `out_dir`, or reuse the one already there if it was built from the same inputs
    (`args` / `kwargs`: those of `sample_session`).

    Raises:
        SessionError: `out_dir` holds a session built from other files, another `num`/`seed` or other names.
    """
    out_dir = Path(out_dir)
    fresh = sample_session(*args, **kwargs)
    if (out_dir / SESSION_FILE).is_file():
        stored = load_session(out_dir)
        for name in ("sha256_1", "sha256_2", "video_dir", "num", "seed", "model_1", "model_2", "annotators", "overlap"):
            if getattr(stored, name) != getattr(fresh, name):
                raise SessionError(
                    f"{out_dir / SESSION_FILE}: this folder holds a session with a different {name} "
                    f"({getattr(stored, name)!r} there, {getattr(fresh, name)!r} now); use another --output_dir folder"
                )
        return stored
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / SESSION_FILE, fresh.to_json())
    return fresh
