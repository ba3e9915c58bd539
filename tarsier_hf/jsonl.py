"""JSON Lines reading: the one implementation behind every JSONL reader of the project (training rows, benchmark
annotations, result and label files). Lazy, line by line, blank lines skipped; every bad line is named as
`file:line: cause`, and the caller decides whether it is skipped (training rows, crash-torn result lines) or fatal
(annotations, A/B result and label files)."""

from __future__ import annotations

import json
import os
from typing import Iterator


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
