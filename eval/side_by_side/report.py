"""Side-by-side report: win / same / loss, advantage rate with a bootstrap interval, and annotator agreement.

Scores are from model 1's point of view (the first result file): a win is +1, "same" 0, a loss -1, and the
advantage rate is the mean score = win rate - loss rate (the paper's Table 4). The interval is a percentile
bootstrap over *videos*: pooled rows resample pairs with all of their judgments, so several annotators
labelling the same video are not counted as independent evidence.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .labels import annotators as list_annotators
from .labels import label_path, read_labels
from .session import Session, load_session

CATEGORIES = ("model_1", "same", "model_2")
SCORE = {"model_1": 1, "same": 0, "model_2": -1}


@dataclass
class Row:
    """One line of the Table-4-style report."""

    comparison: str
    annotator: str
    pairs: int
    assigned: int
    judgments: int
    win: float
    same: float
    loss: float
    advantage: float
    ci_low: float
    ci_high: float


@dataclass
class Agreement:
    """Agreement of two annotators on the pairs both labelled."""

    annotator_1: str
    annotator_2: str
    common: int
    percent: float
    cohen_kappa: float


def advantage_interval(
    judgments: dict[int, list[str]], num_bootstrap: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Advantage rate of `{pair: [winner, ...]}` and its percentile bootstrap interval over pairs.

    Returns:
        `(advantage, low, high)`; NaNs when there is no judgment.
    """
    sums = np.array([sum(SCORE[w] for w in winners) for winners in judgments.values()], dtype=np.float64)
    counts = np.array([len(winners) for winners in judgments.values()], dtype=np.float64)
    if counts.sum() == 0:
        return math.nan, math.nan, math.nan
    advantage = float(sums.sum() / counts.sum())
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(sums), size=(num_bootstrap, len(sums)))  # (B, P) resampled pair indices
    replicates = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)  # (B,)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return advantage, float(low), float(high)


def cohen_kappa(first: list[str], second: list[str]) -> float:
    """Cohen's kappa of two label sequences over CATEGORIES (NaN when chance agreement is 1)."""
    n = len(first)
    if n == 0:
        return math.nan
    observed = sum(a == b for a, b in zip(first, second)) / n
    expected = sum((first.count(c) / n) * (second.count(c) / n) for c in CATEGORIES)
    return math.nan if expected >= 1 else (observed - expected) / (1 - expected)


def fleiss_kappa(ratings: list[list[str]]) -> float:
    """Fleiss' kappa of items each rated by the same number (>= 2) of raters (NaN when undefined)."""
    if not ratings:
        return math.nan
    raters = len(ratings[0])
    if raters < 2 or any(len(item) != raters for item in ratings):
        raise ValueError("Fleiss' kappa needs the same number (>= 2) of ratings for every item")
    table = np.array([[item.count(c) for c in CATEGORIES] for item in ratings], dtype=np.float64)  # (items, K)
    per_item = ((table * (table - 1)).sum(axis=1)) / (raters * (raters - 1))  # (items,)
    observed = per_item.mean()
    shares = table.sum(axis=0) / table.sum()  # (K,)
    expected = float((shares**2).sum())
    return math.nan if expected >= 1 else float((observed - expected) / (1 - expected))


def session_winners(out_dir: str | os.PathLike, session: Session) -> dict[str, dict[int, str]]:
    """`{annotator: {pair: winner}}` from the label files (last label per pair wins), mapped through the session."""
    result = {}
    for name in sorted(set(list_annotators(out_dir)) | set(session.annotators)):
        latest = read_labels(label_path(out_dir, name), session)
        result[name] = {index: session.pairs[index].winner(record["label"]) for index, record in latest.items()}
    return result


def _assigned(session: Session, annotator: str) -> int:
    if not session.assignments:
        return len(session.pairs)
    return len(session.assignments.get(annotator, []))


def _row(comparison: str, annotator: str, assigned: int, judgments: dict[int, list[str]], num_bootstrap, confidence, seed) -> Row:
    flat = [winner for winners in judgments.values() for winner in winners]
    n = len(flat)
    advantage, low, high = advantage_interval(judgments, num_bootstrap, confidence, seed)
    rate = (lambda c: flat.count(c) / n) if n else (lambda c: math.nan)
    return Row(comparison, annotator, len(judgments), assigned, n, rate("model_1"), rate("same"), rate("model_2"), advantage, low, high)


