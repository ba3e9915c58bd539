"""Open-ended video QA (MSVD-QA, MSR-VTT-QA, ActivityNet-QA, TGIF-QA) with the Video-ChatGPT judge protocol.

    python -m tarsier_hf.eval.openqa --model_name_or_path path/to/tarsier --format msvd_qa --annotations MSVD-QA/test_qa.json \
        --video_map MSVD-QA/youtube_mapping.txt --videos MSVD/videos --output_dir runs/msvd_qa \
        --judge openai --judge_model gpt-3.5-turbo-0125

The model answers each question freely; an LLM judge then compares the answer with the ground truth and returns
`{'pred': 'yes'|'no', 'score': 0-5}` (Video-ChatGPT's prompt, the one the paper's Table 5c uses). Reported:
accuracy = share of "yes", score = mean score. Judge calls go through `tarsier_hf.eval.autodq.judge` (persistent cache,
bounded retries with backoff). A judge answer that stays unreadable counts as "no" with score 0 and is listed.

Before the model loads, the output folder, every video (missing ones listed in one report, counted "no"; none
found stops the run) and the judge (key, endpoint reachable, model listed) are checked
(tarsier_hf.eval.common.preflight). `--videos` may be left out when the annotations' video paths resolve.
`--skip_scoring` only generates (no judge is checked or asked); the same command without it then scores the
predictions already written.
"""

from __future__ import annotations

import csv
import json
import logging
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from tarsier_hf.eval.autodq.parsing import ParseError, load_structure
from tarsier_hf.eval.autodq.pipeline import JudgeProgress, judge_defaults
from tarsier_hf.cli import consent_boundary, help_text
from tarsier_hf.eval.common import (JudgeArguments, LoggingArguments, ModelArguments, configure_logging,
                                    find_video_file, generate_predictions, missing_videos, predictions_of, preflight,
                                    result_header, unreadable_videos)
from tarsier_hf.inference.batch import get_state
from tarsier_hf.eval.prompts import frames_for, openqa_prompt
from tarsier_hf.jsonl import read_jsonl_objects, write_json
from tarsier_hf.inference.engine import VideoRequest

logger = logging.getLogger(__name__)

FORMATS = ("msvd_qa", "msrvtt_qa", "activitynet_qa", "tgif_qa", "generic")

JUDGE_PROMPT_VERSION = "video-chatgpt-qa-v1"
# Video-ChatGPT's QA evaluation prompt, kept word for word so that scores stay comparable with published ones.
JUDGE_SYSTEM = (
    "You are an intelligent chatbot designed for evaluating the correctness of generative outputs for question-answer "
    "pairs. Your task is to compare the predicted answer with the correct answer and determine if they match "
    "meaningfully. Here's how you can accomplish the task:------##INSTRUCTIONS: - Focus on the meaningful match between "
    "the predicted answer and the correct answer.\n- Consider synonyms or paraphrases as valid matches.\n- Evaluate the "
    "correctness of the prediction compared to the answer."
)
JUDGE_USER = (
    "Please evaluate the following video-based question-answer pair:\n\nQuestion: {question}\nCorrect Answer: {answer}\n"
    "Predicted Answer: {prediction}\n\nProvide your evaluation only as a yes/no and score where the score is an integer "
    "value between 0 and 5, with 5 indicating the highest meaningful match. Please generate the response in the form of "
    "a Python dictionary string with keys 'pred' and 'score', where value of 'pred' is  a string of 'yes' or 'no' and "
    "value of 'score' is in INTEGER, not STRING.DO NOT PROVIDE ANY OTHER OUTPUT TEXT OR EXPLANATION. Only provide the "
    "Python dictionary string. For example, your response should look like this: {{'pred': 'yes', 'score': 4.8}}."
)


@dataclass
class OpenQuestion:
    id: str
    video: str
    question: str
    answer: str
    meta: dict = field(default_factory=dict)


