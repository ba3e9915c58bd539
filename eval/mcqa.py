"""Multiple-choice video QA (MVBench, NExT-QA, EgoSchema): data readers, the answer parser and accuracy.

    python -m tarsier_hf.eval.mcqa --model_name_or_path path/to/tarsier --format mvbench --annotations mvbench/json \
        --videos mvbench/video --output_dir runs/mvbench

The model sees the question and lettered options (`tarsier_hf.eval.prompts.mcqa_prompt`) and answers freely. `parse_choice`
maps the answer to an option: a letter (`B`, `(B)`, `Answer: B.`), an option's text, or a number. An answer that
maps to no option, or to several, is **unparsable and counted wrong**: the released evaluation code drops such
samples from the denominator, which inflates accuracy; the count of unparsable answers is reported beside it.

Before the model loads, the output folder and every video are checked (tarsier_hf.eval.common.preflight): missing
videos are listed in one report (and counted wrong), and a run none of whose videos exist stops. `--videos` may
be left out when the annotations' video paths resolve as they are.
"""

from __future__ import annotations

import csv
import json
import logging
import re
import string
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from transformers import HfArgumentParser

from tarsier_hf.cli import consent_boundary, help_text
from tarsier_hf.eval.common import (LoggingArguments, ModelArguments, configure_logging, find_video_file,
                                    generate_predictions, missing_videos, predictions_of, preflight, result_header,
                                    unreadable_videos)
from tarsier_hf.inference.batch import get_state
from tarsier_hf.eval.prompts import frames_for, mcqa_prompt, option_letters
from tarsier_hf.jsonl import write_json
from tarsier_hf.inference.engine import VideoRequest

logger = logging.getLogger(__name__)

FORMATS = ("mvbench", "nextqa", "egoschema")


@dataclass
class MCQuestion:
    """One multiple-choice question about a video.

    Attributes:
        id: unique id within the benchmark.
        video: path of the video file.
        question: the question text.
        options: the candidate answers, in the order shown to the model.
        answer: index of the correct option, or None when the answers are hidden (EgoSchema full set).
        task: sub-task / question type used for per-task accuracy (MVBench task, NExT-QA type).
        start, end: optional clip bounds in seconds (MVBench); recorded, not applied by the reader.
    """

    id: str
    video: str
    question: str
    options: list[str]
    answer: int | None
    task: str = ""
    start: float | None = None
    end: float | None = None
    meta: dict = field(default_factory=dict)

    def prompt(self, template: str = "mcqa-v1") -> str:
        return mcqa_prompt(self.question, self.options, template)


# ---------------------------------------------------------------------------------------------------------------
# Answer parsing
# ---------------------------------------------------------------------------------------------------------------

_LEAD_INS = re.compile(
    r"^\s*(?:(?:the\s+)?(?:correct\s+|best\s+|final\s+)?(?:answer|option|choice)(?:\s+is)?\s*[:\-]?\s*|"
    r"(?:i\s+think|i\s+believe)\s+(?:the\s+answer\s+is\s+)?)",
    re.IGNORECASE,
)
_WORD = re.compile(r"[a-z0-9]+")


