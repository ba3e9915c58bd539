"""AutoDQ with a real LLM judge (SmolLM2-135M-Instruct) on DREAM-1K samples: through `transformers serve` over
HTTP (the `evaluate` module end to end) and in process. The small model's judgement is not asserted, only the
structure and invariants every AutoDQ result must satisfy."""

import json
from pathlib import Path

import pytest

from tarsier_hf.eval.autodq.parsing import INVALID, LABELS, MISSING

REPO = Path(__file__).resolve().parents[1]
MAX_TOKENS = 48  # short answers keep the suite fast; truncated answers exercise the parser
N_SAMPLES = 2


@pytest.fixture(scope="module")
def dream_samples(dream1k_path):
    """Two DREAM-1K samples from different categories; each prediction is another video's reference."""
    with open(dream1k_path) as f:
        records = [json.loads(line) for line in f]
    picked = [records[4], records[204]]  # movie_animation, movie_live_action
    predictions = [records[5]["text"]["response"], picked[1]["text"]["response"]]
    return picked, predictions


def _check_invariants(result, n_samples):
    assert len(result["samples"]) == n_samples
    for s in result["samples"]:
        for key in ("recall", "precision", "f1"):
            assert s[key] is not None and 0.0 <= s[key] <= 1.0
        assert len(s["prediction_events"]) <= 10
        assert s["reference_events_source"] == "data"
        if s["failed"]:
            assert s["error"] and s["recall"] == s["precision"] == 0.0  # robust: counted as 0 and reported
            continue
        assert len(s["recall_labels"]) == len(s["reference_events"])
        assert len(s["precision_labels"]) == len(s["prediction_events"])
        assert set(s["recall_labels"] + s["precision_labels"]) <= set(LABELS) | {MISSING, INVALID}
        assert s["recall"] == pytest.approx(s["recall_labels"].count("entailment") / len(s["recall_labels"]))
    assert result["n_failed"] == sum(s["failed"] for s in result["samples"])
    for block in (result["micro"], result["macro"]):
        for key in ("recall", "precision", "f1"):
            assert 0.0 <= block[key] <= 1.0
    assert set(result["macro"]["per_category"]) == {"DREAM/movie_animation", "DREAM/movie_live_action"}
    assert result["calls"]["completed"] >= 1  # real answers came back from the model


@pytest.mark.slow
def test_http_judge_through_evaluate(judge_server, smollm2_dir, dream_samples, tmp_path):
    import evaluate

    records, predictions = dream_samples
    metric = evaluate.load(str(REPO / "eval" / "autodq"))
    kwargs = dict(
        predictions=predictions,
        references=[r["text"]["response"] for r in records],
        reference_events=[r["extra_info"]["events"] for r in records],
        categories=[r["dataset"] for r in records],
        n_subjects=[r["extra_info"]["n_subjects"] for r in records],
        n_shots=[r["extra_info"]["n_shots"] for r in records],
        judge="openai", base_url=judge_server, judge_model=str(smollm2_dir), endpoint_kind="transformers-serve",
        max_tokens=MAX_TOKENS, max_parse_attempts=1, cache_path=str(tmp_path / "cache.sqlite"),
        concurrency=2, bootstrap=50, timeout=120,
    )
    result = metric.compute(**kwargs)
    _check_invariants(result, N_SAMPLES)
    assert result["judge"] == {
        "model": str(smollm2_dir), "endpoint_kind": "transformers-serve", "temperature": 0.0, "seed": 1234,
        "max_tokens": MAX_TOKENS, "base_url": judge_server, "prompt_version": "tarsier-paper-v1",
    }
    assert result["preset"] == "robust" and result["headline"] == "macro"
    assert set(result["breakdowns"]) == {"events", "subjects", "shots"}

    again = metric.compute(**kwargs)  # same settings: everything comes from the cache
    assert again["calls"]["requests"] == 0 and again["calls"]["cache_hits"] == result["calls"]["completed"]
    assert again["samples"] == result["samples"]


@pytest.mark.slow
def test_in_process_transformers_judge(smollm2_dir, dream_samples, tmp_path, request):
    from tarsier_hf.eval.autodq.judge_cache import JudgeCache
    from tarsier_hf.eval.autodq.transformers_judge import TransformersChatJudge
    from tarsier_hf.eval.autodq.pipeline import run_autodq, samples_from_dream1k
    from tarsier_hf.eval.autodq.scoring import get_config

    import torch

    records, predictions = dream_samples
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see judge_server: the default thread pool oversubscribes a small shared machine
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    judge = TransformersChatJudge(smollm2_dir, max_tokens=MAX_TOKENS, cache=JudgeCache(tmp_path / "c.sqlite"))
    config = get_config("robust", max_tokens=MAX_TOKENS, max_parse_attempts=1)
    result = run_autodq(samples_from_dream1k(records, predictions), judge, config, concurrency=2, bootstrap=50)
    _check_invariants(result, N_SAMPLES)
    assert result["judge"]["endpoint_kind"] == "transformers" and result["judge"]["model"] == str(smollm2_dir)
    assert result["judge"]["max_tokens"] == MAX_TOKENS and result["judge"]["seed"] == 1234
    assert result["preset_mismatch"] == {"model": {"judge": str(smollm2_dir), "preset": "gpt-3.5-turbo-0125"}}
    assert result["calls"]["requests"] == result["calls"]["completed"]  # in process: nothing transient fails
