"""Per-annotator label files: `OUT/labels/<annotator>.jsonl`, appended and fsynced one label at a time.

Every label is one line:
`{"annotator", "pair", "id", "label": "A"|"B"|"same", "swap", "winner": "model_1"|"model_2"|"same", "time",
"elapsed_s"}`. A changed label is a new line; the last line of a pair wins.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from pathlib import Path

from tarsier_hf.jsonl import read_jsonl_objects

from .session import Session, SessionError
from .session import check_annotator as session_check_annotator

LABELS = ("A", "B", "same")


class LabelError(ValueError):
    """A label file or a label is invalid; the message names the file (and line) and the cause."""


def check_annotator(name: str) -> str:
    """`session.check_annotator`, raising LabelError (names become file names)."""
    try:
        return session_check_annotator(name)
    except SessionError as error:
        raise LabelError(str(error)) from None


def label_path(out_dir: str | os.PathLike, annotator: str) -> Path:
    return Path(out_dir) / "labels" / f"{check_annotator(annotator)}.jsonl"


def read_labels(path: str | os.PathLike, session: Session) -> dict[int, dict]:
    """Latest label per pair index from one annotator's file.

    Raises:
        LabelError: a malformed line, or a line that does not match the session (unknown pair, other video,
            other A/B order), as `file:line: cause`.
    """
    path = Path(path)
    latest: dict[int, dict] = {}
    if not path.is_file():
        return latest
    for line_number, record in read_jsonl_objects(path, LabelError):
        where = f"{path}:{line_number}"
        pair_index, label = record.get("pair"), record.get("label")
        if not isinstance(pair_index, int) or not 0 <= pair_index < len(session.pairs):
            raise LabelError(f"{where}: pair {pair_index!r} is not in this session ({len(session.pairs)} pairs)")
        if label not in LABELS:
            raise LabelError(f"{where}: label {label!r} is not one of {', '.join(LABELS)}")
        pair = session.pairs[pair_index]
        if record.get("id") != pair.id or record.get("swap") != pair.swap:
            raise LabelError(f"{where}: pair {pair_index} does not match the session (labels from another session?)")
        latest[pair_index] = record
    return latest


class LabelStore:
    """Thread-safe appender for the label files of one session folder."""

    def __init__(self, out_dir: str | os.PathLike, session: Session):
        self.out_dir = Path(out_dir)
        self.session = session
        self._lock = threading.Lock()

    def labels(self, annotator: str) -> dict[int, dict]:
        with self._lock:
            return read_labels(label_path(self.out_dir, annotator), self.session)

    def add(self, annotator: str, pair_index: int, label: str, elapsed_s: float | None = None) -> dict:
        """Append one label and fsync it before returning, so an acknowledged label survives a crash."""
        path = label_path(self.out_dir, annotator)
        if isinstance(pair_index, bool) or not isinstance(pair_index, int) or not 0 <= pair_index < len(self.session.pairs):
            raise LabelError(f"pair {pair_index!r} is not in this session ({len(self.session.pairs)} pairs)")
        if label not in LABELS:
            raise LabelError(f"label {label!r} is not one of {', '.join(LABELS)}")
        if elapsed_s is not None and not (isinstance(elapsed_s, (int, float)) and math.isfinite(elapsed_s)):
            raise LabelError(f"elapsed_s must be a finite number of seconds, got {elapsed_s!r}")
        pair = self.session.pairs[pair_index]
        try:
            assigned = self.session.pairs_for(annotator)
        except SessionError as error:
            raise LabelError(str(error)) from None
        if pair_index not in {assigned_pair.index for assigned_pair in assigned}:
            raise LabelError(f"pair {pair_index} is not assigned to annotator {annotator!r}")
        record = {
            "annotator": annotator,
            "pair": pair_index,
            "id": pair.id,
            "label": label,
            "swap": pair.swap,
            "winner": pair.winner(label),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "elapsed_s": None if elapsed_s is None else round(float(elapsed_s), 3),
        }
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            created = not path.exists()
            # One write() on an O_APPEND descriptor: a label line is never interleaved or half-replaced.
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line.encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                dir_fd = os.open(path.parent, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
        return record


def annotators(out_dir: str | os.PathLike) -> list[str]:
    """Names of the annotators with a label file in `OUT/labels/`, sorted."""
    folder = Path(out_dir) / "labels"
    if not folder.is_dir():
        return []
    return sorted(path.stem for path in folder.glob("*.jsonl"))