def _normalize(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def _letter_mentions(text: str, letters: list[str]) -> set[str]:
    """Letters the answer names explicitly: `(B)`, `B)`, `B.`, `option B`, `answer is B`, or a lone `B`."""
    valid = "".join(letters)
    found = set()
    for match in re.finditer(rf"\(([{valid}])\)", text):
        found.add(match.group(1))
    for match in re.finditer(rf"(?:option|answer|choice)\s*(?:is\s*)?[:\-]?\s*\(?([{valid}])\b", text, re.IGNORECASE):
        found.add(match.group(1).upper())
    for match in re.finditer(rf"(?:^|\s)([{valid}])(?:[.):,]|\s*$)", text):
        found.add(match.group(1))
    # A standalone capital ("B because ...", "A or B"); "A" followed by a lower-case word is the article.
    for match in re.finditer(rf"(?:^|\s)([{valid}])(?=\s+(\S+)|$)", text):
        letter, following = match.group(1), match.group(2) or ""
        if letter != "A" or following in ("or", "and") or not following[:1].islower():
            found.add(letter)
    return found


def parse_choice(answer: str, options: Sequence[str], number_base: int = 1) -> int | None:
    """Index of the option an answer picks, or None when it picks none or several.

    Accepted, in this order:
    1. the whole answer is one option's text (case, punctuation and a leading letter label ignored);
    2. a letter label: `B`, `b`, `(B)`, `B.`, `B) text`, `Answer: B`, `The answer is (B).`, `Option B`;
    3. exactly one option's text appears in the answer (the longest match wins when one option contains another;
       an option of one or two words must make up at least half of the answer's words);
    4. a number: `2`, `Option 2`, `(2)` read with `number_base` (1: "1" is the first option; 0 for 0-based labels).

    Args:
        answer: the model's raw output.
        options: the option texts in display order (labelled A, B, C, ...).
        number_base: how a bare number maps to an option.

    Returns:
        The 0-based option index, or None (unparsable: counted wrong by `score_choices`).
    """
    if not isinstance(answer, str) or not options:
        return None
    letters = option_letters(len(options))
    text = answer.strip().strip("`*\"' ")
    if not text:
        return None
    normalized_options = [_normalize(o) for o in options]

    # 1. the answer is exactly an option's text (maybe after its label, e.g. "(C) the man runs")
    body = re.sub(rf"^\(?[{''.join(letters)}]\)?[.):]?\s+", "", text) if re.match(r"^\(?[A-Z]\)?[.):]?\s+\S", text) else text
    for candidate in (text, body):
        norm = _normalize(candidate)
        matches = [i for i, o in enumerate(normalized_options) if o and o == norm]
        if len(matches) == 1:
            return matches[0]

    # 2. explicit letters
    stripped = _LEAD_INS.sub("", text)
    head = stripped.strip().strip(string.punctuation + " ")
    if len(head) == 1 and head.upper() in letters:
        return letters.index(head.upper())
    mentions = _letter_mentions(stripped, letters) | _letter_mentions(text, letters)
    if len(mentions) == 1:
        # A sentence starting with the article "A" ("A man runs.") is not the letter A.
        return letters.index(next(iter(mentions)))
    elif len(mentions) > 1:
        return None

    # 3. an option's text inside a longer answer
    norm_answer = f" {_normalize(text)} "
    answer_words = len(norm_answer.split())
    # A short option ("man", "left") must make up much of the answer to count: inside a sentence it is a word.
    contained = [
        i for i, o in enumerate(normalized_options)
        if o and f" {o} " in norm_answer and (len(o.split()) >= 3 or 2 * len(o.split()) >= answer_words)
    ]
    if contained:
        longest = max(len(normalized_options[i]) for i in contained)
        best = [i for i in contained if len(normalized_options[i]) == longest]
        # Drop options that are only inside the longest one ("man" inside "the man runs").
        others = [i for i in contained if normalized_options[i] not in normalized_options[best[0]]]
        if len(best) == 1 and not others:
            return best[0]
        return None

    # 4. a number
    match = re.fullmatch(r"(?:option|answer|choice)?\s*(?:is\s*)?[:\-]?\s*\(?(\d+)\)?\s*[.]?", stripped.strip(), re.IGNORECASE)
    if match:
        index = int(match.group(1)) - number_base
        if 0 <= index < len(options):
            return index
    return None


def score_choices(questions: Sequence[MCQuestion], predictions: dict[str, str], number_base: int = 1) -> dict:
    """Accuracy over every question with a known answer; missing or unparsable answers count as wrong.

    Returns:
        `{"accuracy", "correct", "total", "unparsable", "missing", "per_task": {task: {...}}, "samples": [...]}`
        where `samples` holds one `{"id", "task", "parsed", "answer", "correct"}` per question.
    """
    per_task = defaultdict(lambda: {"correct": 0, "total": 0, "unparsable": 0})
    samples, missing = [], 0
    for question in questions:
        if question.answer is None:
            continue
        raw = predictions.get(question.id)
        parsed = parse_choice(raw, question.options, number_base) if raw is not None else None
        missing += raw is None
        correct = parsed is not None and parsed == question.answer
        bucket = per_task[question.task or "all"]
        bucket["total"] += 1
        bucket["correct"] += int(correct)
        bucket["unparsable"] += int(raw is not None and parsed is None)
        samples.append({"id": question.id, "task": question.task, "parsed": parsed, "answer": question.answer,
                        "correct": correct, "missing": raw is None})
    for bucket in per_task.values():
        bucket["accuracy"] = bucket["correct"] / bucket["total"] if bucket["total"] else 0.0
    total = sum(b["total"] for b in per_task.values())
    correct = sum(b["correct"] for b in per_task.values())
    return {
        "accuracy": correct / total if total else 0.0,
        "correct": correct,
        "total": total,
        "unparsable": sum(b["unparsable"] for b in per_task.values()),
        "missing": missing,
        "per_task": dict(sorted(per_task.items())),
        "samples": samples,
    }


# ---------------------------------------------------------------------------------------------------------------
# Dataset readers
# ---------------------------------------------------------------------------------------------------------------


def _video_path(videos: Path, name: str) -> str:
    """The video file of `name` under `videos` (`find_video_file`); `videos/name[.mp4]` when none exists (the
    runner then reports it missing)."""
    found = find_video_file(videos, name)
    return str(found or (videos / name if Path(name).suffix else videos / f"{name}.mp4"))


def _require(record: dict, keys: Sequence[str], where: str) -> None:
    missing = [k for k in keys if k not in record]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}")


