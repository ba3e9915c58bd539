"""`evaluate` habits: loading the modules by path from anywhere, CIDEr's flat references, `evaluate.combine`, and
AutoDQ's judge settings at load time, progress bar, local-judge defaults and fail-fast on a judge that times out.

The judge is a real HTTP server on 127.0.0.1 (`tests/fault_server.py`: a rule-based AutoDQ judge that can also
answer too slowly) reached through the real `openai` client.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
from tests.fault_server import FaultServer

PREDICTIONS = ["A man runs to the door. The man opens the door.", "A dog sits on the grass."]
REFERENCES = ["A man walks to the door. The man opens the door.", "A cat sleeps on the sofa."]


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """A working directory outside the repository (evaluate resolves bare names against it)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_modules_load_by_path_from_any_working_directory_and_cider_takes_flat_references(elsewhere):
    import evaluate

    cider = evaluate.load(str(REPO / "eval" / "cider"))
    nested = cider.compute(predictions=["a dog runs", "a cat sleeps"],
                           references=[["a dog is running"], ["the cat is sleeping"]])
    flat = cider.compute(predictions=["a dog runs", "a cat sleeps"], references=["a dog is running", "the cat is sleeping"])
    assert flat == nested and round(flat["cider"], 3) == 1.736  # the value of the metric card's example
    cider.add_batch(predictions=["a dog runs", "a cat sleeps"], references=["a dog is running", "the cat is sleeping"])
    assert cider.compute()["scores"] == nested["scores"]  # flat references through add_batch too

    autodq = evaluate.load(str(REPO / "eval" / "autodq"), config_name="official")
    assert autodq.config_name == "official"
    with pytest.raises(ValueError, match="config_name='best' is not a preset"):
        evaluate.load(str(REPO / "eval" / "autodq"), config_name="best")


def test_combine_cider_and_autodq_with_judge_settings_given_at_load_time(elsewhere, tmp_path):
    import evaluate

    with FaultServer() as server:
        cider = evaluate.load(str(REPO / "eval" / "cider"))
        autodq = evaluate.load(str(REPO / "eval" / "autodq"), config_name="robust", judge="openai",
                               base_url=server.base_url, judge_model="rule-judge", endpoint_kind="fault-server",
                               cache_path=False, bootstrap=0, progress=False, judge_timeout=30)
        combined = evaluate.combine([cider, autodq])
        result = combined.compute(predictions=PREDICTIONS, references=REFERENCES)
        requests = len(server.log)
    assert set(result) >= {"cider", "f1", "recall", "precision"}
    assert result["n_failed"] == 0 and requests > 0 and 0 < result["f1"] < 1
    assert result["judge"]["model"] == "rule-judge" and result["preset"] == "robust"
    # load-time settings are defaults: compute() arguments win, and unknown ones are named
    with pytest.raises(ValueError, match=r"unknown argument\(s\) \['judges'\]"):
        autodq.compute(predictions=PREDICTIONS, references=REFERENCES, judges="openai")


def test_progress_bar_and_defaults_scaled_for_a_local_judge(capsys):
    import openai

    from tarsier_hf.eval.autodq.pipeline import build_judge, run_autodq
    from tarsier_hf.eval.autodq.scoring import Sample, get_config

    config = get_config("robust")
    hosted = build_judge("openai", config, base_url="https://api.example.invalid/v1", api_key="x", cache_path=False)
    # one total deadline per HTTP request and the attempts, through the openai client's own retries
    assert (hosted.client.timeout, hosted.max_attempts, hosted.client.max_retries) == (openai.Timeout(60.0), 6, 5)
    with FaultServer() as server:
        local = build_judge("openai", config, base_url=server.base_url, judge_model="rule-judge", cache_path=False)
        assert (local.client.timeout, local.max_attempts, local.client.max_retries) == (openai.Timeout(600.0), 2, 1)
        samples = [Sample(i, p, r) for i, (p, r) in enumerate(zip(PREDICTIONS, REFERENCES))]
        result = run_autodq(samples, local, config, bootstrap=0)
    assert result["concurrency"] == 1 and result["n_failed"] == 0
    err = capsys.readouterr().err
    assert "AutoDQ (rule-judge)" in err and "2/2" in err and "failed=0" in err


def test_fails_fast_with_advice_when_the_first_calls_time_out():
    """A judge slower than its timeout: stop after the first wave instead of failing all 40 samples."""
    from tarsier_hf.eval.autodq.openai_judge import OpenAIChatJudge
    from tarsier_hf.eval.autodq.pipeline import JudgeTimeoutError, run_autodq
    from tarsier_hf.eval.autodq.scoring import Sample, get_config

    samples = [Sample(i, f"A man opens door {i}.", f"A man closes door {i}.") for i in range(40)]
    with FaultServer(always="slow", slow_seconds=3.0) as server:
        judge = OpenAIChatJudge("rule-judge", base_url=server.base_url, endpoint_kind="fault-server", timeout=0.3,
                                max_attempts=2)
        start = time.monotonic()
        with pytest.raises(JudgeTimeoutError, match=r"first 2 sample\(s\) all failed.*timed out.*timeout=1200"):
            run_autodq(samples, judge, get_config("robust"), concurrency=2, bootstrap=0, progress=False)
        elapsed = time.monotonic() - start
        sent = len(server.log)
    # 2 in flight x 2 attempts x 0.3 s, plus the requests already sent; all 40 would take 40 x 2 x 0.3 / 2 = 12 s
    assert elapsed < 6 and sent <= 8, (elapsed, sent)

    # fail_fast=False scores anyway and records every failure
    samples = samples[:2]
    with FaultServer(always="slow", slow_seconds=3.0) as server:
        judge = OpenAIChatJudge("rule-judge", base_url=server.base_url, endpoint_kind="fault-server", timeout=0.3,
                                max_attempts=1)
        result = run_autodq(samples, judge, get_config("robust"), concurrency=2, bootstrap=0, progress=False,
                            fail_fast=False)
    assert result["n_failed"] == 2 and all("timed out" in f["error"].lower() for f in result["failed"])
