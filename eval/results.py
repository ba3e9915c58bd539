"""Append-only JSONL result files that survive being killed at any moment.

Every process appends whole batches of records under an exclusive `flock`, in one `write` followed by `fsync`,
so a record is either completely on disk or not at all. A line cut short (the machine died mid-write) is
skipped on reading and terminated before the next append, so it can never swallow the next record. Readers
keep the first complete record per id: a sample is never counted twice.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from pathlib import Path
from typing import Iterable

from tarsier_hf.jsonl import iter_jsonl

logger = logging.getLogger(__name__)


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
