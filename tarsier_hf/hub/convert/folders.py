"""The output folder of a conversion and the small files both converters read and write unchanged."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from transformers import AutoTokenizer

from tarsier_hf.hub.checkpoint import CheckpointError

# Files an export (and the Tarsier2 conversion) copies unchanged when the input folder has them.
CARRIED_FILES = ("generation_config.json", "README.md")


def prepare_output(output: Path, overwrite: bool, source: Path) -> None:
    """Create `output` (emptied first with `overwrite`); refuse the input folder itself or a non-empty one."""
    if output.resolve() == source.resolve():
        raise CheckpointError(f"{output}: output folder must differ from the input folder")
    if output.exists() and any(output.iterdir()):
        if not overwrite:
            raise CheckpointError(f"{output}: output folder exists and is not empty (pass --overwrite)")
        shutil.rmtree(output)
    output.mkdir(parents=True, exist_ok=True)


def write_json(path: Path, data: dict) -> None:
    """`data` as the converters write every JSON file: indented by 2, keys sorted, a final newline."""
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def copy_present(source: Path, output: Path, names: tuple[str, ...]) -> None:
    """Copy each of `names` that `source` holds into `output`, unchanged."""
    for name in names:
        if (source / name).is_file():
            shutil.copyfile(source / name, output / name)


def load_tokenizer(folder: Path):
    """The folder's tokenizer (`CheckpointError` naming the folder when it does not load)."""
    try:
        return AutoTokenizer.from_pretrained(folder)
    except Exception as error:  # noqa: BLE001 - the tokenizer loaders raise many types
        raise CheckpointError(f"{folder}: cannot load the tokenizer ({type(error).__name__}: {error})") from None