def judge_messages(question: str, answer: str, prediction: str) -> list[dict]:
    """The Video-ChatGPT judge chat for one question."""
    return [
        {"role": "system", "content": JUDGE_SYSTEM},
        {"role": "user", "content": JUDGE_USER.format(question=question, answer=answer, prediction=prediction)},
    ]


def parse_verdict(text: str) -> tuple[bool, float]:
    """`(yes, score)` from a judge answer such as `{'pred': 'yes', 'score': 4}`; raises ValueError if unreadable.

    Accepts code fences, prose around the dict, `"score": "4"`; the score is clipped to [0, 5].
    """
    pred = score = None
    try:
        value = load_structure(text)
        if isinstance(value, list) and value and isinstance(value[0], dict):
            value = value[0]
        if isinstance(value, dict):
            lowered = {str(k).strip().lower(): v for k, v in value.items()}
            pred, score = lowered.get("pred"), lowered.get("score")
    except ParseError:
        pass
    if pred is None:
        match = re.search(r"['\"]?pred['\"]?\s*[:=]\s*['\"]?(yes|no)\b", text or "", re.IGNORECASE)
        pred = match.group(1) if match else None
    if score is None:
        match = re.search(r"['\"]?score['\"]?\s*[:=]\s*['\"]?(\d+(?:\.\d+)?)", text or "", re.IGNORECASE)
        score = match.group(1) if match else None
    word = str(pred).strip().lower().strip(".'\" ") if pred is not None else ""
    if word not in ("yes", "no"):
        raise ValueError(f"judge answer has no yes/no 'pred': {str(text)[:200]!r}")
    try:
        number = float(score)
    except (TypeError, ValueError):
        raise ValueError(f"judge answer has no numeric 'score': {str(text)[:200]!r}") from None
    return word == "yes", min(5.0, max(0.0, number))


def judge_answers(questions: list[OpenQuestion], predictions: dict[str, str], judge, max_attempts: int = 3,
                  concurrency: int = 4, progress: bool = True) -> dict:
    """Judge every question; missing predictions and unreadable verdicts count as no / 0. `progress` shows a tqdm
    bar over the questions that follows every judge answer (`JudgeProgress`).

    Returns `{"accuracy", "score", "n", "n_failed", "failed", "samples"}`.
    """
    from tqdm.auto import tqdm

    def one(question: OpenQuestion) -> dict:
        prediction = predictions.get(question.id)
        record = {"id": question.id, "question": question.question, "answer": question.answer, "prediction": prediction}
        if prediction is None:
            return {**record, "yes": False, "score": 0.0, "failed": True, "error": "no prediction (video unreadable or missing)"}
        try:
            (yes, score), answers = judge.chat_parsed(
                judge_messages(question.question, question.answer, prediction), parse_verdict, max_attempts=max_attempts,
                retry_temperature=0.7,
            )
            return {**record, "yes": yes, "score": score, "failed": False, "judge_answer": answers[-1]}
        except Exception as error:  # noqa: BLE001 - judge failures are recorded per sample, never dropped
            return {**record, "yes": False, "score": 0.0, "failed": True, "error": f"{type(error).__name__}: {error}"[:500]}

    bar = tqdm(total=len(questions), desc=f"QA judge ({judge.settings.model})", unit="question", disable=not progress)
    tracker = JudgeProgress(bar, judge, unit="questions")

    def judged(question: OpenQuestion) -> dict:
        sample = one(question)
        tracker.sample_done(sample["failed"])
        return sample

    if progress:
        judge.on_answer = tracker.on_answer
    try:
        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            samples = list(pool.map(judged, questions))
    finally:
        judge.on_answer = None
        bar.close()
    n = len(samples)
    failed = [{"id": s["id"], "error": s["error"]} for s in samples if s["failed"]]
    return {
        "accuracy": sum(s["yes"] for s in samples) / n if n else 0.0,
        "score": sum(s["score"] for s in samples) / n if n else 0.0,
        "n": n,
        "n_failed": len(failed),
        "failed": failed,
        "samples": samples,
    }


# ---------------------------------------------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------------------------------------------

