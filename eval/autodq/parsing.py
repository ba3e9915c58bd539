"""Parse what an LLM judge actually writes back into events and entailment labels.

Real judge output wanders from the requested format: code fences, prose before or after the answer, Python
dict syntax (single quotes, True/None), trailing commas, answers cut off by the token limit, events reworded,
reordered or left out, labels such as "Entailed." or "CONTRADICTS". Every function here is deterministic:
the same text always gives the same result, so cached answers re-parse identically.
"""

from __future__ import annotations

import ast
import json
import re

LABELS = ("entailment", "neutral", "contradiction")
MISSING = "missing"  # the judge's answer has no item for this event
INVALID = "invalid"  # the item's label is not one of LABELS

_FENCE = re.compile(r"```[a-zA-Z0-9_-]*\s*\n?(.*?)(?:```|$)", re.DOTALL)
_WORD = re.compile(r"[a-z0-9]+")
_LIST_LINE = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+(.+?)\s*$")


class ParseError(ValueError):
    """The judge's answer holds nothing that can be read as the requested structure."""


def _balanced_spans(text: str) -> list[str]:
    """Every top-level `{...}` / `[...]` span of `text`, brackets inside string literals ignored.

    A span still open at the end of the text (an answer cut off by `max_tokens`) is cut at its last comma
    (dropping the unfinished element) and closed with the missing brackets.
    """
    spans = []
    i = 0
    while i < len(text):
        if text[i] not in "{[":
            i += 1
            continue
        stack, quote, escaped, start = [], None, False, i
        last_sep = None  # (index, open brackets) of the last comma outside strings, for truncated answers
        j = i
        while j < len(text):
            ch = text[j]
            if quote:
                if escaped:
                    escaped = False
                elif ch == "\\":
                    escaped = True
                elif ch == quote:
                    quote = None
            elif ch in "\"'":
                # an apostrophe inside a word ("man's") is not a quote
                if ch == '"' or not (j > 0 and text[j - 1].isalnum() and j + 1 < len(text) and text[j + 1].isalnum()):
                    quote = ch
            elif ch in "{[":
                stack.append("}" if ch == "{" else "]")
            elif ch == ",":
                last_sep = (j, list(stack))
            elif ch in "}]":
                if stack and ch == stack[-1]:
                    stack.pop()
                if not stack:
                    break
            j += 1
        if not stack:
            spans.append(text[start : j + 1])
            i = j + 1
        else:
            if last_sep is not None:  # cut the unfinished element after the last comma, close the rest
                end, open_stack = last_sep
                spans.append(text[start:end] + "".join(reversed(open_stack)))
            break
    return spans


def _repair(text: str) -> str:
    """Common near-JSON slips: smart quotes, Python literals, trailing commas, missing commas between objects."""
    text = text.replace("\u201c", '"').replace("\u201d", '"').replace("\u2018", "'").replace("\u2019", "'")
    text = re.sub(r"\bTrue\b", "true", text)
    text = re.sub(r"\bFalse\b", "false", text)
    text = re.sub(r"\bNone\b", "null", text)
    text = re.sub(r",\s*([}\]])", r"\1", text)
    text = re.sub(r"}\s*{", "}, {", text)
    return text


def _load(candidate: str):
    """`candidate` as JSON, else as a Python literal, else after `_repair`; None when nothing works."""
    for attempt in (candidate, _repair(candidate)):
        try:
            return json.loads(attempt)
        except (ValueError, RecursionError):
            pass
        try:
            python = attempt.replace("true", "True").replace("false", "False").replace("null", "None")
            return ast.literal_eval(python)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            pass
    return None


def load_structure(text: str):
    """The first dict or list found in a judge answer.

    Looks at fenced code blocks first, then the whole answer, then every bracketed span in order.
    Raises `ParseError` when none parses.
    """
    if not isinstance(text, str) or not text.strip():
        raise ParseError("the judge's answer is empty")
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    for candidate in candidates:
        candidate = candidate.strip()
        value = _load(candidate)
        if isinstance(value, (dict, list)):
            return value
        for span in _balanced_spans(candidate):
            value = _load(span)
            if isinstance(value, (dict, list)):
                return value
    raise ParseError(f"no JSON or Python list/dict in the judge's answer: {text[:200]!r}")


