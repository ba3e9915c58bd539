"""Exact event precision / recall / F1 in AutoDQ's form, for descriptions in the DREAM-S grammar.

AutoDQ (paper §4.2) extracts events from the reference and the prediction with an LLM and checks entailment
with an LLM: recall = share of reference events entailed by the prediction, precision = share of predicted
events entailed by the reference. With a closed grammar both steps are exact and need no LLM judge: the parser
extracts the predicted events, and an event is "entailed" when an identical event (same subject, action and
object) is matched in the ground truth.

Order-aware matching: the matched events are a longest common subsequence of the two event sequences, so a
predicted event counts only if it also keeps its place relative to the other matched events (the right events
in the wrong order lose credit). Pass `ordered=False` for order-free (multiset) matching.

Per-sample conventions follow the released AutoDQ code: a sample with no ground-truth events has recall 1; a
prediction with no parsable event has precision 0 (unless the ground truth is empty too, then 1). Corpus scores
average precision and recall over samples and take F1 of the two averages, as AutoDQ does.
"""

from __future__ import annotations

from collections import Counter
from typing import Hashable, Iterable, Sequence

from .grammar import normalise, parse_description


def event_key(event: dict) -> tuple[str, str, str | None]:
    """What makes two events the same: subject, action and object (order is handled by the matching)."""
    obj = event.get("object")
    return (normalise(str(event["subject"])), normalise(str(event["action"])), None if obj is None else normalise(str(obj)))


def count_matches(predicted: Sequence[dict], reference: Sequence[dict], ordered: bool = True) -> int:
    """Number of matched events: longest common subsequence of keys (ordered) or multiset overlap."""
    pred = [event_key(e) for e in predicted]
    ref = [event_key(e) for e in sorted(reference, key=lambda e: e.get("order", 0))]
    if not ordered:
        return sum((Counter(pred) & Counter(ref)).values())
    previous = [0] * (len(ref) + 1)
    for p in pred:
        current = [0]
        for j, r in enumerate(ref):
            current.append(previous[j] + 1 if p == r else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def _f1(precision: float, recall: float) -> float:
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def event_scores(predicted_text: str, gt_events: Sequence[dict], ordered: bool = True) -> dict:
    """Score one description against its ground-truth events.

    Returns:
        `{"precision", "recall", "f1", "n_pred", "n_gt", "n_matched", "unmatched"}`; `unmatched` lists the
        clauses of the prediction the grammar does not cover (they count as no event).
    """
    for i, event in enumerate(gt_events):
        if not isinstance(event, dict) or "subject" not in event or "action" not in event:
            raise ValueError(f"gt_events[{i}] must be a dict with 'subject' and 'action', got {event!r}")
    parsed = parse_description(predicted_text)
    n_pred, n_gt = len(parsed.events), len(gt_events)
    matched = count_matches(parsed.events, gt_events, ordered=ordered)
    recall = 1.0 if n_gt == 0 else matched / n_gt
    precision = (1.0 if n_gt == 0 else 0.0) if n_pred == 0 else matched / n_pred
    return {
        "precision": precision,
        "recall": recall,
        "f1": _f1(precision, recall),
        "n_pred": n_pred,
        "n_gt": n_gt,
        "n_matched": matched,
        "unmatched": parsed.unmatched,
    }


def corpus_event_scores(samples: Iterable[dict]) -> dict:
    """Aggregate `event_scores` results: mean precision, mean recall, and F1 of those means (AutoDQ's form)."""
    samples = list(samples)
    if not samples:
        raise ValueError("corpus_event_scores needs at least one scored sample")
    precision = sum(s["precision"] for s in samples) / len(samples)
    recall = sum(s["recall"] for s in samples) / len(samples)
    return {"precision": precision, "recall": recall, "f1": _f1(precision, recall), "n": len(samples)}


def corpus_event_scores_by(samples: Sequence[dict], groups: Sequence[Hashable]) -> dict:
    """Corpus scores per group, e.g. `groups = [row["n_events"] for row in test_rows]` for F1 against the
    number of events (the paper's Figure 5). Returns `{group: corpus_event_scores(...)}` in sorted group order."""
    if len(samples) != len(groups):
        raise ValueError(f"got {len(samples)} scored samples but {len(groups)} group labels")
    buckets: dict = {}
    for sample, group in zip(samples, groups):
        buckets.setdefault(group, []).append(sample)
    return {group: corpus_event_scores(buckets[group]) for group in sorted(buckets)}
