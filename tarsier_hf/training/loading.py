"""Reading a training dataset's raw rows with `datasets`.

Rows come from a `.jsonl`/`.json`/`.parquet`/`.csv`/`.tsv` file or a folder of them, a `save_to_disk` folder, a
Hub dataset id (`datasets.load_dataset`, optionally streamed) or an in-memory `datasets.Dataset` /
`IterableDataset` (`load_rows`); local JSON Lines files are read line by line (`load_rows_with_places`), so that a
malformed line is a bad row, not a failed load.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tarsier_hf.training.dataset_spec import DatasetSpec
from tarsier_hf.training.json_lines import JsonLinesRows, check_not_empty, iter_json_lines, json_lines_files
from tarsier_hf.training.row_checks import BadRow

_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".tsv": "csv"}


def load_rows(spec, split: str = "train", name: str | None = None, streaming: bool = False):
    """
    Raw rows, read with `datasets`, from any of:

    - an in-memory `datasets.Dataset` / `IterableDataset` (returned as is) or `DatasetDict` (its `split`);
    - a `.jsonl` / `.json` / `.parquet` / `.csv` / `.tsv` file, or a folder of files of one of those kinds;
    - a folder written by `save_to_disk` (a `Dataset` or a `DatasetDict`);
    - a Hub dataset id or a dataset folder with a card, through `datasets.load_dataset(spec, name, split=split)`.

    `streaming=True` returns an `IterableDataset` (nothing is downloaded up front). Video paths stay plain strings
    (decoding is ours, in the DataLoader workers).
    """
    import datasets  # optional: the `train` / `eval` extras

    if isinstance(spec, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        if split not in spec:
            raise ValueError(f"the DatasetDict has no split {split!r} (splits: {sorted(spec)})")
        spec = spec[split]
    if isinstance(spec, datasets.Dataset):
        return spec.to_iterable_dataset() if streaming else spec
    if isinstance(spec, datasets.IterableDataset):
        if not streaming:
            raise ValueError("an IterableDataset can only be streamed: use --dataset_streaming / "
                             "StreamingConversationDataset")
        return spec
    path = Path(spec)
    files: list[str] = []
    if path.is_file():
        if path.suffix not in _FILE_BUILDERS:
            raise ValueError(f"{spec}: expected a {'/'.join(_FILE_BUILDERS)} file, a folder of them, a save_to_disk "
                             "folder, or a Hub dataset id")
        files = [str(path)]
    elif path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return load_rows(datasets.load_from_disk(str(path)), split, streaming=streaming)
        for suffix in _FILE_BUILDERS:
            files = sorted(str(p) for p in path.glob(f"*{suffix}"))
            if files:
                break
    elif spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        raise FileNotFoundError(f"{spec}: no such file or folder, and not a Hub dataset id (owner/name)")
    if files:
        suffix = Path(files[0]).suffix
        kwargs = {"delimiter": "\t"} if suffix == ".tsv" else {}
        return datasets.load_dataset(_FILE_BUILDERS[suffix], data_files=files, split="train", streaming=streaming,
                                     **kwargs)
    return datasets.load_dataset(str(spec), name=name, split=split, streaming=streaming)


def has_splits(spec) -> bool:
    """Whether `load_rows(spec, split)` can tell splits apart: Hub ids, `DatasetDict`s and dataset folders can; a
    file, a folder of files or a `Dataset` is one split (any `split` reads all of it)."""
    import datasets  # optional: the `train` / `eval` extras

    if isinstance(spec, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        return True
    if not isinstance(spec, (str, os.PathLike)):
        return False
    path = Path(spec)
    if path.is_file():
        return False
    if path.is_dir():
        if (path / "dataset_dict.json").is_file():
            return True
        if (path / "state.json").is_file() or any(next(path.glob(f"*{s}"), None) for s in _FILE_BUILDERS):
            return False
    return True


def load_rows_with_places(spec: DatasetSpec):
    """`load_rows` for one dataset, plus where every row comes from and the lines that could not be parsed.

    Local JSON Lines files are parsed here line by line (a malformed line is a `BadRow`, not a failed load); every
    other layout and source goes through `load_rows`.

    Returns:
        `(rows, places, bad)`: the rows (`JsonLinesRows` or a `datasets.Dataset`; both index and iterate as dicts),
        one place per row (`file:line`, or `dataset row N`), and a `BadRow` per unparsable line.

    Raises:
        ValueError: when JSON Lines files hold no line at all (an empty file).
    """
    files = json_lines_files(spec)
    if files is None:
        rows = load_rows(spec.path, spec.split, spec.name)
        return rows, [f"{spec.place} row {i}" for i in range(len(rows))], []
    check_not_empty(files)
    texts, places, bad = [], [], []
    for where, row, reason in iter_json_lines(files):
        if reason is not None:
            bad.append(BadRow(where, reason))
        else:
            texts.append(json.dumps(row, ensure_ascii=False))
            places.append(where)
    return JsonLinesRows(texts), places, bad