def _find_key(mapping: dict, *names: str):
    lowered = {str(k).strip().lower(): v for k, v in mapping.items()}
    for name in names:
        if name in lowered:
            return lowered[name]
    return None


def _event_text(item) -> str | None:
    if isinstance(item, str):
        return item.strip() or None
    if isinstance(item, dict):
        value = _find_key(item, "event", "description", "text", "action")
        return value.strip() if isinstance(value, str) and value.strip() else None
    return None


def parse_events(text: str, max_events: int | None = 10) -> tuple[list[str], dict]:
    """Events from an extraction answer (`{"events": [...]}`, a bare list, or a bulleted/numbered list).

    Returns `(events, info)`: at most `max_events` (None: all) non-empty strings in the judge's order, and
    `info = {"n_returned": int, "truncated": bool}`. Raises `ParseError` when no event list is found.
    """
    try:
        value = load_structure(text)
    except ParseError:
        lines = [m.group(1) for m in map(_LIST_LINE.match, (text or "").splitlines()) if m]
        if not lines:
            raise
        value = lines
    if isinstance(value, dict):
        inner = _find_key(value, "events", "event", "key_events")
        if inner is None and len(value) == 1:
            inner = next(iter(value.values()))
        value = inner
    if not isinstance(value, list):
        raise ParseError(f"the extraction answer has no list of events: {str(text)[:200]!r}")
    events = [e for e in map(_event_text, value) if e]
    if value and not events:
        raise ParseError(f"the extraction answer's event list holds no strings: {str(text)[:200]!r}")
    truncated = max_events is not None and len(events) > max_events
    return events[:max_events], {"n_returned": len(events), "truncated": truncated}


def normalize_label(label) -> str:
    """One of LABELS, or INVALID: 'Entailed.', 'ENTAILS' -> entailment; 'contradicts' -> contradiction."""
    if not isinstance(label, str):
        return INVALID
    word = label.strip().lower().strip(" .:;!\"'`*")
    if word.startswith("entail"):
        return "entailment"
    if word.startswith("contradict"):
        return "contradiction"
    if word.startswith("neutral"):
        return "neutral"
    return INVALID


def _words(text: str) -> frozenset:
    return frozenset(_WORD.findall(text.lower()))


def _answer_items(value) -> list[tuple[str | None, str]]:
    """(event text or None, normalised label) for every item of an entailment answer."""
    if isinstance(value, dict):
        inner = _find_key(value, "events", "results", "relationships", "output")
        if isinstance(inner, list):
            value = inner
        elif _find_key(value, "relationship", "relation", "label") is not None:
            value = [value]  # a single item without the surrounding list
        else:  # {"event text": "label", ...}
            value = [{"event": k, "relationship": v} for k, v in value.items()]
    if not isinstance(value, list):
        raise ParseError("the entailment answer is not a list")
    items = []
    for item in value:
        if isinstance(item, dict):
            label = _find_key(item, "relationship", "relation", "label", "class", "classification", "entailment")
            items.append((_event_text(item), normalize_label(label)))
        elif isinstance(item, str):  # a bare list of labels, one per event in order
            items.append((None, normalize_label(item)))
        elif isinstance(item, (list, tuple)) and len(item) == 2:
            items.append((_event_text(item[0]), normalize_label(item[1])))
    return items


def match_labels(events: list[str], items: list[tuple[str | None, str]]) -> list[str]:
    """Assign each event the label of the answer item that refers to it, deterministically.

    1. identical text (case and punctuation ignored), first unused item wins;
    2. then greedy best word overlap (Jaccard >= 0.5), highest first, ties to the lower event then item index;
    3. then, only when the answer has exactly one item per event, position.
    Events left without an item get MISSING.
    """
    labels: list[str | None] = [None] * len(events)
    used = [False] * len(items)
    norm_events = [" ".join(_WORD.findall(e.lower())) for e in events]
    norm_items = [" ".join(_WORD.findall(t.lower())) if t else None for t, _ in items]
    for i, event in enumerate(norm_events):
        for j, item in enumerate(norm_items):
            if not used[j] and item is not None and item == event:
                labels[i], used[j] = items[j][1], True
                break
    pairs = []
    for i, event in enumerate(events):
        if labels[i] is not None:
            continue
        ew = _words(event)
        for j, (text, _) in enumerate(items):
            if used[j] or text is None:
                continue
            iw = _words(text)
            score = len(ew & iw) / len(ew | iw) if ew | iw else 0.0
            if score >= 0.5:
                pairs.append((-score, i, j))
    for _, i, j in sorted(pairs):
        if labels[i] is None and not used[j]:
            labels[i], used[j] = items[j][1], True
    if len(items) == len(events):
        for i in range(len(events)):
            if labels[i] is None and not used[i]:
                labels[i], used[i] = items[i][1], True
    return [label if label is not None else MISSING for label in labels]


