"""Versioned AutoDQ prompts.

`tarsier-paper-v1` is the text of Appendix B of the Tarsier paper ("Tarsier: Recipes for Training and Evaluating
Large Video Description Models"), verbatim: one prompt extracts at most 10 events from a description, the other
labels each event against a description as entailment / neutral / contradiction; events are sent as a JSON list.

`tarsier-release-v1` is what the released evaluator sends (bytedance/tarsier, `evaluation/metrics/
evaluate_dream_gpt.py`, identical on the `tarsier` and `tarsier2` branches), so that the official preset asks
the judge exactly the same questions: its wording, the `{"events": [...]}` answer format, and the events
written as a Python list (`f"{events}"`, i.e. `repr`).

A new wording gets a new version name; a version's text never changes, because the version is recorded with
every result and is part of every cache key (through the prompt text itself).
"""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class PromptSet:
    """The two AutoDQ prompts of one version; `{description}` and `{events}` are the placeholders."""

    version: str
    extraction: str
    entailment: str
    events_format: str = "json"  # how `{events}` is written: "json" (json.dumps) or "python" (repr of the list)

    def extraction_messages(self, description: str) -> list[dict]:
        """Chat messages asking for the events of `description`."""
        return [{"role": "user", "content": self.extraction.replace("{description}", description)}]

    def entailment_messages(self, description: str, events: list[str]) -> list[dict]:
        """Chat messages asking how `description` relates to each of `events` (a JSON list or a Python list repr,
        per `events_format`)."""
        text = self.entailment.replace("{description}", description)
        written = json.dumps(list(events), ensure_ascii=False) if self.events_format == "json" else repr(list(events))
        text = text.replace("{events}", written)
        return [{"role": "user", "content": text}]


_PAPER_EXTRACTION = """Below is a description of a video clip:

{description}

Extract at most 10 key events from the above video description paragraph.

Requirements:

- An event must include an action, motion or movement (NOT STATIC INFORMATION). DON'T repeat same events.
- Every event is represented by a brief sentence with in 10 words, with a subject, a predicate and optionally an object, avoid unnecessary appearance descriptions.
- Every event must be atomic, meaning that it cannot be further split into multiple events.
- Scene cuts and camera motions are NOT events.
- Substitute pronouns by the nouns they refer to.

Please generate the response in the form of a Python dictionary string with keys "events". The value of "events" is a List(str), of which each item is an event. DO NOT PROVIDE ANY OTHER OUTPUT TEXT OR EXPLANATION. Only provide the Python dictionary string. For example, your response should look like this:{"events": [event1, event2, ...]}"""

_PAPER_ENTAILMENT = """Given a video description and a list of events. For each event, classify the relationship between the video description and the event into three classes: entailment, neutral, contradiction.

- "entailment" means that the video description entails the event.
- "contradiction" means that some detail in the video description contradicts with the event.
- "neutral" means that the relationship is neither "entailment" or "contradiction".

Output a list in Json format:

```
[ {"event": "copy an event here", "relationship": "put class name here",  
  "reason": "give a reason"}, ... ]
```

Video description:

{description}

Events:

{events}

DO NOT PROVIDE ANY OTHER OUTPUT TEXT OR EXPLANATION. Only output the JSON.

Output:"""

# The released evaluator's two prompts, character for character (including "Bellow", the newline before the
# colon after "Requirements" and the double space before "reason").
_RELEASE_EXTRACTION = (
    "Bellow is a description of a video clip:\n"
    "Video Description: {description}\n\n"
    "Extract at most 10 key events from the above video description paragraph. Requirements\n:"
    "- An event must include an action, motion or movement (NOT STATIC INFORMATION). DON'T repeat same events.\n"
    "- Every event is represented by a brief sentence within 10 words, with a subject, a predicate and optionally "
    "an object, avoid unnecessary appearance descriptions.\n"
    "- Every event must be atomic, meaning that it cannot be further split into multiple events.\n"
    "- Scene cuts and camera motions are NOT events.\n"
    "- Substitute pronouns by the nouns they refer to.\n\n"
    'Please generate the response in the form of a Python dictionary string with keys "events". The value of '
    '"events" is a List(str), of which each item is an event. '
    "DO NOT PROVIDE ANY OTHER OUTPUT TEXT OR EXPLANATION. Only provide the Python dictionary string. "
    'For example, your response should look like this: {"events": [event1, event2, ...]}'
)
_RELEASE_ENTAILMENT = (
    "Given a video description and a list of events. For each event, classify the relationship between the video "
    "description and the event into three classes: entailment, neutral, contradiction.\n"
    '- "entailment" means that the video description entails the event.\n'
    '- "contradiction" means that some detail in the video description contradicts with the event.\n'
    '- "neutral" means that the relationship is neither "entailment" or "contradiction".\n\n'
    "Video Description:\n{description}\n\n"
    "Events: {events}\n"
    "Output a JSON formed as:\n"
    "{\n"
    '  "events": [\n'
    '    {"event": "copy an event here", "relationship": "put class name here",  "reason": "give your reason here"},\n'
    "    ...\n"
    "  ]\n"
    "}\n\n"
    "DO NOT PROVIDE ANY OTHER OUTPUT TEXT OR EXPLANATION. Only output the JSON. Output:"
)

PROMPTS: dict[str, PromptSet] = {
    "tarsier-paper-v1": PromptSet("tarsier-paper-v1", _PAPER_EXTRACTION, _PAPER_ENTAILMENT),
    "tarsier-release-v1": PromptSet("tarsier-release-v1", _RELEASE_EXTRACTION, _RELEASE_ENTAILMENT, "python"),
}
DEFAULT_PROMPT_VERSION = "tarsier-paper-v1"


def get_prompts(version: str = DEFAULT_PROMPT_VERSION) -> PromptSet:
    """The prompt set named `version`; a clear error lists the known versions."""
    try:
        return PROMPTS[version]
    except KeyError:
        raise ValueError(f"prompt_version={version!r} is unknown; known versions: {sorted(PROMPTS)}") from None
