"""JSON Lines reading: the one implementation behind every JSONL reader of the project (training rows, benchmark
annotations, result and label files). Lazy, line by line, blank lines skipped; every bad line is named as
`file:line: cause`, and the caller decides whether it is skipped (training rows, crash-torn result lines) or fatal
(annotations, A/B result and label files).

Result files are append-only and survive being killed at any moment: every process appends whole batches of
records under an exclusive `flock`, in one `write` followed by `fsync`, so a record is either completely on disk
or not at all. A line cut short (the machine died mid-write) is skipped on reading and terminated before the next
append, so it can never swallow the next record. Readers keep the first complete record per id: a sample is never
counted twice."""

from __future__ import annotations

import fcntl
import json
import logging
import os
from pathlib import Path
from typing import Iterable, Iterator

logger = logging.getLogger(__name__)


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict | None, str | None]]:
    """Yield `(line, row, reason)` per non-blank line of `path` (`line` counts from 1): `row` the JSON object and
    `reason` None, or `row` None and `reason` why the line is not a JSON object."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line.rstrip("\r\n"))  # so an error's column is on this line, not the next
            except json.JSONDecodeError as error:
                yield number, None, f"not valid JSON ({error.msg} at column {error.colno})"
                continue
            if not isinstance(row, dict):
                yield number, None, f"a JSON {type(row).__name__}, not an object"
                continue
            yield number, row, None


def read_jsonl_objects(path: str | os.PathLike, error: type[Exception] = ValueError) -> Iterator[tuple[int, dict]]:
    """Yield `(line, row)` per JSON object line of `path`; raise `error("file:line: cause")` at the first line
    that is not one."""
    for number, row, reason in iter_jsonl(path):
        if reason is not None:
            raise error(f"{path}:{number}: {reason}")
        yield number, row


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """All complete JSON object lines of `path` (a missing file reads as empty).

    A line that is not valid JSON is skipped with a warning naming the file and line: after a crash only the
    last line can be incomplete, and its sample is simply done again.
    """
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for number, record, reason in iter_jsonl(path):
        if reason is None:
            records.append(record)
        else:
            logger.warning("%s:%d: skipping the line (%s)", path, number, reason)
    return records


def append_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> None:
    """Append `records` to `path` atomically with respect to other processes appending to the same file."""
    payload = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    if not payload:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size:
            os.lseek(fd, size - 1, os.SEEK_SET)
            if os.read(fd, 1) != b"\n":  # a torn last line from a crash: close it so it stays one bad line
                payload = "\n" + payload
        data = payload.encode("utf-8")
        written = 0
        while written < len(data):
            written += os.write(fd, data[written:])
        os.fsync(fd)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def first_by_id(records: Iterable[dict], key: str = "id") -> dict[str, dict]:
    """`{id: record}` keeping the first record of every id (in file order)."""
    out: dict[str, dict] = {}
    for record in records:
        if key in record:
            out.setdefault(str(record[key]), record)
    return out


def write_json(path: str | os.PathLike, data) -> None:
    """Write `data` as indented JSON through a temporary file and a rename (never a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