def load_mvbench(annotations: str | Path, videos: str | Path | None) -> list[MCQuestion]:
    """MVBench: one JSON list per task (`{"video", "question", "candidates", "answer"[, "start", "end"]}`, the
    answer being the correct candidate's text). `annotations` is one such file or a folder of them (task = file
    stem); videos are looked up under `videos/<task>/` first, then `videos/` (None: paths as given)."""
    annotations, videos = Path(annotations), Path(videos or "")
    files = sorted(annotations.glob("*.json")) if annotations.is_dir() else [annotations]
    if not files:
        raise FileNotFoundError(f"{annotations}: no MVBench *.json annotation files")
    questions = []
    for file in files:
        task = file.stem
        items = json.loads(file.read_text(encoding="utf-8"))
        if not isinstance(items, list):
            raise ValueError(f"{file}: expected a JSON list of questions")
        for number, item in enumerate(items):
            where = f"{file}[{number}]"
            _require(item, ("video", "question", "candidates", "answer"), where)
            options = [str(c) for c in item["candidates"]]
            if item["answer"] not in options:
                raise ValueError(f"{where}: answer {item['answer']!r} is not one of the candidates {options}")
            task_dir = videos / task
            video = _video_path(task_dir if task_dir.is_dir() else videos, item["video"])
            questions.append(MCQuestion(
                f"{task}/{number}", video, item["question"], options, options.index(item["answer"]), task,
                item.get("start"), item.get("end"),
            ))
    return questions


def load_nextqa(annotations: str | Path, videos: str | Path | None, video_map: str | Path | None = None) -> list[MCQuestion]:
    """NExT-QA multiple choice: a CSV with `video, question, answer, qid, type, a0..a4` (answer = option index).

    `video_map` is the optional `map_vid_vidorID.json` (`{video_id: "folder/video_id"}`) of the release."""
    annotations, videos = Path(annotations), Path(videos or "")
    mapping = json.loads(Path(video_map).read_text()) if video_map else {}
    questions = []
    with annotations.open(newline="", encoding="utf-8") as handle:
        for number, row in enumerate(csv.DictReader(handle), start=2):
            where = f"{annotations}:{number}"
            _require(row, ("video", "question", "answer", "a0", "a1", "a2", "a3", "a4"), where)
            options = [row[f"a{i}"] for i in range(5)]
            try:
                answer = int(row["answer"])
            except ValueError:
                raise ValueError(f"{where}: answer {row['answer']!r} is not an option index") from None
            vid = str(row["video"])
            qid = row.get("qid", str(number))
            questions.append(MCQuestion(
                f"{vid}_{qid}", _video_path(videos, mapping.get(vid, vid)), row["question"], options, answer,
                row.get("type", ""),
            ))
    return questions


def load_egoschema(
    annotations: str | Path, videos: str | Path | None, answers: str | Path | None = None, subset_only: bool = False
) -> list[MCQuestion]:
    """EgoSchema: `questions.json` (`{"q_uid", "question", "option 0".."option 4"}`) and optionally
    `subset_answers.json` (`{q_uid: index}`). Questions without a public answer get `answer=None` (write a
    submission file for them); `subset_only` keeps the 500 answered ones."""
    annotations, videos = Path(annotations), Path(videos or "")
    items = json.loads(annotations.read_text(encoding="utf-8"))
    known = {k: int(v) for k, v in json.loads(Path(answers).read_text()).items()} if answers else {}
    questions = []
    for number, item in enumerate(items):
        where = f"{annotations}[{number}]"
        _require(item, ("q_uid", "question") + tuple(f"option {i}" for i in range(5)), where)
        uid = item["q_uid"]
        if subset_only and uid not in known:
            continue
        options = [item[f"option {i}"] for i in range(5)]
        questions.append(MCQuestion(uid, _video_path(videos, uid), item["question"], options, known.get(uid), "egoschema"))
    return questions


def load_questions(fmt: str, annotations: str, videos: str | None, **kwargs) -> list[MCQuestion]:
    fmt = fmt.lower().replace("-", "")
    if fmt == "mvbench":
        return load_mvbench(annotations, videos)
    if fmt == "nextqa":
        return load_nextqa(annotations, videos, kwargs.get("video_map"))
    if fmt == "egoschema":
        return load_egoschema(annotations, videos, kwargs.get("answers"), kwargs.get("subset_only", False))
    raise ValueError(f"unknown multiple-choice format {fmt!r}; expected one of {FORMATS}")


