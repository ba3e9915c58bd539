"""`DatasetSpec`: one training dataset of a mixture (where its rows are, its media root, split, config, streaming)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class DatasetSpec:
    """
    One training dataset: where the rows are (`load_rows`: a path, a Hub id or a `datasets` object), the folder
    its media paths are relative to, its split, its config name (`datasets.load_dataset(path, name)`) and whether
    it is streamed.
    """

    path: Any
    video_root: str | None = None
    split: str = "train"
    name: str | None = None
    streaming: bool = False

    @property
    def label(self) -> str:
        """A name for messages and the default source: the file stem, the Hub id's name or the object's type."""
        if isinstance(self.path, (str, os.PathLike)):
            return Path(self.path).stem
        info = getattr(self.path, "info", None)
        return getattr(info, "dataset_name", None) or type(self.path).__name__

    @property
    def place(self) -> str:
        """Where the rows are, for the places of bad rows: the path or Hub id as given, else the object's label."""
        return str(self.path) if isinstance(self.path, (str, os.PathLike)) else self.label
