"""DREAM-1K (Tarsier paper §4.1, §5.1): describe every video, score with AutoDQ, report Table 3 and Figure 5.

    python -m tarsier_hf.eval.dream1k --model_name_or_path path/to/tarsier --annotations ../shared/data/DREAM-1K.jsonl \
        --videos DREAM-1K/video --output_dir runs/tarsier-7b-dream1k \
        --judge openai --judge_base_url http://127.0.0.1:8000/v1 --judge_model my-judge
    accelerate launch --multi_gpu --num_processes 8 -m tarsier_hf.eval.dream1k ...   # sharded generation

`--annotations` is a DREAM-1K JSONL file or a Hub dataset id / local dataset folder (read with `datasets`), in
either published layout: the first release (`text.prompt` / `text.response`, `video_file`) or the later one of
Tarsier2's annotation files (bytedance/tarsier, branch tarsier2, `data/annotations/DREAM-1k.jsonl`: `messages`
whose user turn holds `{"type": "video", "video": {"video_file": ...}}` and the prompt, and whose assistant text
item holds the reference in `reference`; events under `extra_info` in both). Category names follow the record's
`dataset` (the later release renames `shorts` / `stock` to `vertical_video` / `videvo`; tarsier_hf.eval.report maps both).
Videos are found in `--videos` by the record's `video_file` (when it is a real path) or by `idx` / `vid` with
any video extension (`--video_template` overrides, e.g. `"{idx}.mp4"`); `--videos` may be left out when the
records' `video_file` paths resolve as they are (absolute, or relative to the working directory).

Before the model loads, the run checks what it needs (tarsier_hf.eval.common.preflight): the output folder is
writable, every video is resolved (the missing ones are listed in one report; none found stops the run), and the
judge answers within `--judge_check_timeout` seconds with the model listed (skipped with `--skip_scoring`).
Missing videos are listed in the results and, like unreadable ones, left out of the scores; the run goes on.

Output folder: `predictions.jsonl` (appended as generated; a re-run resumes), `autodq_samples.jsonl`
(per-video events and labels), `results.json` (scores + checkpoint, frames, prompt, generation and judge
settings), `table3.md` and `figure5.png`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from tarsier_hf.eval.autodq.judge import JudgeUnavailableError
from tarsier_hf.eval.autodq.pipeline import JudgeTimeoutError, run_autodq, samples_from_dream1k
from tarsier_hf.cli import consent_boundary, help_text
from tarsier_hf.eval.common import (JudgeArguments, LoggingArguments, ModelArguments, configure_logging,
                                    find_video_file, predictions_of, preflight)
from tarsier_hf.inference.batch import get_state, run_inference
from tarsier_hf.eval.prompts import get_preset
from tarsier_hf.eval.report import plot_complexity, table3_markdown
from tarsier_hf.jsonl import append_jsonl, read_jsonl_objects, write_json
from tarsier_hf.inference.engine import VideoRequest

logger = logging.getLogger(__name__)

PLACEHOLDER = "<placeholder>"
REQUIRED_FIELDS = ("idx", "dataset", "text", "extra_info")


@dataclass
class Dream1kArguments:
    """Where DREAM-1K and the outputs are."""

    output_dir: str = field(metadata={"help": "Folder for predictions, scores, table and figure."})
    annotations: str = field(metadata={"help": "DREAM-1K annotations: a JSONL file, or a Hub dataset id / dataset folder."})
    videos: str | None = field(default=None, metadata={
        "help": "Folder holding the DREAM-1K videos (not needed when the annotations' video paths resolve)."})
    split: str = field(default="test", metadata={"help": "Split when --annotations is a dataset id."})
    video_template: str | None = field(default=None, metadata={"help": "Video path pattern, e.g. '{idx}.mp4'."})
    prompt: str | None = field(default=None, metadata={"help": "Override the preset's description prompt."})
    model_name: str | None = field(default=None, metadata={"help": "Row name in Table 3 (default: checkpoint)."})


def from_messages_layout(record: dict, where: str) -> dict:
    """A DREAM-1K record of the later `messages` layout with the first layout's fields (`text`, `video_file`)."""
    messages = record["messages"]
    if isinstance(messages, str):  # a Hub viewer config may type it as a JSON string
        messages = json.loads(messages)
    turns = {m.get("role"): m.get("content") or [] for m in messages if isinstance(m, dict)}
    user, assistant = turns.get("user"), turns.get("assistant")
    if user is None or assistant is None:
        raise ValueError(f"{where}: a messages-layout record needs a user and an assistant turn")
    user = [user] if isinstance(user, dict) else user
    assistant = [assistant] if isinstance(assistant, dict) else assistant
    videos = [(i.get("video") or {}).get("video_file") for i in user if isinstance(i, dict) and i.get("type") == "video"]
    prompt = " ".join(i["text"] for i in user if isinstance(i, dict) and i.get("type") == "text" and i.get("text"))
    references = [i.get("reference") or i.get("text") for i in assistant if isinstance(i, dict) and i.get("type") == "text"]
    references = [r for r in references if r]
    if not references:
        raise ValueError(f"{where}: the assistant turn has no reference (text item with 'reference' or 'text')")
    converted = {k: v for k, v in record.items() if k != "messages"}
    converted["text"] = {"prompt": "<video>\n" * len(videos) + prompt, "response": references[0]}
    converted["video_file"] = videos[0] if len(videos) == 1 else videos or None
    return converted


