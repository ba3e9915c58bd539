"""The tiny recipe's evaluation phase: descriptions of the held-out test clips, CIDEr, closed-grammar event F1 and
the reference loss with each clip's own and another clip's video; and the description of one test video."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import tarsier_hf.eval as tarsier_eval
from tarsier_hf.dream_s import corpus_event_scores, corpus_event_scores_by, event_scores, word_classes
from tarsier_hf.eval.reference_loss import own_vs_other_video
from tarsier_hf.families import load_model_and_processor
from tarsier_hf.jsonl import read_jsonl_objects
from tarsier_hf.tiny_recipe.arguments import TinyRecipeArguments
from tarsier_hf.tiny_recipe.phases import TEST_PROMPT, PhaseTimer, log, run_logged
from tarsier_hf.tiny_recipe.runs import RunSpec


def evaluate_run(spec: RunSpec, checkpoint: Path, args: TinyRecipeArguments, out: Path, timer: PhaseTimer) -> dict:
    """Generate descriptions of the test split with `tarsier_hf.inference.batch`, then CIDEr and closed-grammar event F1."""
    import evaluate  # the eval extra


    data_dir = out / "data"
    eval_dir = out / "eval" / spec.name
    eval_dir.mkdir(parents=True, exist_ok=True)
    rows = [row for _, row in read_jsonl_objects(data_dir / "test.jsonl", RuntimeError)]
    requests = eval_dir / "requests.jsonl"
    with open(requests, "w", encoding="utf-8") as handle:
        for row in rows:
            video = row["messages"][0]["content"][0]["path"]
            handle.write(json.dumps({"id": row["idx"], "video": str(data_dir / video), "prompt": TEST_PROMPT}) + "\n")
    predictions_file = eval_dir / "predictions.jsonl"
    predictions_file.unlink(missing_ok=True)  # a fresh generation for this checkpoint, never a resumed mix
    frames = spec.num_frames or args.num_frames
    log(f"{spec.name}: generating {len(rows)} test descriptions ({frames} frames) with tarsier_hf.inference.batch")
    with timer.phase(f"{spec.name}/eval"):
        run_logged([sys.executable, "-m", "tarsier_hf.inference.batch", "--model_name_or_path", str(checkpoint),
                    "--requests", str(requests), "--output_file", str(predictions_file), "--num_frames", str(frames),
                    "--batch_size", str(args.eval_batch_size), "--max_new_tokens", str(args.max_new_tokens)],
                   eval_dir / "inference.log")
    records = {}
    for _, record in read_jsonl_objects(predictions_file, RuntimeError):
        records.setdefault(record["id"], record)
    failed = [r for r in records.values() if "prediction" not in r]
    if failed or len(records) != len(rows):
        raise RuntimeError(f"{predictions_file}: {len(failed)} failed and {len(rows) - len(records)} missing samples")
    predictions = [records[row["idx"]]["prediction"] for row in rows]
    cider = evaluate.load(str(Path(tarsier_eval.__file__).parent / "cider")).compute(
        predictions=predictions, references=[[row["reference"]] for row in rows])
    log(f"{spec.name}: scoring the test references with their own and with other videos (tarsier_hf.eval.reference_loss)")
    with timer.phase(f"{spec.name}/eval"):
        reliance = video_reliance(checkpoint, rows, data_dir, frames)
    scores = [event_scores(prediction, row["events"]) for prediction, row in zip(predictions, rows)]
    corpus = corpus_event_scores(scores)
    by_events = corpus_event_scores_by(scores, [row["n_events"] for row in rows])
    with open(eval_dir / "scores.jsonl", "w", encoding="utf-8") as handle:
        for row, prediction, score in zip(rows, predictions, scores):
            handle.write(json.dumps({"id": row["idx"], "prediction": prediction, "reference": row["reference"],
                                     "n_events": row["n_events"], **score}) + "\n")
    return {"run": spec.name, "label": spec.label, "checkpoint": str(checkpoint), "num_frames": frames,
            "cider": float(cider["cider"]), "precision": corpus["precision"], "recall": corpus["recall"],
            "f1": corpus["f1"], "n": corpus["n"],
            **reliance,
            "f1_by_events": {int(k): v["f1"] for k, v in by_events.items()},
            "n_by_events": {int(k): v["n"] for k, v in by_events.items()}}


def video_reliance(checkpoint: Path, rows: list[dict], data_dir: Path, num_frames: int) -> dict:
    """Reference loss (nats per token) with each clip's own video and with the next clip's video, overall and per
    word class of the grammar: how much the model reads the frames, and for which content."""

    model, processor, _ = load_model_and_processor(checkpoint, dtype="float32")
    return own_vs_other_video(model, processor, rows, word_classes, video_root=str(data_dir), num_frames=num_frames)


def describe_one(checkpoint: Path, args: TinyRecipeArguments, out: Path) -> dict:
    """`python -m tarsier_hf.inference.describe` on the first held-out test video; returns its record."""
    data_dir = out / "data"
    _, row = next(read_jsonl_objects(data_dir / "test.jsonl", RuntimeError))
    video = data_dir / row["messages"][0]["content"][0]["path"]
    target = out / "description.jsonl"
    target.unlink(missing_ok=True)
    run_logged([sys.executable, "-m", "tarsier_hf.inference.describe", str(video), "--model_name_or_path", str(checkpoint),
                "--output_file", str(target), "--num_frames", str(args.num_frames), "--max_new_tokens", str(args.max_new_tokens),
                "--no_progress"], out / "logs" / "describe.log")
    _, record = next(read_jsonl_objects(target, RuntimeError))
    if "prediction" not in record:
        raise RuntimeError(f"{target}: describing {video} failed: {record.get('error')}")
    record["reference"] = row["reference"]
    return record
