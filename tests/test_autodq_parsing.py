"""AutoDQ answer parsing: the shapes real LLM judges write back."""

import pytest

from tarsier_hf.eval.autodq.parsing import (
    INVALID,
    MISSING,
    ParseError,
    load_structure,
    match_labels,
    normalize_label,
    parse_entailment,
    parse_events,
)

EVENTS = ["The woman puts on headphones.", "The woman picks up the glass.", "The woman drinks the juice."]


@pytest.mark.parametrize(
    "answer",
    [
        '{"events": ["A man runs.", "A dog sits."]}',
        "```json\n{\"events\": [\"A man runs.\", \"A dog sits.\"]}\n```",
        "```python\n{'events': ['A man runs.', 'A dog sits.',]}\n```\nI hope this helps!",
        "Sure! Here are the events:\n{'events': ['A man runs.', 'A dog sits.']}\nLet me know if you need more.",
        '["A man runs.", "A dog sits."]',
        "Events:\n1. A man runs.\n2. A dog sits.",
        "- A man runs.\n- A dog sits.",
        '{"Events": [{"event": "A man runs."}, {"event": "A dog sits."}]}',
        '{"events": ["A man runs.", "A dog sits.", "A bird fl',  # cut off by the token limit
        "\u201cevents\u201d is not valid but {\u201cevents\u201d: [\u201cA man runs.\u201d, \u201cA dog sits.\u201d]}",
    ],
)
def test_parse_events_survives_real_output(answer):
    events, info = parse_events(answer)
    assert events == ["A man runs.", "A dog sits."]
    assert info["truncated"] is False


def test_parse_events_keeps_apostrophes_and_caps_at_ten():
    events, _ = parse_events("{'events': [\"The man's dog sits.\", 'It is a dog\\'s life.']}")
    assert events == ["The man's dog sits.", "It is a dog's life."]
    many = {"events": [f"Event {i} happens." for i in range(13)]}
    events, info = parse_events(str(many))
    assert len(events) == 10 and events[-1] == "Event 9 happens."
    assert info == {"n_returned": 13, "truncated": True}


@pytest.mark.parametrize("answer", ["", "   ", "I cannot help with that.", "{'foo': 3, 'bar': 4}", "<html>oops</html>"])
def test_parse_events_refuses_answers_without_events(answer):
    with pytest.raises(ParseError):
        parse_events(answer)


def test_labels_are_normalised():
    assert normalize_label("Entailment") == "entailment"
    assert normalize_label(" entailed. ") == "entailment"
    assert normalize_label("CONTRADICTS") == "contradiction"
    assert normalize_label("neutral") == "neutral"
    assert normalize_label("yes") == INVALID
    assert normalize_label(None) == INVALID


def test_entailment_reordered_reworded_and_missing_events_are_matched_deterministically():
    answer = """```json
    [ {"event": "the woman drinks the juice", "relationship": "contradiction", "reason": "x"},
      {"event": "Woman picks up a glass", "relationship": "Entailment", "reason": "y"} ]
    ```
    The first event is not mentioned."""
    labels = parse_entailment(answer, EVENTS)
    # exact text (case/punctuation ignored) first, then word overlap; the headphones event has no item
    assert labels == [MISSING, "entailment", "contradiction"]
    assert parse_entailment(answer, EVENTS) == labels  # same text, same result


def test_entailment_shapes():
    wrapped = '{"events": [{"event": "%s", "relationship": "neutral"}, {"event": "%s", "relationship": "entailment"}, {"event": "%s", "relationship": "maybe"}]}' % tuple(EVENTS)
    assert parse_entailment(wrapped, EVENTS) == ["neutral", "entailment", INVALID]
    python_style = "[{'event': 'The woman puts on headphones.', 'relationship': 'entailment', 'reason': None}]"
    assert parse_entailment(python_style, EVENTS[:1]) == ["entailment"]
    mapping = '{"The woman puts on headphones.": "entailment", "The woman drinks the juice.": "neutral"}'
    assert parse_entailment(mapping, EVENTS) == ["entailment", MISSING, "neutral"]
    # same number of items with unrelated text: matched by position
    positional = '[{"event": "e1", "relationship": "neutral"}, {"event": "e2", "relationship": "entailment"}, {"event": "e3", "relationship": "contradiction"}]'
    assert parse_entailment(positional, EVENTS) == ["neutral", "entailment", "contradiction"]
    assert parse_entailment('["entailment", "neutral", "entailment"]', EVENTS) == ["entailment", "neutral", "entailment"]
    with pytest.raises(ParseError):
        parse_entailment("The description entails all events.", EVENTS)


def test_duplicate_events_each_take_their_own_item():
    items = [("A man runs.", "entailment"), ("A man runs.", "neutral")]
    assert match_labels(["A man runs.", "A man runs."], items) == ["entailment", "neutral"]


def test_load_structure_prefers_fenced_block():
    text = 'Example: {"events": ["wrong"]}\n```json\n{"events": ["right"]}\n```'
    assert load_structure(text) == {"events": ["right"]}
