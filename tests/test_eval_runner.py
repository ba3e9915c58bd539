"""Benchmark runners: DREAM-1K end to end with a real served judge, resume after SIGKILL, 2-process sharding,
the multiple-choice answer parser, result files and report helpers.

The model is a tiny random Tarsier (2-layer CLIP + 2-layer llama) whose tokenizer is the real SmolLM2 tokenizer
with the processor's special tokens; the judge is SmolLM2-135M-Instruct behind `transformers serve`."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import console_script
from tests.training_runs import child_env

REPO = Path(__file__).resolve().parents[1]
JUDGE_MAX_TOKENS = 16  # short judge answers keep the suite fast; truncated ones exercise the failure paths


def build_tiny_checkpoint(smollm2_dir: Path, dest: Path) -> Path:
    """Save a tiny random Tarsier checkpoint (remote code + processor) that loads with the Auto classes."""
    import torch
    from transformers import AutoTokenizer

    from configuration_tarsier import TarsierConfig
    from modeling_tarsier import TarsierForConditionalGeneration
    from processing_tarsier import TarsierProcessor

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    processor = TarsierProcessor.from_parts(tokenizer, image_processor="clip", image_size=28, chat_template="chatml")
    config = TarsierConfig(
        vision_config=dict(
            model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, image_size=28, patch_size=14,
        ),
        text_config=dict(
            model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=1024,
        ),
        image_token_id=processor.image_token_id, video_token_id=processor.video_token_id,
        image_newline_token_id=processor.image_newline_token_id, frame_end_token_id=processor.frame_end_token_id,
    )
    torch.manual_seed(0)
    model = TarsierForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.save_pretrained(dest)
    processor.save_pretrained(dest)
    return dest


def write_stand_in_videos(folder: Path, names: list[str], seed: int = 0) -> list[Path]:
    """Small random-texture H.264 clips (different lengths) named `<name>.mp4`."""
    from tarsier_hf.dream_s.video_writer import write_video

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, name in enumerate(names):
        frames = [rng.integers(0, 256, (32, 48, 3), dtype=np.uint8) for _ in range(9 + 2 * i)]
        paths.append(Path(write_video(folder / f"{name}.mp4", frames, fps=8)))
    return paths


@pytest.fixture(scope="module")
def tiny_checkpoint(smollm2_dir, tmp_path_factory) -> Path:
    return build_tiny_checkpoint(smollm2_dir, tmp_path_factory.mktemp("tiny_tarsier"))


# ------------------------------------------------------------------------------------------------------------
# Multiple-choice parser on real-looking answers
# ------------------------------------------------------------------------------------------------------------

OPTIONS = ["The man picks up the cup.", "The boy throws the ball", "a man is drinking water", "to dry his hands", "man"]
ANSWERS = [
    ("(A) The man picks up the cup.", 0),
    ("B", 1),
    ("B.", 1),
    ("Answer: C", 2),
    ("The answer is (D).", 3),
    ("Best option: (E)", 4),
    ("the boy throws the ball", 1),
    ("2", 1),  # a number counts from 1 when options are lettered
    ("Option 3", 2),
    ("A man is drinking water.", 2),  # the article "A" is not the letter A
    ("A man picks up a cup", None),  # a short option ("man") inside a sentence is not an answer
    ("The man", 4),
    ("c", 2),
    ("(c)", 2),
    ("  **C**", 2),
    ("D) to dry his hands", 3),
    ("The correct answer is B. The boy throws the ball.", 1),
    ("Based on the video, the man picks up the cup.", 0),
    ("B because the boy throws the ball", 1),
    ("I choose B", 1),
    ("A", 0),
    ("A.", 0),
    ("Answer: to dry his hands", 3),
    ("I cannot tell from the video.", None),
    ("A or B", None),
    ("C and D", None),
    ("(B) the boy throws the ball\n(C) a man is drinking water", None),
    ("7", None),
    ("", None),
]


@pytest.mark.parametrize("answer,expected", ANSWERS)
def test_parse_choice_real_looking_answers(answer, expected):
    from tarsier_hf.eval.mcqa import parse_choice

    assert parse_choice(answer, OPTIONS) == expected


def test_unparsable_answers_count_as_wrong_not_dropped():
    from tarsier_hf.eval.mcqa import MCQuestion, score_choices

    questions = [MCQuestion(str(i), f"{i}.mp4", "q?", OPTIONS, answer=1, task="t") for i in range(4)]
    predictions = {"0": "B", "1": "(B)", "2": "no idea", "3": "A or B"}  # 2 right, 2 unparsable
    result = score_choices(questions, predictions)
    assert result["total"] == 4 and result["correct"] == 2 and result["unparsable"] == 2
    assert result["accuracy"] == pytest.approx(0.5)  # the released code would report 2/2 = 100%
    missing = score_choices(questions, {"0": "B"})
    assert missing["accuracy"] == pytest.approx(0.25) and missing["missing"] == 3


def test_mcqa_readers(tmp_path):
    from tarsier_hf.eval.mcqa import load_egoschema, load_mvbench, load_nextqa

    (tmp_path / "action_sequence.json").write_text(json.dumps([
        {"video": "a.mp4", "question": "What next?", "candidates": ["sit", "run"], "answer": "run", "start": 1.0, "end": 3.0},
    ]))
    mv = load_mvbench(tmp_path / "action_sequence.json", tmp_path)
    assert (mv[0].answer, mv[0].task, mv[0].start) == (1, "action_sequence", 1.0)
    (tmp_path / "bad.json").write_text(json.dumps([{"video": "a.mp4", "question": "q", "candidates": ["x"], "answer": "y"}]))
    with pytest.raises(ValueError, match=r"bad\.json\[0\].*not one of the candidates"):
        load_mvbench(tmp_path / "bad.json", tmp_path)
    (tmp_path / "nextqa.csv").write_text(
        "video,frame_count,width,height,question,answer,qid,type,a0,a1,a2,a3,a4\n"
        "4010069381,369,640,480,why did the baby cry,2,6,CW,hungry,tired,fell down,bored,cold\n"
    )
    nq = load_nextqa(tmp_path / "nextqa.csv", tmp_path)
    assert nq[0].answer == 2 and nq[0].options[2] == "fell down" and nq[0].task == "CW"
    (tmp_path / "questions.json").write_text(json.dumps([
        {"q_uid": "u1", "question": "q1", **{f"option {i}": f"o{i}" for i in range(5)}},
        {"q_uid": "u2", "question": "q2", **{f"option {i}": f"o{i}" for i in range(5)}},
    ]))
    (tmp_path / "subset_answers.json").write_text(json.dumps({"u1": 3}))
    ego = load_egoschema(tmp_path / "questions.json", tmp_path, tmp_path / "subset_answers.json")
    assert [q.answer for q in ego] == [3, None]
    assert len(load_egoschema(tmp_path / "questions.json", tmp_path, tmp_path / "subset_answers.json", subset_only=True)) == 1


# ------------------------------------------------------------------------------------------------------------
# Result files, batching, prompts, open-QA verdicts, report
# ------------------------------------------------------------------------------------------------------------


def test_jsonl_survives_a_torn_last_line(tmp_path):
    from tarsier_hf.jsonl import append_jsonl, read_jsonl

    path = tmp_path / "out.jsonl"
    append_jsonl(path, [{"id": "a", "prediction": "x"}])
    with open(path, "a") as handle:
        handle.write('{"id": "b", "predic')  # a write cut short by a crash
    assert [r["id"] for r in read_jsonl(path)] == ["a"]
    append_jsonl(path, [{"id": "b", "prediction": "y"}])
    assert [r["id"] for r in read_jsonl(path)] == ["a", "b"]


def test_batches_and_shards_do_not_depend_on_process_count():
    from tarsier_hf.inference.batch import plan_batches, shard
    from tarsier_hf.inference.engine import VideoRequest

    requests = [VideoRequest(str(i), f"{i}.mp4", "p") for i in range(7)]
    batches = plan_batches(requests, 2)
    assert [[r.id for r in b] for b in batches] == [["0", "1"], ["2", "3"], ["4", "5"], ["6"]]
    two = shard(batches, 0, 2) + shard(batches, 1, 2)
    assert sorted(i for i, _ in two) == [i for i, _ in shard(batches, 0, 1)]
    with pytest.raises(ValueError, match="unique"):
        plan_batches(requests + [VideoRequest("3", "x.mp4", "p")], 2)


def test_prompts_presets():
    from tarsier_hf.eval.prompts import frames_for, get_preset, mcqa_prompt

    assert get_preset("Tarsier-7B").num_frames == 8 and get_preset("tarsier-7b").description_prompt == "Describe the video in detail."
    assert get_preset("gemini-1.5-pro").fps == 1.0 and get_preset("minigpt-4v").num_frames == 90
    assert get_preset("pllava-34b").description_prompt.endswith("Describe the background, characters and the actions in the provided video.")
    assert frames_for("tarsier-7b", "egoschema") == 16 and frames_for("tarsier-7b", "mvbench") == 8
    assert frames_for("llava-next-video", "dream1k") == 32
    with pytest.raises(KeyError, match="known presets"):
        get_preset("nope")
    assert mcqa_prompt("Why?", ["a", "b"]).splitlines()[1:3] == ["Options:", "(A) a"]


@pytest.mark.parametrize("text,expected", [
    ("{'pred': 'yes', 'score': 4}", (True, 4.0)),
    ('```json\n{"pred": "no", "score": "1"}\n```', (False, 1.0)),
    ("Sure! {'pred': 'Yes', 'score': 4.8} Hope this helps.", (True, 4.8)),
    ("pred: no, score: 9", (False, 5.0)),
])
def test_video_chatgpt_verdict_parser(text, expected):
    from tarsier_hf.eval.openqa import parse_verdict

    assert parse_verdict(text) == expected


def test_video_chatgpt_verdict_parser_rejects_garbage():
    from tarsier_hf.eval.openqa import parse_verdict

    with pytest.raises(ValueError, match="yes/no"):
        parse_verdict("The prediction is partially right.")


def test_table3_layout():
    from tarsier_hf.eval.report import table3_markdown

    scores = {
        "overall": {"f1": 0.346, "precision": 0.403, "recall": 0.302},
        "per_category": {"DREAM/movie_live_action": {"f1": 0.366, "precision": 0.385, "recall": 0.348}},
    }
    lines = table3_markdown([("Tarsier-7B", scores)]).splitlines()
    assert lines[0] == "| Model | Live-action | Animation | YouTube | Shorts | Stock | Overall |"
    assert lines[2] == "| Tarsier-7B | 36.6/38.5/34.8 | - | - | - | - | 34.6/40.3/30.2 |"


def test_table5_layout():
    from tarsier_hf.eval.report import table5_markdown

    table = table5_markdown([
        {"task": "mcqa", "benchmark": "mvbench", "model": "T", "accuracy": 0.626},
        {"task": "captioning", "benchmark": "msvd", "model": "T", "cider": 0.98},
        {"task": "openqa", "benchmark": "msvd_qa", "model": "T", "accuracy": 0.77, "score": 4.06},
    ])
    assert "| T | 62.6 |" in table and "| T | 98.0 |" in table and "| T | 77.0/4.1 |" in table


# ------------------------------------------------------------------------------------------------------------
# Real runs: inference sharding and resume, DREAM-1K end to end
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def requests_file(tmp_path_factory):
    """Eight stand-in videos and a requests JSONL for them."""
    root = tmp_path_factory.mktemp("requests")
    paths = write_stand_in_videos(root / "videos", [f"clip{i}" for i in range(8)], seed=1)
    lines = [json.dumps({"id": p.stem, "video": str(p), "prompt": "Describe the video in detail."}) for p in paths]
    (root / "requests.jsonl").write_text("\n".join(lines) + "\n")
    return root / "requests.jsonl"


INFERENCE_ARGS = ["--num_frames", "4", "--max_new_tokens", "6", "--batch_size", "2"]


def _inference_cmd(checkpoint, requests, output, extra=()):
    return ["-m", "tarsier_hf.inference.batch", "--checkpoint", str(checkpoint), "--requests", str(requests),
            "--output", str(output), *INFERENCE_ARGS, *extra]


def _predictions(path) -> dict[str, str]:
    from tarsier_hf.jsonl import read_jsonl

    records = [r for r in read_jsonl(path) if "prediction" in r]
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)), f"a sample was written twice: {ids}"
    return {r["id"]: r["prediction"] for r in records}


@pytest.fixture(scope="module")
def single_process_reference(tiny_checkpoint, requests_file, tmp_path_factory):
    """Predictions of one in-process run (no accelerate launcher)."""
    from tarsier_hf.inference.batch import main

    output = tmp_path_factory.mktemp("reference") / "predictions.jsonl"
    main(["--checkpoint", str(tiny_checkpoint), "--requests", str(requests_file), "--output", str(output), *INFERENCE_ARGS])
    return _predictions(output)


@pytest.mark.slow
def test_two_processes_give_the_same_results_as_one(tiny_checkpoint, requests_file, single_process_reference, tmp_path):
    output = tmp_path / "predictions.jsonl"
    cmd = [console_script("accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", *_inference_cmd(tiny_checkpoint, requests_file, output)]
    proc = subprocess.run(cmd, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "8/8 predictions" in proc.stdout  # printed once, by the main process
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(records) == 8
    assert _predictions(output) == single_process_reference
    assert all(r["num_frames"] == 4 and len(r["frame_indices"]) == 4 for r in records)


@pytest.mark.slow
def test_resume_after_sigkill_keeps_finished_samples(tiny_checkpoint, requests_file, single_process_reference, tmp_path):
    output = tmp_path / "predictions.jsonl"
    cmd = [sys.executable, *_inference_cmd(tiny_checkpoint, requests_file, output, ["--batch_size", "1"])]
    proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not (output.exists() and output.read_text().count("\n") >= 2):
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no results written in time"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    before = output.read_bytes()
    finished = _predictions(output)
    assert 2 <= len(finished) < 8, "the kill should land mid-run"

    rerun = subprocess.run(cmd, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    after = output.read_bytes()
    assert after.startswith(before)  # finished records are kept as they were, never rewritten
    final = _predictions(output)  # asserts that no sample was written twice
    assert len(final) == 8
    assert final == single_process_reference

    changed = subprocess.run(
        [sys.executable, *_inference_cmd(tiny_checkpoint, requests_file, output, ["--num_frames", "2"])],
        cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300,
    )
    assert changed.returncode != 0 and "different settings" in changed.stderr and "num_frames" in changed.stderr


@pytest.fixture(scope="module")
def dream_subset(dream1k_path, tmp_path_factory):
    """Four DREAM-1K annotations from two categories: two with stand-in videos, one missing, one unreadable."""
    records = [json.loads(line) for line in dream1k_path.read_text().splitlines()]
    by_category = {}
    for record in records:
        by_category.setdefault(record["dataset"], []).append(record)
    animation, live = by_category["DREAM/movie_animation"], by_category["DREAM/movie_live_action"]
    picked = [animation[0], live[0], animation[1], live[1]]
    root = tmp_path_factory.mktemp("dream")
    annotations = root / "DREAM-1K-subset.jsonl"
    annotations.write_text("".join(json.dumps(r) + "\n" for r in picked))
    videos = root / "videos"
    write_stand_in_videos(videos, [str(picked[0]["idx"]), str(picked[1]["idx"])], seed=2)
    (videos / f"{picked[3]['idx']}.mp4").write_text("this is not a video\n")  # picked[2] has no file at all
    return annotations, videos, picked


@pytest.mark.slow
def test_dream1k_end_to_end_with_served_judge(tiny_checkpoint, dream_subset, judge_server, smollm2_dir, tmp_path):
    from tarsier_hf.eval.common import JudgeArguments, ModelArguments
    from tarsier_hf.eval.dream1k import Dream1kArguments, evaluate_dream1k

    annotations, videos, picked = dream_subset
    data = Dream1kArguments(videos=str(videos), output_dir=str(tmp_path / "run"), annotations=str(annotations),
                            model_name="tiny-tarsier")
    model_args = ModelArguments(checkpoint=str(tiny_checkpoint), model_preset="tarsier-7b", max_new_tokens=8, batch_size=2)
    judge_args = JudgeArguments(
        judge="openai", judge_model=str(smollm2_dir), judge_base_url=judge_server,
        judge_endpoint_kind="transformers-serve", judge_max_tokens=JUDGE_MAX_TOKENS, judge_max_parse_attempts=1,
        judge_cache=str(tmp_path / "judge_cache.sqlite"), judge_concurrency=2, judge_timeout=120,
    )
    results = evaluate_dream1k(data, model_args, judge_args, progress=False)

    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    # every result file records the checkpoint, frames, prompt, generation and judge settings
    assert saved["checkpoint"] == str(tiny_checkpoint) and saved["frames"] == 8
    assert saved["prompt"] == "Describe the video in detail."
    assert saved["run"]["generation"]["max_new_tokens"] == 8 and saved["run"]["generation"]["do_sample"] is False
    assert saved["judge"]["model"] == str(smollm2_dir) and saved["judge"]["base_url"] == judge_server
    assert saved["judge"]["max_tokens"] == JUDGE_MAX_TOKENS and saved["judge"]["prompt_version"] == "tarsier-paper-v1"
    # a missing and an unreadable video are listed, not fatal
    assert [m["id"] for m in saved["missing_videos"]] == [str(picked[2]["idx"])]
    assert [f["id"] for f in saved["failed_videos"]] == [str(picked[3]["idx"])]
    assert "not a readable video" in saved["failed_videos"][0]["error"] or "Invalid data" in saved["failed_videos"][0]["error"]
    assert saved["n_predictions"] == 2

    scores = saved["scores"]
    assert scores["n_scored"] == 2 and scores["average"] == "macro"  # robust preset: judge failures score 0, kept
    for block in [scores["overall"], *scores["per_category"].values()]:
        for key in ("f1", "precision", "recall"):
            assert 0.0 <= block[key] <= 1.0
    assert set(scores["per_category"]) == {"DREAM/movie_animation", "DREAM/movie_live_action"}
    assert set(scores["breakdowns"]) == {"events", "subjects", "shots"}
    assert saved["autodq"]["calls"]["completed"] >= 1  # the served model really answered

    table = (tmp_path / "run" / "table3.md").read_text().splitlines()
    assert table[0].startswith("| Model | Live-action | Animation |") and table[2].startswith("| tiny-tarsier | ")
    assert table[2].count("/") >= 6 and "| - | - | - |" in table[2]  # two categories scored, three absent
    figure = (tmp_path / "run" / "figure5.png").read_bytes()
    assert figure[:8] == b"\x89PNG\r\n\x1a\n" and len(figure) > 5000
    samples = [json.loads(line) for line in (tmp_path / "run" / "autodq_samples.jsonl").read_text().splitlines()]
    assert sorted(s["id"] for s in samples) == sorted(str(p["idx"]) for p in picked[:2])

    # Same command again: nothing is generated again and every judge answer comes from the cache.
    lines_before = (tmp_path / "run" / "predictions.jsonl").read_text()
    again = evaluate_dream1k(data, model_args, judge_args, progress=False)
    assert again["autodq"]["calls"]["requests"] == 0
    assert again["scores"] == results["scores"]
    after = (tmp_path / "run" / "predictions.jsonl").read_text()
    assert after.startswith(lines_before) and after.count('"prediction"') == lines_before.count('"prediction"')


def test_dream1k_annotations_from_a_dataset_folder(dream_subset, tmp_path):
    """`--annotations` may be a dataset id or folder: the same records come back through `datasets`."""
    from tarsier_hf.eval.dream1k import build_requests, load_annotations

    annotations, videos, picked = dream_subset
    folder = tmp_path / "dream1k_dataset"
    folder.mkdir()
    (folder / "test.jsonl").write_text(annotations.read_text())
    records = load_annotations(str(folder), split="test")
    assert [r["idx"] for r in records] == [r["idx"] for r in picked]
    assert records[0]["extra_info"]["events"] == picked[0]["extra_info"]["events"]
    requests, missing = build_requests(records, str(videos), "Describe the video in detail.")
    assert [m["id"] for m in missing] == [str(picked[2]["idx"])] and len(requests) == 3
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_annotations(str(tmp_path / "nope.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"idx": 1, "dataset": "DREAM/stock"}) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl: record 0 .*lacks"):
        load_annotations(bad)


# ------------------------------------------------------------------------------------------------------------
# Public benchmarks: multiple-choice, open-ended QA (served judge) and captioning (CIDEr module)
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def loaded_tiny(tiny_checkpoint):
    from tarsier_hf.inference.engine import load_model_and_processor

    return load_model_and_processor(tiny_checkpoint)


@pytest.fixture(scope="module")
def benchmark_videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench_videos")
    write_stand_in_videos(folder, ["v1", "v2", "v3"], seed=5)
    return folder


def _model_args(tiny_checkpoint, **overrides):
    from tarsier_hf.eval.common import ModelArguments

    return ModelArguments(checkpoint=str(tiny_checkpoint), max_new_tokens=6, batch_size=2, **overrides)


def test_mcqa_runner_counts_unparsable_answers_wrong(tiny_checkpoint, loaded_tiny, benchmark_videos, tmp_path):
    from tarsier_hf.eval.mcqa import MCQAArguments, evaluate_mcqa

    (tmp_path / "object_interaction.json").write_text(json.dumps([
        {"video": "v1.mp4", "question": "What did the person take?", "candidates": ["the cup", "the book"], "answer": "the cup"},
        {"video": "v2.mp4", "question": "What happens next?", "candidates": ["sits", "runs", "waves"], "answer": "waves"},
    ]))
    data = MCQAArguments(format="mvbench", annotations=str(tmp_path / "object_interaction.json"),
                         videos=str(benchmark_videos), output_dir=str(tmp_path / "run"))
    model, processor = loaded_tiny
    results = evaluate_mcqa(data, _model_args(tiny_checkpoint), model=model, processor=processor, progress=False)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["total"] == 2 and saved["frames"] == 8 and saved["unparsable_policy"] == "counted wrong"
    assert saved["correct"] + saved["unparsable"] <= 2 and saved["accuracy"] == saved["correct"] / 2
    assert "(B) the book" in saved["prompt"]["example"] and saved["run"]["generation"]["max_new_tokens"] == 6
    assert saved["per_task"]["object_interaction"]["total"] == 2 and results["samples"][0]["id"] == "object_interaction/0"


def test_captioning_runner_scores_with_the_cider_module(tiny_checkpoint, loaded_tiny, benchmark_videos, tmp_path):
    from tarsier_hf.eval.captioning import CaptioningArguments, evaluate_captioning, load_references

    (tmp_path / "vatex.json").write_text(json.dumps([
        {"videoID": "v1", "enCap": ["a man is walking", "someone walks on a road"]},
        {"videoID": "v2", "enCap": ["a dog runs in a park"]},
        {"videoID": "v3", "enCap": ["a woman cooks food", "a person is cooking"]},
    ]))
    data = CaptioningArguments(format="vatex", annotations=str(tmp_path / "vatex.json"), videos=str(benchmark_videos),
                               output_dir=str(tmp_path / "run"))
    model, processor = loaded_tiny
    evaluate_captioning(data, _model_args(tiny_checkpoint), model=model, processor=processor, progress=False)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["n"] == saved["n_predictions"] == 3 and saved["cider"] >= 0.0
    assert len(saved["samples"]) == 3 and all(s["cider"] >= 0.0 for s in saved["samples"])
    assert saved["prompt"] == "Describe the video in one sentence." and saved["frames"] == 8

    (tmp_path / "msrvtt.json").write_text(json.dumps({
        "videos": [{"video_id": "video7010", "split": "test"}, {"video_id": "video1", "split": "train"}],
        "sentences": [{"video_id": "video7010", "caption": "a man talks"}, {"video_id": "video1", "caption": "x"}],
    }))
    assert load_references("msrvtt", str(tmp_path / "msrvtt.json")) == {"video7010": ["a man talks"]}
    (tmp_path / "AllVideoDescriptions.txt").write_text("# header\n-4wsuPCjDBc_5_15 a squirrel is eating\n-4wsuPCjDBc_5_15 a squirrel eats\n")
    assert load_references("msvd", str(tmp_path / "AllVideoDescriptions.txt")) == {
        "-4wsuPCjDBc_5_15": ["a squirrel is eating", "a squirrel eats"]}


@pytest.mark.slow
def test_openqa_with_the_video_chatgpt_judge(tiny_checkpoint, loaded_tiny, benchmark_videos, judge_server, smollm2_dir, tmp_path):
    from tarsier_hf.eval.common import JudgeArguments
    from tarsier_hf.eval.openqa import JUDGE_PROMPT_VERSION, OpenQAArguments, evaluate_openqa

    (tmp_path / "test_qa.json").write_text(json.dumps([
        {"video_id": "v1", "question": "what is the man doing?", "answer": "walking", "id": 0},
        {"video_id": "missing_video", "question": "what is shown?", "answer": "a dog", "id": 1},
    ]))
    data = OpenQAArguments(format="generic", annotations=str(tmp_path / "test_qa.json"), videos=str(benchmark_videos),
                           output_dir=str(tmp_path / "run"))
    judge_args = JudgeArguments(
        judge="openai", judge_model=str(smollm2_dir), judge_base_url=judge_server, judge_endpoint_kind="transformers-serve",
        judge_max_tokens=JUDGE_MAX_TOKENS, judge_max_parse_attempts=1, judge_cache=str(tmp_path / "cache.sqlite"),
        judge_timeout=120,
    )
    model, processor = loaded_tiny
    evaluate_openqa(data, _model_args(tiny_checkpoint), judge_args, model=model, processor=processor, progress=False)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["n"] == 2  # the unreadable video's question stays in the denominator
    assert 0.0 <= saved["accuracy"] <= 0.5 and 0.0 <= saved["score"] <= 2.5
    assert {f["id"] for f in saved["failed"]} >= {"1"}
    assert saved["judge"]["prompt_version"] == JUDGE_PROMPT_VERSION and saved["judge"]["model"] == str(smollm2_dir)
    assert saved["judge"]["max_tokens"] == JUDGE_MAX_TOKENS and saved["unreadable_videos"][0]["id"] == "1"
    answered = saved["samples"][0]
    assert answered["failed"] or ("judge_answer" in answered and 0.0 <= answered["score"] <= 5.0)
