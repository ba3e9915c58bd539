"""AutoDQ's "official" preset reproduces the released DREAM-1K evaluator on recorded judge answers.

The judge is a real OpenAI-compatible server on 127.0.0.1 that replays recorded answers for exact prompts, and
the metric talks to it through the `openai` client. The prompts, the parsing rules and the arithmetic below are
written out from the release (bytedance/tarsier, `evaluation/metrics/evaluate_dream_gpt.py`, the same file on
the `tarsier` and `tarsier2` branches):

- `call_azure_gpt_api_for_events(caption)`: the extraction prompt, with `caption = prediction.lower()` and
  `"` replaced by `'` (`extract_events`); the answer: a leading ```json/```python fence removed, then
  `ast.literal_eval(answer)["events"]`, all of them (no truncation), retried up to 10 times.
- `call_azure_gpt_api(events, reference, prediction)`: the entailment prompt with `Video Description:\\n
  {prediction}` (lower-cased in `process_one_sample`, quotes kept) and `Events: {events}` (a Python list repr);
  an empty list is replaced by `[reference.replace('\\n', ' ')]`. The answer is cleaned, `json.loads`ed, must
  hold `len(events)` items (1 when none), each `relationship.strip().lower()` in the three labels; otherwise
  retried, and after 10 attempts the sample is dropped (`success: False`).
- `evaluate_one_sample(..., is_recall=True)` for both sides: score = entailment count / len(events), 1.0 for an
  empty list. `_summarize_metric_by_subtask`: per `dataset` mean recall and mean precision (`np.average`),
  `count_f1(r, p) = 2*r*p/(r+p)` (nan for 0/0 on numpy floats), overall = mean over subtasks, then `count_f1`.
"""

from __future__ import annotations

import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from tarsier_hf.eval.autodq.openai_judge import OpenAIChatJudge
from tarsier_hf.eval.autodq.parsing import (
    ParseError,
    parse_entailment,
    parse_entailment_release,
    parse_events,
    parse_events_release,
)
from tarsier_hf.eval.autodq.pipeline import make_samples, run_autodq
from tarsier_hf.eval.autodq.scoring import f1_score, get_config

# ------------------------------------------------------------------------------ the release's prompts, by hand


def release_extraction_prompt(caption: str) -> str:
    return (
        "Bellow is a description of a video clip:\n"
        f"Video Description: {caption}\n\n"
        "Extract at most 10 key events from the above video description paragraph. Requirements\n:"
        "- An event must include an action, motion or movement (NOT STATIC INFORMATION). DON'T repeat same events.\n"
        "- Every event is represented by a brief sentence within 10 words, with a subject, a predicate and "
        "optionally an object, avoid unnecessary appearance descriptions.\n"
        "- Every event must be atomic, meaning that it cannot be further split into multiple events.\n"
        "- Scene cuts and camera motions are NOT events.\n"
        "- Substitute pronouns by the nouns they refer to.\n\n"
        "Please generate the response in the form of a Python dictionary string with keys \"events\". The value "
        "of \"events\" is a List(str), of which each item is an event. DO NOT PROVIDE ANY OTHER OUTPUT TEXT OR "
        "EXPLANATION. Only provide the Python dictionary string. For example, your response should look like "
        "this: {\"events\": [event1, event2, ...]}"
    )


def release_entailment_prompt(description: str, events: list[str]) -> str:
    return (
        "Given a video description and a list of events. For each event, classify the relationship between the "
        "video description and the event into three classes: entailment, neutral, contradiction.\n"
        "- \"entailment\" means that the video description entails the event.\n"
        "- \"contradiction\" means that some detail in the video description contradicts with the event.\n"
        "- \"neutral\" means that the relationship is neither \"entailment\" or \"contradiction\".\n\n"
        f"Video Description:\n{description}\n\n"
        f"Events: {events}\n"
        "Output a JSON formed as:\n{\n  \"events\": [\n    {\"event\": \"copy an event here\", \"relationship\": "
        "\"put class name here\",  \"reason\": \"give your reason here\"},\n    ...\n  ]\n}\n\n"
        "DO NOT PROVIDE ANY OTHER OUTPUT TEXT OR EXPLANATION. Only output the JSON. Output:"
    )