def load_annotations(source: str | os.PathLike, split: str = "test") -> list[dict]:
    """DREAM-1K records (either layout, returned in the first's fields) from a JSONL file or a dataset (Hub id or
    local folder) loaded with `datasets`."""
    source = str(source)
    path = Path(source)
    if path.is_file():
        records = [row for _, row in read_jsonl_objects(path)]
    elif path.suffix in (".jsonl", ".json") or source.startswith((".", "/", "~")) and not path.exists():
        raise FileNotFoundError(f"{source}: no such DREAM-1K annotation file")
    else:
        import datasets  # optional: the `eval` extra (Hub or folder datasets only)

        try:
            dataset = datasets.load_dataset(source, split=split)
        except Exception as error:  # noqa: BLE001 - re-raised with the source named
            raise FileNotFoundError(f"{source}: neither a DREAM-1K JSONL file nor a loadable dataset ({error})") from error
        records = [dict(row) for row in dataset]
    for number, record in enumerate(records):
        if "messages" in record and "text" not in record:
            record = records[number] = from_messages_layout(record, f"{source}: record {number} (idx={record.get('idx')!r})")
        missing = [k for k in REQUIRED_FIELDS if k not in record]
        if missing:
            raise ValueError(f"{source}: record {number} (idx={record.get('idx')!r}) lacks {missing}")
        if not isinstance(record["text"], dict) or "response" not in record["text"]:
            raise ValueError(f"{source}: record {number} (idx={record['idx']}) has no text.response (the reference)")
    return records


def find_video(record: dict, videos: str | os.PathLike | None, template: str | None = None) -> Path | None:
    """The video file of a DREAM-1K record under `videos` (None: its `video_file` as given), or None when no
    candidate exists."""
    videos = Path(videos or "")
    candidates = []
    if template:
        # the folder name of the release the videos came with, not the paper's name for it
        fields = {**record, **(record.get("extra_info") or {}), "category": (record.get("dataset") or "").rsplit("/", 1)[-1]}
        candidates.append(videos / template.format(**fields))
    video_file = record.get("video_file")
    if video_file and video_file != PLACEHOLDER:
        candidates += [Path(video_file), videos / video_file, videos / Path(video_file).name]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return find_video_file(videos, *(str(record[key]) for key in ("idx", "vid") if record.get(key) is not None))


def build_requests(records: list[dict], videos: str | None, prompt: str, template: str | None = None):
    """`(requests, missing)`: one request per record whose video exists; `missing` lists the others."""
    requests, missing = [], []
    for record in records:
        video = find_video(record, videos, template)
        if video is None:
            video_file = record.get("video_file")
            named = video_file if video_file and video_file != PLACEHOLDER else f"{record['idx']}.<any video extension>"
            missing.append({"id": str(record["idx"]), "video": named, "video_file": video_file, "dataset": record["dataset"]})
            continue
        requests.append(VideoRequest(str(record["idx"]), str(video), prompt, {"dataset": record["dataset"]}))
    return requests, missing


def score(records: list[dict], predictions: dict[str, str], judge_args: JudgeArguments, judge=None) -> dict:
    """AutoDQ over the records that have a prediction (tarsier_hf.eval.autodq pipeline: cache, retries, macro average)."""
    scored = [r for r in records if str(r["idx"]) in predictions]
    config = judge_args.autodq_config()
    judge = judge or judge_args.build(config)
    samples = samples_from_dream1k(scored, [predictions[str(r["idx"])] for r in scored])
    result = run_autodq(samples, judge, config, concurrency=judge_args.judge_concurrency)
    for sample in result["samples"]:
        sample["id"] = str(scored[sample["index"]]["idx"])
    return result


def summarize_scores(result: dict) -> dict:
    """The numbers Table 3 and Figure 5 need, from an AutoDQ result."""
    macro = result.get("macro")
    overall = {k: result[k] for k in ("f1", "precision", "recall")}
    return {
        "overall": overall,
        "average": result["headline"],
        "micro": result["micro"],
        "per_category": (macro or {}).get("per_category", {}),
        "breakdowns": result["breakdowns"],
        "n_scored": result["n_scored"],
        "n_judge_failed": result["n_failed"],
        "judge_failed": result["failed"],
        "bootstrap_ci": result.get("bootstrap_ci"),
    }