def egoschema_submission(questions: Sequence[MCQuestion], predictions: dict[str, str], path: str | Path) -> int:
    """Write EgoSchema's `q_uid,answer` CSV (unparsable answers get -1, which the grader counts wrong).
    Returns the number of unparsable answers."""
    unparsable = 0
    with Path(path).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["q_uid", "answer"])
        for question in questions:
            parsed = parse_choice(predictions.get(question.id, ""), question.options)
            unparsable += parsed is None
            writer.writerow([question.id, -1 if parsed is None else parsed])
    return unparsable


# ---------------------------------------------------------------------------------------------------------------
# Runner
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class MCQAArguments:
    format: str = field(metadata={"help": f"One of {FORMATS}."})
    annotations: str = field(metadata={"help": "MVBench json file/folder, NExT-QA csv, or EgoSchema questions.json."})
    output_dir: str = field(metadata={"help": "Folder for predictions.jsonl and results.json."})
    videos: str | None = field(default=None, metadata={
        "help": "Video folder (not needed when the annotations' video paths resolve)."})
    answers: str | None = field(default=None, metadata={"help": "EgoSchema subset_answers.json."})
    subset_only: bool = field(default=False, metadata={"help": "EgoSchema: only the questions with public answers."})
    video_map: str | None = field(default=None, metadata={"help": "NExT-QA map_vid_vidorID.json."})
    prompt_template: str = field(default="mcqa-v1", metadata={"help": "tarsier_hf.eval.prompts template name or text."})
    model_name: str | None = field(default=None, metadata={"help": "Row name in Table 5 (default: checkpoint)."})


def evaluate_mcqa(data: MCQAArguments, model_args, model=None, processor=None, progress: bool = True) -> dict | None:
    state = get_state()
    questions = load_questions(data.format, data.annotations, data.videos, answers=data.answers,
                               subset_only=data.subset_only, video_map=data.video_map)
    if model_args.limit is not None:
        questions = questions[: model_args.limit]
    frames = model_args.num_frames or frames_for(model_args.model_preset, data.format)
    settings = model_args.inference_settings(frames)
    requests = [VideoRequest(q.id, q.video, q.prompt(data.prompt_template), {"task": q.task}) for q in questions]
    missing = missing_videos(requests)
    preflight(data.format, data.output_dir, len(requests), missing, data.videos, report=state.is_main_process)
    output_dir = Path(data.output_dir)
    outputs = generate_predictions(requests, output_dir, model_args, settings, model, processor, progress, state)
    if outputs is None:
        return None
    predictions = predictions_of(outputs)
    scores = score_choices(questions, predictions)
    results = {
        **result_header(data.format, "mcqa", data.model_name, model_args, settings),
        "prompt": {"template": data.prompt_template, "example": requests[0].prompt if requests else None},
        "judge": None, "unparsable_policy": "counted wrong",
        **scores,
        "missing_videos": missing,
        "unreadable_videos": unreadable_videos(outputs),
    }
    hidden = [q for q in questions if q.answer is None]
    if hidden:  # EgoSchema full set: answers are graded by the benchmark's server
        results["submission"] = str(output_dir / "egoschema_submission.csv")
        egoschema_submission(hidden, predictions, results["submission"])
    write_json(output_dir / "results.json", results)
    return results


@consent_boundary
def main(argv: list[str] | None = None) -> None:
    parser = HfArgumentParser((MCQAArguments, ModelArguments, LoggingArguments), **help_text(
        "Answer a multiple-choice video QA benchmark (MVBench, NExT-QA, EgoSchema) with a checkpoint and "
        "write predictions and accuracy into --output_dir.",
        "tarsier-mcqa --model_name_or_path tarsier-7b --format mvbench "
        "--annotations mvbench/json --videos mvbench/video "
        "--output_dir runs/mvbench",
        usage="%(prog)s --model_name_or_path MODEL --format FORMAT --annotations PATH --output_dir DIR [options]"))
    data, model_args, log_args = parser.parse_args_into_dataclasses(args=argv)
    configure_logging(log_args)
    results = evaluate_mcqa(data, model_args)
    if results is not None:
        print(f"{data.format}: accuracy {100 * results['accuracy']:.1f} ({results['correct']}/{results['total']}, "
              f"{results['unparsable']} unparsable counted wrong, {results['missing']} without prediction)")


if __name__ == "__main__":
    main()