_ALIASES = {
    "video": ("video", "video_name", "video_id", "gif_name", "vid", "video_path"),
    "question": ("question", "q"),
    "answer": ("answer", "a", "gt_answer"),
    "id": ("question_id", "id", "qid", "key"),
}


def _pick(record: dict, name: str, where: str, required: bool = True):
    for key in _ALIASES[name]:
        if key in record and record[key] not in (None, ""):
            return record[key]
    if required:
        raise ValueError(f"{where}: no {name} field (looked for {list(_ALIASES[name])})")
    return None


def _read_table(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".csv", ".tsv"):
        dialect = "excel-tab" if "\t" in text.splitlines()[0] else "excel"
        return list(csv.DictReader(text.splitlines(), dialect=dialect))
    if path.suffix == ".jsonl":
        return [row for _, row in read_jsonl_objects(path)]
    data = json.loads(text)
    if isinstance(data, dict):  # {id: record} style
        data = [{"id": k, **v} if isinstance(v, dict) else {"id": k, "answer": v} for k, v in data.items()]
    return data


def load_questions(fmt: str, annotations: str, videos: str | None, answers: str | None = None,
                   video_map: str | None = None) -> list[OpenQuestion]:
    """Questions of one benchmark.

    Args:
        fmt: `msvd_qa` / `msrvtt_qa` (`test_qa.json`: `video_id`, `question`, `answer`, `id`), `activitynet_qa`
            (`test_q.json` + `--answers test_a.json`, joined on `question_id`), `tgif_qa` (FrameQA csv/tsv:
            `gif_name`, `question`, `answer`), or `generic` (JSON/JSONL/CSV with `video`, `question`, `answer`).
        video_map: MSVD's `youtube_mapping.txt` (`<youtube name> vid<N>` per line).
    """
    fmt = fmt.lower().replace("-", "_")
    if fmt not in FORMATS:
        raise ValueError(f"unknown open-QA format {fmt!r}; expected one of {FORMATS}")
    path, videos_dir = Path(annotations), Path(videos or "")
    records = _read_table(path)
    if answers:
        by_id = {str(_pick(a, "id", f"{answers}[{i}]")): a for i, a in enumerate(_read_table(Path(answers)))}
        joined = []
        for i, record in enumerate(records):
            qid = str(_pick(record, "id", f"{path}[{i}]"))
            if qid not in by_id:
                raise ValueError(f"{answers}: no answer for question_id {qid}")
            joined.append({**record, "answer": _pick(by_id[qid], "answer", f"{answers}[{qid}]")})
        records = joined
    mapping = {}
    if video_map:
        for line in Path(video_map).read_text().splitlines():
            parts = line.split()
            if len(parts) == 2:
                mapping[parts[1]] = parts[0]
    questions = []
    for i, record in enumerate(records):
        where = f"{path}[{i}]"
        video = str(_pick(record, "video", where))
        if fmt == "msvd_qa":
            names = [mapping.get(f"vid{video}", mapping.get(video, video)), video]
        elif fmt == "msrvtt_qa":
            names = [f"video{video}" if video.isdigit() else video, video]
        elif fmt == "activitynet_qa":
            names = [video, f"v_{video}", video.removeprefix("v_")]
        else:
            names = [video]
        qid = _pick(record, "id", where, required=False)
        questions.append(OpenQuestion(
            str(qid if qid is not None else i), str(find_video_file(videos_dir, *names) or videos_dir / names[0]), str(_pick(record, "question", where)),
            str(_pick(record, "answer", where)),
        ))
    return questions


@dataclass
class OpenQAArguments:
    format: str = field(metadata={"help": f"One of {FORMATS}."})
    annotations: str = field(metadata={"help": "Question file."})
    output_dir: str = field(metadata={"help": "Folder for predictions.jsonl and results.json."})
    videos: str | None = field(default=None, metadata={
        "help": "Video folder (not needed when the annotations' video paths resolve)."})
    answers: str | None = field(default=None, metadata={"help": "Separate answer file (ActivityNet-QA test_a.json)."})
    video_map: str | None = field(default=None, metadata={"help": "MSVD youtube_mapping.txt."})
    prompt_template: str = field(default="openqa-v1", metadata={"help": "tarsier_hf.eval.prompts template name or text."})
    model_name: str | None = field(default=None, metadata={"help": "Row name in Table 5 (default: checkpoint)."})