def evaluate_dream1k(
    data: Dream1kArguments, model_args: ModelArguments, judge_args: JudgeArguments, model=None, processor=None,
    judge=None, progress: bool = True,
) -> dict | None:
    """Generate, score and report. Returns the results dict on the main process (None on the others)."""
    state = get_state()
    preset = get_preset(model_args.model_preset)
    prompt = data.prompt or preset.description_prompt
    frames = model_args.num_frames if model_args.num_frames is not None else preset.num_frames
    settings = model_args.inference_settings(frames, fps=preset.fps)
    records = load_annotations(data.annotations, data.split)
    if model_args.limit is not None:
        records = records[: model_args.limit]
    requests, missing = build_requests(records, data.videos, prompt, data.video_template)
    judge = preflight("DREAM-1K", data.output_dir, len(records), missing, data.videos, judge_args, judge=judge,
                      report=state.is_main_process, packages=() if judge_args.skip_scoring else ("matplotlib",))

    output_dir = Path(data.output_dir)
    predictions_path = output_dir / "predictions.jsonl"
    outputs = run_inference(
        requests, predictions_path, settings, batch_size=model_args.batch_size, model=model, processor=processor,
        progress=progress, state=state,
    )
    if not state.is_main_process:
        return None
    predictions = predictions_of(outputs)
    failed_videos = [{"id": k, "video": r["video"], "error": r["error"]} for k, r in outputs.items() if "error" in r]
    results = {
        "benchmark": "dream1k",
        "model": data.model_name or str(model_args.checkpoint),
        "model_preset": preset.to_dict(),
        "checkpoint": str(model_args.checkpoint),
        "frames": settings.frames,
        "prompt": prompt,
        "run": settings.to_dict(),
        "annotations": str(data.annotations),
        "videos": str(data.videos),
        "n_annotations": len(records),
        "n_predictions": len(predictions),
        "missing_videos": missing,
        "failed_videos": failed_videos,
        "files": {"predictions": str(predictions_path)},
    }
    if not judge_args.skip_scoring and predictions:
        result = score(records, predictions, judge_args, judge)
        samples_path = output_dir / "autodq_samples.jsonl"
        samples_path.unlink(missing_ok=True)
        append_jsonl(samples_path, result["samples"])
        results["judge"] = result["judge"]
        results["autodq"] = {"preset": result["preset"], "config": result["config"], "calls": result["calls"]}
        results["scores"] = summarize_scores(result)
        table = table3_markdown([(results["model"], results["scores"])])
        (output_dir / "table3.md").write_text(table)
        plot_complexity([(results["model"], results["scores"]["breakdowns"])], output_dir / "figure5.png")
        results["files"].update(
            autodq_samples=str(samples_path), table3=str(output_dir / "table3.md"), figure5=str(output_dir / "figure5.png")
        )
    else:
        results["judge"] = {"skipped": True, **{k: v for k, v in asdict(judge_args).items() if k != "judge_api_key"}}
    write_json(output_dir / "results.json", results)
    return results


@consent_boundary
def main(argv: list[str] | None = None) -> None:
    parser = HfArgumentParser((Dream1kArguments, ModelArguments, JudgeArguments, LoggingArguments), **help_text(
        "Describe every DREAM-1K video with a checkpoint and score the descriptions with AutoDQ (an LLM "
        "judge), writing predictions, scores, Table 3 and Figure 5 into --output_dir.",
        "tarsier-dream1k --model_name_or_path tarsier-7b "
        "--annotations DREAM-1K/DREAM-1K.jsonl --videos DREAM-1K/video "
        "--output_dir runs/dream1k --judge_base_url http://127.0.0.1:8000/v1",
        usage="%(prog)s --model_name_or_path MODEL --annotations PATH --output_dir DIR [options]"))
    data, model_args, judge_args, log_args = parser.parse_args_into_dataclasses(args=argv)
    configure_logging(log_args)
    try:
        results = evaluate_dream1k(data, model_args, judge_args)
    except (JudgeTimeoutError, JudgeUnavailableError) as error:  # the judge failed once scoring started
        raise SystemExit(f"error: {error}\nThe predictions are kept in {Path(data.output_dir) / 'predictions.jsonl'}: "
                         "run the same command again once the judge answers (nothing is generated twice).") from None
    if results is None:
        return
    if "scores" in results:
        print(Path(results["files"]["table3"]).read_text())
    print(
        f"{results['n_predictions']}/{results['n_annotations']} videos described; "
        f"{len(results['missing_videos'])} missing, {len(results['failed_videos'])} unreadable "
        f"-> {Path(data.output_dir) / 'results.json'}"
    )
    for item in results["failed_videos"]:
        print(f"  unreadable: {item['error']}", file=sys.stderr)


if __name__ == "__main__":
    main()
