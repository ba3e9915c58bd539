"""Training and test rows: stage-1 multi-task data, stage-2 multi-grained descriptions, test references.

Every task draws its prompt at random from a small pool (paper §3.2.1: prompts define the output format);
stage-2 prompts are distinct per granularity so the prompt alone selects the level of detail.
"""

from __future__ import annotations

import numpy as np

from .grammar import CAMERA_SENTENCES, camera_description, detailed_description, event_clause, short_description
from .scene import ClipSpec
from .vocab import ACTIONS, COLOURS, NUMBER_WORDS, action_supported

CAPTION_PROMPTS = (
    "Write a short caption for the video.",
    "Caption this video.",
    "Give the video a brief caption.",
    "What is a good caption for this clip?",
)
ACTION_PROMPTS = (
    "Which actions does the {subject} perform? Answer with action labels in order.",
    "List the actions of the {subject}, in order, as action labels.",
    "Recognise the actions of the {subject}. Reply with labels only.",
)
MCQA_PROMPTS = (
    "{question}\n{options}\nAnswer with the option's letter and text.",
    "Choose the correct option.\n{question}\n{options}",
    "{question} Pick one option.\n{options}",
)
QA_PROMPTS = (
    "Give a short answer to the following question: {question}",
    "Answer briefly. {question}",
    "{question} Answer in a few words.",
)
BOXES_PROMPTS = (
    "Track the {subject}. Give its bounding box [x1, y1, x2, y2] (0-1 image coordinates) at {times}.",
    "Where is the {subject} at {times}? Answer with one box [x1, y1, x2, y2] per time, normalised to 0-1.",
    "Output the box of the {subject} at {times} as [x1, y1, x2, y2] in normalised coordinates.",
)
DETAILED_PROMPTS = (
    "Describe the video in detail.",
    "Give a detailed description of everything that happens in the video, in order.",
    "Narrate the video in detail: the shapes, every event in order, any cut and the camera motion.",
)
SHORT_PROMPTS = (
    "Describe the video in one sentence.",
    "Summarise what happens in the video in a single sentence.",
    "In one sentence, what happens in this video?",
)
CAMERA_PROMPTS = (
    "Describe only the camera motion in the video, and say whether there is a cut.",
    "How does the camera move? Mention any shot cuts.",
    "Describe the camera work of this clip.",
)
TEST_PROMPT = DETAILED_PROMPTS[0]
NUM_BOX_TIMES = 4


def _pick(rng: np.random.Generator, items):
    return items[int(rng.integers(len(items)))]


def conversation(video: str, prompt: str, answer: str) -> list[dict]:
    return [
        {"role": "user", "content": [{"type": "video", "path": video}, {"type": "text", "text": prompt}]},
        {"role": "assistant", "content": [{"type": "text", "text": answer}]},
    ]


def _row(video: str, prompt: str, answer: str, task: str, idx: str) -> dict:
    # one source per task, so a recipe sets the task mix with train_sft.py's --source_weights
    return {"messages": conversation(video, prompt, answer), "task": task, "source": f"dream_s/{task}", "idx": idx}


def _subject_actions(clip: ClipSpec, name: str) -> list[str]:
    return [e["action"] for e in clip.gt_events() if e["subject"] == name or (e["action"] == "collide" and e["object"] == name)]


def caption_row(clip: ClipSpec, rng: np.random.Generator, video: str, idx: str) -> dict:
    return _row(video, _pick(rng, CAPTION_PROMPTS), short_description(clip), "caption", idx)


def action_row(clip: ClipSpec, rng: np.random.Generator, video: str, idx: str) -> dict:
    shape = _pick(rng, clip.shapes)
    actions = _subject_actions(clip, shape.name)
    answer = ", ".join(actions) if actions else "no action"
    return _row(video, _pick(rng, ACTION_PROMPTS).format(subject=shape.name), answer, "action", idx)


def _distractor_clauses(clip: ClipSpec, rng: np.random.Generator, count: int) -> list[str]:
    """Plausible events of this clip's shapes that did not happen."""
    truth = {event_clause(e) for e in clip.gt_events()}
    pool = []
    for shape in clip.shapes:
        for action in ACTIONS:
            if not action_supported(shape.shape, action):
                continue
            obj = None
            if action == "collide":
                others = [s.name for s in clip.shapes if s is not shape]
                if not others:
                    continue
                obj = _pick(rng, others)
            elif action == "change colour":
                obj = _pick(rng, [c for c in COLOURS if c != shape.colour])
            clause = event_clause({"subject": shape.name, "action": action, "object": obj})
            if clause not in truth and clause not in pool:
                pool.append(clause)
    order = rng.permutation(len(pool))
    return [pool[i] for i in order[:count]]


