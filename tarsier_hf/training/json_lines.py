"""Local JSON Lines files as training rows: the files a dataset names, their lines with their places
(`file:line`), and `JsonLinesRows`, which keeps the lines as JSON text in an Arrow table."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from tarsier_hf.jsonl import iter_jsonl
from tarsier_hf.training.dataset_spec import DatasetSpec


def json_lines_files(spec: DatasetSpec) -> list[Path] | None:
    """The local JSON Lines files a dataset names (a `.jsonl` file or a folder of them), else None."""
    if not isinstance(spec.path, (str, os.PathLike)):
        return None
    path = Path(spec.path)
    if path.is_file() and path.suffix == ".jsonl":
        return [path]
    if path.is_dir() and not (path / "dataset_dict.json").is_file() and not (path / "state.json").is_file():
        return sorted(path.glob("*.jsonl")) or None
    return None


def iter_json_lines(files: Sequence[Path]):
    """`(place, row, reason)` of every non-blank line of `files` in order (`tarsier_hf.jsonl.iter_jsonl`)."""
    for file in files:
        for number, row, reason in iter_jsonl(file):
            yield f"{file}:{number}", row, reason


def check_not_empty(files: Sequence[Path]) -> None:
    """Raise when no file holds a non-blank line (reads only up to the first one)."""
    for file in files:
        with open(file, encoding="utf-8") as handle:
            if any(line.strip() for line in handle):
                return
    raise ValueError(f"{', '.join(map(str, files))}: no rows (the file is empty)")


class JsonLinesRows:
    """Rows of local JSON Lines files, kept as JSON text in an in-memory Arrow table and parsed on access.

    Unlike an Arrow table of the parsed rows, any mix of value types under one key loads (e.g. `content` a string in
    one row and a list in another, both valid), and rows read back exactly as written (no None-filled keys).
    """

    def __init__(self, texts: list[str]):
        import datasets  # optional: the `train` / `eval` extras

        self._table = datasets.Dataset.from_dict({"json": texts})

    def __len__(self) -> int:
        return len(self._table)

    def __getitem__(self, index: int) -> dict:
        return json.loads(self._table[int(index)]["json"])

    def __iter__(self):
        for batch in self._table.iter(batch_size=1024):
            yield from (json.loads(text) for text in batch["json"])
