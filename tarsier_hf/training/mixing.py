"""Mixing by source: each row's mixing source, the `--source_weights` it is weighted by, and the one rule by which a
weight `w` repeats a source (`floor(w)` whole copies plus a fraction `w - floor(w)`), applied per epoch to a
map-style mixture (`mixture_indices`) and per row to a stream (`stream_copies`).

`datasets.interleave_datasets(probabilities=...)` samples sources by probability, which neither keeps every row of a
weight-1 source once per epoch nor reproduces these draws, so the rule is written here.
"""

from __future__ import annotations

import random
from typing import Sequence

import numpy as np

from tarsier_hf.training.dataset_spec import DatasetSpec
from tarsier_hf.training.layouts import LAYOUT_SOURCES, detect_layout


def parse_weights(pairs: Sequence[str] | None) -> dict[str, float]:
    """`["webvid=0.5", "ssv2=2"]` -> `{"webvid": 0.5, "ssv2": 2.0}`."""
    weights = {}
    for pair in pairs or []:
        name, sep, value = pair.rpartition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = -1.0
        if not sep or not name or weight < 0:
            raise ValueError(f"mixing weight {pair!r}: expected NAME=WEIGHT with WEIGHT >= 0")
        weights[name] = weight
    return weights


def weight_parts(weights: dict[str, float], source: str | None) -> tuple[int, float]:
    """The weight of `source` (1 when `weights` names it not) as `(whole copies, fraction)`: 2.5 -> `(2, 0.5)`."""
    whole, frac = divmod(weights.get(source, 1.0), 1.0)
    return int(whole), frac


def mixture_indices(sources: Sequence[str | None], weights: dict[str, float], seed: int) -> np.ndarray:
    """
    Indices of one epoch of the mixture: each source's rows are re-sampled by its weight.

    A weight `w` draws `round(w * n)` of the source's `n` rows: a random subset without replacement for `w <= 1`
    (down-sampling, as the paper re-samples WebVid), every row `floor(w)` times plus a random remainder for `w > 1`.
    Sources without a weight keep weight 1. The result is shuffled by the trainer's sampler, not here.
    """
    unknown = set(weights) - {s for s in sources}
    if unknown:
        raise ValueError(f"mixing weights name unknown sources {sorted(unknown)}; sources in the data: "
                         f"{sorted({str(s) for s in sources})}")
    rng = np.random.default_rng(seed)
    by_source: dict[str | None, list[int]] = {}
    for index, source in enumerate(sources):
        by_source.setdefault(source, []).append(index)
    chosen = []
    for source, rows in by_source.items():
        rows = np.asarray(rows)
        whole, frac = weight_parts(weights, source)
        chosen.extend([rows] * whole)
        extra = int(round(frac * len(rows)))
        if extra:
            chosen.append(rng.choice(rows, size=extra, replace=False))
    if not chosen:
        raise ValueError("the mixing weights leave no training rows")
    return np.sort(np.concatenate(chosen))


def stream_copies(weights: dict[str, float], source: str | None, rng: random.Random) -> int:
    """How many times a streamed row of `source` is yielded: `floor(w)`, plus once more with probability
    `w - floor(w)` (one draw of `rng` per row, whatever the weight)."""
    whole, frac = weight_parts(weights, source)
    return whole + (rng.random() < frac)


def default_source(columns, spec: DatasetSpec) -> str:
    """The source of rows that name none: the layout's dataset (WebVid, ShareGPT4Video), else the dataset's label."""
    return LAYOUT_SOURCES.get(detect_layout(columns), spec.label)


def row_source(raw: dict, spec: DatasetSpec) -> str:
    """The source of a raw row (`source`, `dataset` or `data_source`), else `default_source`."""
    named = next((raw[key] for key in ("source", "dataset", "data_source") if raw.get(key) is not None), None)
    return named if named is not None else default_source(raw, spec)