def mcqa_row(clip: ClipSpec, rng: np.random.Generator, video: str, idx: str) -> dict:
    events = clip.gt_events()
    kinds = ["happens", "camera"] + (["first", "last"] if len(events) >= 2 else [])
    kind = _pick(rng, kinds)
    if kind == "camera":
        question = "How does the camera move?"
        correct = CAMERA_SENTENCES[clip.camera][:-1]
        options = [correct] + [s[:-1] for m, s in CAMERA_SENTENCES.items() if m != clip.camera]
        options = [options[0]] + [options[1 + i] for i in rng.permutation(len(options) - 1)[:3]]
    else:
        if kind == "happens":
            question = "Which of these events happens in the video?"
            correct = event_clause(_pick(rng, events))
            others = _distractor_clauses(clip, rng, 3)
        else:
            question = f"Which event happens {kind}?"
            correct = event_clause(events[0] if kind == "first" else events[-1])
            # the other real events are the hardest distractors: only the order tells them apart
            others = [event_clause(e) for e in events if event_clause(e) != correct][:3]
            others += _distractor_clauses(clip, rng, 3 - len(others))
        options = [correct] + others
    letters = "ABCD"[: len(options)]
    shuffled = [options[i] for i in rng.permutation(len(options))]
    answer_letter = letters[shuffled.index(correct)]
    text = "\n".join(f"({letter}) {option[:1].upper() + option[1:]}." for letter, option in zip(letters, shuffled))
    prompt = _pick(rng, MCQA_PROMPTS).format(question=question, options=text)
    answer = f"({answer_letter}) {correct[:1].upper() + correct[1:]}."
    return _row(video, prompt, answer, "mcqa", idx)


def qa_row(clip: ClipSpec, rng: np.random.Generator, video: str, idx: str) -> dict:
    events = clip.gt_events()
    candidates = [
        ("How many shapes appear in the video?", NUMBER_WORDS[len(clip.shapes)]),
        ("How many events happen in the video?", NUMBER_WORDS[len(events)]),
        ("What does the camera do?", CAMERA_SENTENCES[clip.camera].replace("The camera", "It")),
        ("How many shots does the video have?", NUMBER_WORDS[clip.n_shots]),
    ]
    for e in events:
        if e["action"] == "change colour":
            candidates.append((f"What colour does the {e['subject']} turn?", e["object"]))
        if e["action"].startswith("move "):
            candidates.append((f"Which shape moves {e['action'][5:]}?", f"the {e['subject']}"))
        if e["action"] == "collide":
            candidates.append((f"What does the {e['subject']} collide with?", f"the {e['object']}"))
    for before, after in zip(events, events[1:]):
        candidates.append((f"What happens right after {event_clause(before)}?", event_clause(after)))
        candidates.append((f"What happens right before {event_clause(after)}?", event_clause(before)))
    question, answer = _pick(rng, candidates)
    prompt = _pick(rng, QA_PROMPTS).format(question=question)
    return _row(video, prompt, answer[:1].upper() + answer[1:] + ("" if answer.endswith(".") else "."), "qa", idx)


def boxes_row(clip: ClipSpec, rng: np.random.Generator, video: str, idx: str, boxes: np.ndarray) -> dict:
    """Boxes at `NUM_BOX_TIMES` evenly spaced timestamps (seconds), so the answer is defined whatever frames a
    model samples; `absent` where the shape is invisible."""
    i = int(rng.integers(len(clip.shapes)))
    frames = np.unique(np.round(np.linspace(0, clip.num_frames - 1, NUM_BOX_TIMES)).astype(int))
    times = [f"{f / clip.fps:.2f}s" for f in frames]
    parts = []
    for f, stamp in zip(frames, times):
        box = boxes[f, i]
        parts.append(f"{stamp}: absent" if np.isnan(box).any() else f"{stamp}: [{', '.join(f'{v:.2f}' for v in box)}]")
    time_list = ", ".join(times[:-1]) + " and " + times[-1] if len(times) > 1 else times[0]
    prompt = _pick(rng, BOXES_PROMPTS).format(subject=clip.shapes[i].name, times=time_list)
    return _row(video, prompt, "; ".join(parts), "boxes", idx)


def stage1_rows(clip: ClipSpec, rng: np.random.Generator, video: str, idx: str, boxes: np.ndarray) -> list[dict]:
    """One row per stage-1 task (caption, action, mcqa, qa, boxes)."""
    return [
        caption_row(clip, rng, video, f"{idx}/caption"),
        action_row(clip, rng, video, f"{idx}/action"),
        mcqa_row(clip, rng, video, f"{idx}/mcqa"),
        qa_row(clip, rng, video, f"{idx}/qa"),
        boxes_row(clip, rng, video, f"{idx}/boxes", boxes),
    ]


def stage2_rows(clip: ClipSpec, rng: np.random.Generator, video: str, idx: str) -> list[dict]:
    """One row per granularity: detailed, one sentence, camera motion."""
    return [
        _row(video, _pick(rng, DETAILED_PROMPTS), detailed_description(clip), "describe_detailed", f"{idx}/detailed"),
        _row(video, _pick(rng, SHORT_PROMPTS), short_description(clip), "describe_short", f"{idx}/short"),
        _row(video, _pick(rng, CAMERA_PROMPTS), camera_description(clip), "describe_camera", f"{idx}/camera"),
    ]


def test_row(clip: ClipSpec, video: str, idx: str) -> dict:
    """A held-out evaluation row: the fixed detailed prompt, the reference and the ground-truth events."""
    reference = detailed_description(clip)
    row = _row(video, TEST_PROMPT, reference, "describe_detailed", idx)
    row.update(
        events=clip.gt_events(),
        n_events=len(clip.events),
        n_subjects=len(clip.shapes),
        n_shots=clip.n_shots,
        camera=clip.camera,
        reference=reference,
    )
    return row
