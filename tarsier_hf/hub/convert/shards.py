"""Checkpoint weights streamed shard by shard, renamed, and checked against a model built on the meta device.

Both converters (`tarsier.py`, `tarsier2.py`) rename tensors only: `stream_shards` reads one input shard with
`safetensors.safe_open`, renames its tensors and writes them as one output shard before the next is opened, so peak
memory stays near the size of the largest shard. The output keeps the input's partition and dtype, and tensors are
written in sorted order with fixed metadata, so a round trip reproduces a folder byte for byte.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from modeling_tarsier import TarsierForConditionalGeneration

from tarsier_hf.hub.checkpoint import INDEX_FILE, CheckpointError
from tarsier_hf.hub.convert.folders import write_json

SHARD_METADATA = {"format": "pt"}


def swap_prefix(name: str, pairs: tuple[tuple[str, str], ...], source: str) -> str:
    """`name` with the first matching `old` prefix of `(old, new)` `pairs` replaced by `new`; `CheckpointError`
    naming `source` when none matches."""
    for old, new in pairs:
        if name.startswith(old):
            return new + name[len(old):]
    expected = ", ".join(old + "*" for old, _ in pairs)
    raise CheckpointError(f"{source}: tensor {name!r} matches none of the expected prefixes ({expected})")


def list_shards(folder: Path) -> list[Path]:
    """Safetensors shards of a checkpoint folder, in index order (or the single `model.safetensors`)."""
    index_path = folder / INDEX_FILE
    if index_path.is_file():
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise CheckpointError(f"{index_path}: not a safetensors index with a 'weight_map' ({error})") from None
        names = sorted(set(weight_map.values()))
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise CheckpointError(f"{index_path}: lists shards that are missing from the folder: {missing}")
        return [folder / n for n in names]
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    if any(folder.glob("*.bin")):
        raise CheckpointError(
            f"{folder}: holds PyTorch .bin weights; this converter streams safetensors only "
            "(re-save the checkpoint with safe_serialization=True first)"
        )
    raise CheckpointError(f"{folder}: no {INDEX_FILE} and no model.safetensors")


def tensor_shapes(
    shards: list[Path], rename: Callable[[str, str], str | None] | None = None
) -> dict[str, tuple[int, ...]]:
    """(Renamed) name -> shape of every tensor in the shards, read from the headers only (no tensor data)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for shard in shards:
        with safe_open(str(shard), framework="pt") as handle:
            for name in handle.keys():
                new_name = rename(name, str(shard)) if rename is not None else name
                if new_name is None:
                    continue
                if new_name in shapes:
                    raise CheckpointError(f"{shard}: tensor {new_name!r} also appears in an earlier shard")
                shapes[new_name] = tuple(handle.get_slice(name).get_shape())
    return shapes


def stream_shards(
    shards: list[Path], output: Path, rename: Callable[[str, str], str | None], description: str
) -> dict[str, str]:
    """Rename every tensor shard by shard and write the new shards plus their index.

    One input shard is held in memory at a time. Output shard `i` holds exactly the tensors of input shard `i`
    (renamed), in sorted order, with their original dtype and bytes.

    Args:
        shards: input safetensors files.
        output: destination folder.
        rename: `(name, shard_path) -> new name`, or `None` to drop the tensor.
        description: progress bar label.

    Returns:
        The index's `weight_map` (new tensor name -> shard file name).
    """
    weight_map: dict[str, str] = {}
    total_size = 0
    count = len(shards)
    for number, shard in enumerate(tqdm(shards, desc=description, unit="shard"), start=1):
        file_name = f"model-{number:05d}-of-{count:05d}.safetensors"
        tensors: dict[str, torch.Tensor] = {}
        with safe_open(str(shard), framework="pt") as handle:
            for name in handle.keys():
                new_name = rename(name, str(shard))
                if new_name is None:
                    continue
                if new_name in weight_map or new_name in tensors:
                    raise CheckpointError(f"{shard}: two tensors map to {new_name!r}")
                tensors[new_name] = handle.get_tensor(name)
        for name, tensor in tensors.items():
            weight_map[name] = file_name
            total_size += tensor.numel() * tensor.element_size()
        save_file({name: tensors[name] for name in sorted(tensors)}, str(output / file_name), metadata=SHARD_METADATA)
        del tensors
    index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
    write_json(output / INDEX_FILE, index)
    return weight_map


def check_weights_fit(config, shapes: dict[str, tuple[int, ...]], source: str,
                      model_class=TarsierForConditionalGeneration) -> None:
    """Compare renamed tensor names/shapes with those of `model_class(config)` (built on the meta device, so no
    memory is used) and raise on any missing, unexpected or mis-shaped tensor. Tarsier by default; the Tarsier2
    converter passes transformers' `Qwen2VLForConditionalGeneration`."""
    with torch.device("meta"):
        model = model_class(config)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
        shapes = {k: v for k, v in shapes.items() if k != "lm_head.weight"}
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong = sorted(n for n in set(expected) & set(shapes) if expected[n] != shapes[n])
    problems = []
    if missing:
        problems.append(f"missing tensors {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
    if wrong:
        problems.append(
            "shape mismatches " + ", ".join(f"{n}: checkpoint {shapes[n]} vs config {expected[n]}" for n in wrong[:8])
        )
    if problems:
        raise CheckpointError(f"{source}: the weights do not fit the {model_class.__name__} config: "
                              + "; ".join(problems))