def parse_entailment(text: str, events: list[str]) -> list[str]:
    """One label per event (LABELS, MISSING or INVALID) from an entailment answer.

    Raises `ParseError` when the answer holds no readable list of judgements at all.
    """
    items = _answer_items(load_structure(text))
    if not items:
        raise ParseError(f"the entailment answer lists no judgements: {text[:200]!r}")
    return match_labels(list(events), items)


# ----------------------------------------------------------------------------------------------------------------
# The released evaluator's parsing (bytedance/tarsier `evaluation/metrics/evaluate_dream_gpt.py`), for the
# official preset: strict where the functions above are lenient. Every answer they refuse is one failed attempt.
# ----------------------------------------------------------------------------------------------------------------


def _strip_release_fence(text: str) -> str:
    """A leading ```json / ```python fence: every fence marker removed, then stripped (as the release does)."""
    for fence in ("```json", "```python"):
        if text.startswith(fence):
            return text.replace(fence, "").replace("```", "").strip()
    return text


def parse_events_release(text: str) -> list[str]:
    """Events from an extraction answer, read as the release does: the fence rule above, then
    `ast.literal_eval(answer)["events"]`, a list that is empty or starts with a string. Nothing is truncated.

    Raises `ParseError` for anything else (a bare list, prose, a non-literal).
    """
    try:
        value = ast.literal_eval(_strip_release_fence(text))
        events = value["events"]
    except (ValueError, SyntaxError, TypeError, KeyError, IndexError, MemoryError, RecursionError) as exc:
        raise ParseError(f"not a Python dict with 'events' ({type(exc).__name__}): {str(text)[:200]!r}") from None
    if not isinstance(events, list) or (events and not isinstance(events[0], str)):
        raise ParseError(f"'events' is not a list of strings: {str(text)[:200]!r}")
    return events


def clean_entailment_answer_release(text: str) -> str:
    """The release's clean-up of an entailment answer before `json.loads`, step by step: strip, whitespace runs
    collapsed to one space, the fence rule above, braces added when missing at either end, `True`/`False`
    lower-cased, `}{` / `} {` joined with a comma, a comma before a closing `}` / `]` dropped, `[Placeholder]`
    -> `null`, `{Events:` removed."""
    text = re.sub(r"\s+", " ", re.sub(r"\n+", "\n", text.strip()))
    text = _strip_release_fence(text)
    if not text.startswith("{"):
        text = "{" + text
    if not text.endswith("}"):
        text = text + "}"
    text = text.replace("True", "true").replace("False", "false")
    text = text.replace("} {", "}, {").replace("}{", "}, {")
    for close in "}]":
        for before in (",\n", ", \n", ", ", ","):
            text = text.replace(before + close, ("\n" if "\n" in before else "") + close)
    return text.replace("[Placeholder]", "null").replace("{Events:", "").strip()


def parse_entailment_release(text: str, n_events: int) -> list[str]:
    """Labels from an entailment answer, read as the release does: `json.loads(clean(answer))["events"]` with
    exactly `n_events` items (one when no events were asked about), each `relationship.strip().lower()` one of
    LABELS. Raises `ParseError` otherwise; labels such as "Entailed" are refused, not normalised."""
    try:
        items = json.loads(clean_entailment_answer_release(text))["events"]
        labels = [item["relationship"].strip().lower() for item in items]
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
        raise ParseError(f"not a JSON object with 'events' ({type(exc).__name__}): {str(text)[:200]!r}") from None
    if len(labels) != (n_events or 1):
        raise ParseError(f"{len(labels)} judgements for {n_events} events: {str(text)[:200]!r}")
    bad = [label for label in labels if label not in LABELS]
    if bad:
        raise ParseError(f"labels {bad} are not among {LABELS}")
    return labels