def evaluate_openqa(data: OpenQAArguments, model_args: ModelArguments, judge_args: JudgeArguments,
                    model=None, processor=None, judge=None, progress: bool = True) -> dict | None:
    state = get_state()
    questions = load_questions(data.format, data.annotations, data.videos, data.answers, data.video_map)
    if model_args.limit is not None:
        questions = questions[: model_args.limit]
    frames = model_args.num_frames or frames_for(model_args.model_preset, data.format)
    settings = model_args.inference_settings(frames)
    requests = [VideoRequest(q.id, q.video, openqa_prompt(q.question, data.prompt_template)) for q in questions]
    missing = missing_videos(requests)
    config = judge_args.autodq_config()
    judge = preflight(data.format, data.output_dir, len(requests), missing, data.videos, judge_args, config, judge,
                      report=state.is_main_process)
    output_dir = Path(data.output_dir)
    outputs = generate_predictions(requests, output_dir, model_args, settings, model, processor, progress, state)
    if outputs is None:
        return None
    predictions = predictions_of(outputs)
    results = {
        **result_header(data.format, "openqa", data.model_name, model_args, settings),
        "prompt": {"template": data.prompt_template, "example": requests[0].prompt if requests else None},
        "missing_videos": missing,
        "unreadable_videos": unreadable_videos(outputs),
    }
    if judge_args.skip_scoring:  # the same command without --skip_scoring scores the predictions written here
        results.update(judge={"skipped": True}, n=len(questions), n_predictions=len(predictions))
    else:
        judge = judge or judge_args.build(config)  # an in-process judge, built once the video model is done
        concurrency = judge_args.judge_concurrency or judge_defaults(judge)["concurrency"]
        scores = judge_answers(questions, predictions, judge, config.max_parse_attempts, concurrency, progress)
        results.update(
            judge={**judge.settings.to_dict(), "prompt_version": JUDGE_PROMPT_VERSION,
                   "max_parse_attempts": config.max_parse_attempts},
            accuracy=scores["accuracy"], score=scores["score"], n=scores["n"], n_failed=scores["n_failed"],
            failed=scores["failed"], samples=scores["samples"],
        )
    write_json(output_dir / "results.json", results)
    return results


@consent_boundary
def main(argv: list[str] | None = None) -> None:
    parser = HfArgumentParser((OpenQAArguments, ModelArguments, JudgeArguments, LoggingArguments), **help_text(
        "Answer an open-ended video QA benchmark (MSVD-QA, MSR-VTT-QA, ActivityNet-QA, TGIF-QA) with a "
        "checkpoint, judge the answers with an LLM and write accuracy and score into --output_dir.",
        "tarsier-openqa --model_name_or_path tarsier-7b --format msvd_qa "
        "--annotations MSVD-QA/test_qa.json --video_map MSVD-QA/youtube_mapping.txt "
        "--videos MSVD/videos --output_dir runs/msvd_qa",
        usage="%(prog)s --model_name_or_path MODEL --format FORMAT --annotations PATH --output_dir DIR [options]"))
    data, model_args, judge_args, log_args = parser.parse_args_into_dataclasses(args=argv)
    configure_logging(log_args)
    results = evaluate_openqa(data, model_args, judge_args)
    if results is None:
        return
    if "accuracy" in results:
        print(f"{data.format}: accuracy {100 * results['accuracy']:.1f}  score {results['score']:.2f}  "
              f"(n={results['n']}, judge failures {results['n_failed']})", file=sys.stdout)
    else:
        print(f"{data.format}: {results['n_predictions']}/{results['n']} answers generated, not scored "
              f"(--skip_scoring) -> {Path(data.output_dir) / 'results.json'}", file=sys.stdout)


if __name__ == "__main__":
    main()
