"""AutoDQ aggregation: micro and DREAM-1K macro averages, complexity breakdowns, repeats and bootstrap CIs.

micro: every scored sample weighs the same: mean recall, mean precision, F1 of those two means.
macro (DREAM-1K's official number): mean recall and mean precision per category, then the plain mean of those
over categories, F1 of the two results (the released evaluator's `_summarize_metric_by_subtask`, categories being
DREAM-1K's `dataset` field). `f1_when_zero` is the F1 reported when recall + precision = 0 (the official preset:
nan, as the release's numpy arithmetic gives).
Breakdowns use the released evaluator's buckets: events <=3, 4-5, 6-7, >=8; subjects and shots <=1, 2, 3, >=4.
"""

from __future__ import annotations

import random
import statistics

import numpy as np

from .scoring import SampleScore, f1_score

BUCKETS = {
    "events": (("<=3", lambda n: n <= 3), ("4-5", lambda n: 4 <= n <= 5), ("6-7", lambda n: 6 <= n <= 7), (">=8", lambda n: n >= 8)),
    "subjects": (("<=1", lambda n: n <= 1), ("2", lambda n: n == 2), ("3", lambda n: n == 3), (">=4", lambda n: n >= 4)),
    "shots": (("<=1", lambda n: n <= 1), ("2", lambda n: n == 2), ("3", lambda n: n == 3), (">=4", lambda n: n >= 4)),
}


def scored(scores: list[SampleScore]) -> list[SampleScore]:
    """The samples that enter averages: all but dropped failures (recall None)."""
    return [s for s in scores if s.recall is not None]


def _prf(recalls: list[float], precisions: list[float], f1_when_zero: float = 0.0) -> dict:
    if not recalls:
        return {"recall": None, "precision": None, "f1": None, "n": 0}
    # numpy's (pairwise) mean, as the released evaluator's np.average: the same bits on long lists
    r, p = float(np.mean(recalls)), float(np.mean(precisions))
    return {"recall": r, "precision": p, "f1": f1_score(r, p, f1_when_zero), "n": len(recalls)}


def micro(scores: list[SampleScore], f1_when_zero: float = 0.0) -> dict:
    kept = scored(scores)
    return _prf([s.recall for s in kept], [s.precision for s in kept], f1_when_zero)


def macro(scores: list[SampleScore], f1_when_zero: float = 0.0) -> dict | None:
    """DREAM-1K's official average; None when no sample has a category."""
    kept = [s for s in scored(scores) if s.category is not None]
    if not kept:
        return None
    categories = sorted({s.category for s in kept})
    per_category = {}
    for cat in categories:
        group = [s for s in scores if s.category == cat]
        stats = _prf([s.recall for s in kept if s.category == cat], [s.precision for s in kept if s.category == cat],
                     f1_when_zero)
        stats["n_failed"] = sum(s.failed for s in group)
        per_category[cat] = stats
    r = float(np.mean([c["recall"] for c in per_category.values()]))
    p = float(np.mean([c["precision"] for c in per_category.values()]))
    return {"recall": r, "precision": p, "f1": f1_score(r, p, f1_when_zero), "categories": categories,
            "per_category": per_category}


def breakdowns(scores: list[SampleScore], f1_when_zero: float = 0.0) -> dict:
    """{"events"|"subjects"|"shots": {bucket: {recall, precision, f1, n}}}; a dimension without data is omitted."""
    kept = scored(scores)
    out = {}
    for dim, buckets in BUCKETS.items():
        values = [(s, getattr(s, f"n_{dim}")) for s in kept]
        if not any(v is not None for _, v in values):
            continue
        out[dim] = {}
        for name, test in buckets:
            group = [s for s, v in values if v is not None and test(v)]
            out[dim][name] = _prf([s.recall for s in group], [s.precision for s in group], f1_when_zero)
    return out


def summarize(scores: list[SampleScore], f1_when_zero: float = 0.0) -> dict:
    """Aggregates of one run (one repeat)."""
    failed = [s for s in scores if s.failed]
    return {
        "micro": micro(scores, f1_when_zero),
        "macro": macro(scores, f1_when_zero),
        "breakdowns": breakdowns(scores, f1_when_zero),
        "n_samples": len(scores),
        "n_scored": len(scored(scores)),
        "n_failed": len(failed),
        "n_partial": sum(s.partial for s in scores),
        "failed": [{"index": s.index, "repeat": s.repeat, "error": s.error} for s in failed],
    }


def mean_std(values: list[float]) -> dict:
    """mean and sample standard deviation (0 for a single value)."""
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "std": None, "values": []}
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "values": values}


def _per_video(runs: list[list[SampleScore]]) -> list[tuple[str | None, float, float]]:
    """(category, recall, precision) per video, averaged over the repeats in which it was scored."""
    by_index: dict[int, list[SampleScore]] = {}
    for run in runs:
        for s in scored(run):
            by_index.setdefault(s.index, []).append(s)
    rows = []
    for index in sorted(by_index):
        group = by_index[index]
        rows.append((group[0].category, statistics.fmean(s.recall for s in group), statistics.fmean(s.precision for s in group)))
    return rows


def _stats(rows) -> tuple[float, float, float, float | None]:
    """(micro R, micro P, micro F1, macro F1 or None) of (category, recall, precision) rows."""
    r = statistics.fmean(row[1] for row in rows)
    p = statistics.fmean(row[2] for row in rows)
    cats: dict[str, list] = {}
    for row in rows:
        if row[0] is not None:
            cats.setdefault(row[0], []).append(row)
    macro_f1 = None
    if cats:
        mr = statistics.fmean(statistics.fmean(x[1] for x in g) for g in cats.values())
        mp = statistics.fmean(statistics.fmean(x[2] for x in g) for g in cats.values())
        macro_f1 = f1_score(mr, mp)
    return r, p, f1_score(r, p), macro_f1


def bootstrap_ci(runs: list[list[SampleScore]], n_resamples: int = 1000, level: float = 0.95, seed: int = 0) -> dict | None:
    """Percentile bootstrap CI over videos for micro recall/precision/F1 and macro F1.

    Videos are resampled with replacement within their category (stratified), so every category stays present
    and the macro average stays defined. Each video's score is its mean over repeats.
    """
    rows = _per_video(runs)
    if not rows or n_resamples <= 0:
        return None
    rng = random.Random(seed)
    strata: dict = {}
    for row in rows:
        strata.setdefault(row[0], []).append(row)
    draws = {"recall": [], "precision": [], "f1": [], "macro_f1": []}
    for _ in range(n_resamples):
        sample = [rng.choice(group) for group in strata.values() for _ in group]
        r, p, f1, macro_f1 = _stats(sample)
        draws["recall"].append(r)
        draws["precision"].append(p)
        draws["f1"].append(f1)
        if macro_f1 is not None:
            draws["macro_f1"].append(macro_f1)
    lo_q, hi_q = (1 - level) / 2, 1 - (1 - level) / 2
    out = {"level": level, "n_resamples": n_resamples, "n_videos": len(rows), "seed": seed}
    for name, values in draws.items():
        if values:
            values.sort()
            lo = values[min(len(values) - 1, int(lo_q * len(values)))]
            hi = values[min(len(values) - 1, int(hi_q * len(values)))]
            out[name] = {"low": lo, "high": hi}
    return out