def analyse(out_dir: str | os.PathLike, num_bootstrap: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict:
    """All numbers of one session folder: per-annotator and pooled rows, pairwise agreement, Fleiss' kappa."""
    session = load_session(out_dir)
    comparison = f"{session.model_1} vs {session.model_2}"
    winners = session_winners(out_dir, session)
    rows = [
        _row(comparison, name, _assigned(session, name), {i: [w] for i, w in labels.items()}, num_bootstrap, confidence, seed)
        for name, labels in winners.items()
    ]
    pooled: dict[int, list[str]] = {}
    for labels in winners.values():
        for index, winner in labels.items():
            pooled.setdefault(index, []).append(winner)
    rows.append(_row(comparison, "pooled", len(session.pairs), pooled, num_bootstrap, confidence, seed))
    agreements = []
    for one, two in itertools.combinations(winners, 2):
        common = sorted(set(winners[one]) & set(winners[two]))
        first, second = [winners[one][i] for i in common], [winners[two][i] for i in common]
        percent = sum(a == b for a, b in zip(first, second)) / len(common) if common else math.nan
        agreements.append(Agreement(one, two, len(common), percent, cohen_kappa(first, second)))
    shared = [i for i in range(len(session.pairs)) if all(i in labels for labels in winners.values())]
    fleiss = fleiss_kappa([[winners[name][i] for name in winners] for i in shared]) if len(winners) >= 2 else math.nan
    return {
        "comparison": comparison,
        "model_1": session.model_1,
        "model_2": session.model_2,
        "num_pairs": len(session.pairs),
        "rows": [asdict(row) for row in rows],
        "agreement": [asdict(a) for a in agreements],
        "fleiss_kappa": fleiss,
        "fleiss_pairs": len(shared) if len(winners) >= 2 else 0,
        "annotators": list(winners),
        "confidence": confidence,
        "num_bootstrap": num_bootstrap,
    }


def _pct(value: float, signed: bool = False) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value * 100:+.1f}%" if signed else f"{value * 100:.1f}%"


def _num(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def to_markdown(analyses: list[dict]) -> str:
    """Table 4's layout (Comparison | first wins | Same | second wins | Advantage) plus n, the interval and agreement."""
    if not analyses:
        return "No sessions.\n"
    level = round(analyses[0]["confidence"] * 100)
    lines = [
        "## Side-by-side human evaluation",
        "",
        f"| Comparison | Annotator | Pairs | First wins | Same | Second wins | Advantage | {level}% CI |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for analysis in analyses:
        for row in analysis["rows"]:
            interval = "n/a" if math.isnan(row["ci_low"]) else f"[{_pct(row['ci_low'], True)}, {_pct(row['ci_high'], True)}]"
            count = f"{row['pairs']}/{row['assigned']}"
            if row["annotator"] == "pooled":
                count += f" ({row['judgments']} labels)"
            lines.append(
                f"| {row['comparison']} | {row['annotator']} | {count} | {_pct(row['win'])} | {_pct(row['same'])} | "
                f"{_pct(row['loss'])} | {_pct(row['advantage'], True)} | {interval} |"
            )
    lines += ["", f"Advantage = first-model win rate - loss rate; {level}% percentile bootstrap over videos "
              f"({analyses[0]['num_bootstrap']} resamples)."]
    for analysis in analyses:
        lines += ["", f"### Agreement between annotators: {analysis['comparison']}", ""]
        if len(analysis["annotators"]) < 2:
            lines.append("Fewer than two annotators: no agreement to report.")
            continue
        lines += ["| Annotators | Common pairs | Agreement | Cohen's kappa |", "|---|---:|---:|---:|"]
        for a in analysis["agreement"]:
            lines.append(f"| {a['annotator_1']} / {a['annotator_2']} | {a['common']} | {_pct(a['percent'])} | {_num(a['cohen_kappa'])} |")
        lines += ["", f"Fleiss' kappa over the {analysis['fleiss_pairs']} pairs labelled by all "
                  f"{len(analysis['annotators'])} annotators: {_num(analysis['fleiss_kappa'])}"]
    return "\n".join(lines) + "\n"


def report(out_dirs: list[str | os.PathLike], num_bootstrap: int = 2000, confidence: float = 0.95, seed: int = 0) -> tuple[str, list[dict]]:
    """Markdown and the raw numbers for one or more session folders (one comparison each)."""
    analyses = [analyse(Path(out), num_bootstrap, confidence, seed) for out in out_dirs]
    return to_markdown(analyses), analyses