def labels_answer(events: list[str], labels: list[str]) -> str:
    return json.dumps({"events": [{"event": e, "relationship": lab, "reason": "r"} for e, lab in zip(events, labels)]})


# ------------------------------------------------------------------------------ a replaying judge server


class ReplayServer:
    """`/v1/chat/completions` answering each exact prompt with its recorded answers in turn (the last repeats);
    a prompt without a recording gets 404 and is logged in `unknown`."""

    def __init__(self, answers: dict[str, list[str]]):
        self.answers = {k: list(v) for k, v in answers.items()}
        self.asked: dict[str, int] = {}
        self.unknown: list[str] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = request["messages"][-1]["content"]
                with server.lock:
                    recorded = server.answers.get(prompt)
                    if recorded is None:
                        server.unknown.append(prompt)
                    else:
                        n = server.asked[prompt] = server.asked.get(prompt, 0) + 1
                        text = recorded[min(n, len(recorded)) - 1]
                if recorded is None:
                    body, status = b'{"error": {"message": "no recorded answer"}}', 404
                else:
                    status = 200
                    body = json.dumps({
                        "id": "x", "object": "chat.completion", "created": int(time.time()), "model": "gpt-35",
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                     "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


# ------------------------------------------------------------------------------ recorded judge answers

GT1 = ["A man opens the door.", "The man walks outside.", "A dog follows the man."]
PRED1 = 'A man opens the door and says "hello". He walks out, and a cat sleeps.'
PRED1_EVENTS = [f"event number {i}" for i in range(12)]  # more than 10: the release keeps all 12
GT2 = ["A woman sits down.", "The woman drinks tea."]
PRED2 = "A woman sits and drinks tea."
PRED2_EVENTS = ["A woman sits.", "The woman drinks tea."]
GT3 = ["A car drives away."]
PRED3 = "A bird flies over a lake."
PRED3_EVENTS = ["A bird flies over a lake."]
REF4 = "Two kids play\nin the park."
PRED4 = "Two kids run in a park. One kid falls."
PRED4_EVENTS = ["Two kids run in a park.", "One kid falls."]

SAMPLES = [  # (prediction, reference, reference events from the data, category)
    (PRED1, "A man opens the door, walks outside and a dog follows him.", GT1, "DREAM/live_action"),
    (PRED2, "A woman sits down and drinks tea.", GT2, "DREAM/live_action"),
    (PRED3, "A car drives away.", GT3, "DREAM/stock"),
    (PRED4, REF4, [], "DREAM/youtube"),  # DREAM-1K has videos with an empty event list
]


def recorded_answers() -> dict[str, list[str]]:
    # Precision of sample 1 comes fenced, over several lines, with a trailing comma: the release's clean-up reads it.
    precision1 = labels_answer(PRED1_EVENTS, ["entailment"] * 5 + ["neutral"] * 6 + ["contradiction"])
    precision1 = "```json\n" + precision1[:-2].replace("}, {", "},\n  {") + ",\n]}\n```"
    return {
        release_extraction_prompt(PRED1.lower().replace('"', "'")): [f"{{'events': {PRED1_EVENTS!r}}}"],
        release_entailment_prompt(PRED1.lower(), GT1): [labels_answer(GT1, ["entailment", "neutral", "entailment"])],
        release_entailment_prompt(SAMPLES[0][1].lower(), PRED1_EVENTS): [precision1],
        # Sample 2: the judge keeps writing "Entailed": the release retries 10 times, then drops the sample.
        release_extraction_prompt(PRED2.lower()): [str({"events": PRED2_EVENTS})],
        release_entailment_prompt(PRED2.lower(), GT2): [labels_answer(GT2, ["Entailed", "neutral"])],
        release_entailment_prompt(SAMPLES[1][1].lower(), PRED2_EVENTS): [
            labels_answer(PRED2_EVENTS, ["entailment"] * 2)],
        # Sample 3: nothing entailed either way: recall + precision = 0.
        release_extraction_prompt(PRED3.lower()): [str({"events": PRED3_EVENTS})],
        release_entailment_prompt(PRED3.lower(), GT3): [labels_answer(GT3, ["neutral"])],
        release_entailment_prompt(SAMPLES[2][1].lower(), PRED3_EVENTS): [
            labels_answer(PRED3_EVENTS, ["contradiction"])],
        # Sample 4: no reference events: asked about the whole reference (newlines -> spaces), scores 1.0; the
        # first answer is unreadable (retried), the second judges one item.
        release_extraction_prompt(PRED4.lower()): [str({"events": PRED4_EVENTS})],
        release_entailment_prompt(PRED4.lower(), [REF4.lower().replace("\n", " ")]): [
            "I think it is entailed.", labels_answer(["x"], ["neutral"])],
        release_entailment_prompt(REF4.lower(), PRED4_EVENTS): [labels_answer(PRED4_EVENTS, ["entailment", "neutral"])],
    }


@pytest.fixture()
def server():
    replay = ReplayServer(recorded_answers())
    yield replay
    replay.close()


def run(server, preset: str) -> dict:
    config = get_config(preset)
    judge = OpenAIChatJudge("gpt-35-turbo-0125", base_url=server.base_url, endpoint_kind="replay",
                            temperature=config.temperature, seed=config.seed, max_tokens=config.max_tokens,
                            timeout=10, max_attempts=1)
    predictions, references, events, categories = (list(c) for c in zip(*SAMPLES))
    samples = make_samples(predictions, references, events, categories)
    return run_autodq(samples, judge, config, concurrency=1, bootstrap=0)


def test_official_preset_equals_the_released_arithmetic(server):
    result = run(server, "official")
    assert server.unknown == []  # every prompt was exactly the release's
    # Sample 2 was asked 10 times for its recall, then dropped from every average.
    assert server.asked[release_entailment_prompt(PRED2.lower(), GT2)] == 10
    assert result["n_failed"] == 1 and result["n_scored"] == 3
    scores = {s["index"]: s for s in result["samples"]}
    assert scores[1]["recall"] is None and scores[1]["failed"]
    assert len(scores[0]["prediction_events"]) == 12  # not truncated to 10

    # The release's numbers, by hand: per-subtask means, then the mean over subtasks, then count_f1.
    r1, p1 = 2 / 3, 5 / 12  # live_action (sample 2 dropped)
    r3, p3 = 0.0, 0.0  # stock
    r4, p4 = 1.0, 1 / 2  # youtube: empty reference events -> 1.0
    recall, precision = np.average([r1, r3, r4]), np.average([p1, p3, p4])
    f1 = 2 * recall * precision / (recall + precision)
    assert (result["recall"], result["precision"], result["f1"]) == (recall, precision, f1)
    per_category = result["macro"]["per_category"]
    assert math.isnan(per_category["DREAM/stock"]["f1"])  # 0/0 on numpy floats: nan, not 0
    assert per_category["DREAM/live_action"]["n"] == 1 and per_category["DREAM/live_action"]["n_failed"] == 1


def test_robust_choices_differ_where_the_metric_card_says():
    """On the same recorded answers the robust parsing keeps 10 events, reads "Entailed" as entailment and gives
    F1 0 for 0/0; the release (official) keeps all events, refuses the label and gives nan."""
    answers = recorded_answers()
    extraction = answers[release_extraction_prompt(PRED1.lower().replace('"', "'"))][0]
    events, info = parse_events(extraction, get_config("robust").max_events)
    assert len(events) == 10 and info["truncated"] and len(parse_events_release(extraction)) == 12
    entailed = answers[release_entailment_prompt(PRED2.lower(), GT2)][0]
    assert parse_entailment(entailed, GT2) == ["entailment", "neutral"]
    with pytest.raises(ParseError, match="entailed"):
        parse_entailment_release(entailed, len(GT2))
    assert f1_score(0.0, 0.0, get_config("robust").f1_when_zero) == 0.0
    assert math.isnan(f1_score(0.0, 0.0, get_config("official").f1_when_zero))
