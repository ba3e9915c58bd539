"""AutoDQ judge under faults: a real HTTP server on 127.0.0.1 that answers 429, 500, garbage, slowly, a byte at a
time or not at all; retries, total deadlines, failure records, the cache key, and a run killed with SIGKILL that
resumes from the cache."""

import collections
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tarsier_hf.eval.autodq.judge import JudgeCallError
from tarsier_hf.eval.autodq.judge_cache import JudgeCache
from tarsier_hf.eval.autodq.openai_judge import OpenAIChatJudge
from tarsier_hf.eval.autodq.pipeline import run_autodq, samples_from_dream1k
from tarsier_hf.eval.autodq.prompts import get_prompts
from tarsier_hf.eval.autodq.scoring import get_config

from tests.fault_server import FaultServer, rule_based_answer

REPO = Path(__file__).resolve().parents[1]


def _judge(server, cache=None, attempts=4, timeout=0.5):
    return OpenAIChatJudge(
        "rule-judge", base_url=server.base_url, endpoint_kind="fault-server", timeout=timeout, cache=cache,
        max_attempts=attempts,
    )


def _dream(dream1k_path, n):
    with open(dream1k_path) as f:
        records = [json.loads(next(f)) for _ in range(n)]
    # predictions: the reference's first sentence plus one invented event
    predictions = [r["text"]["response"].split(".")[0] + ". A dog barks at the camera." for r in records]
    return records, predictions


@pytest.mark.parametrize("fault", ["429", "500", "garbage", "slow", "drop"])
def test_transient_faults_are_retried(fault):
    messages = get_prompts().extraction_messages("A man runs. A dog sits.")
    with FaultServer(script=[fault, fault], slow_seconds=1.5) as server:
        judge = _judge(server)
        answer = judge.chat(messages)
        assert answer == rule_based_answer(messages[0]["content"])
        # the same request three times: two faults, then the answer
        assert [f for _, f, _ in server.log] == [fault, fault, "ok"]
        assert len({key for _, _, key in server.log}) == 1
    assert judge.stats.requests == 3 and judge.stats.completed == 1 and judge.stats.failed_calls == 0


def test_a_failing_model_list_is_judged_by_one_chat_request():
    """`transformers serve` answers 500 on /v1/models on a machine without a Hub cache folder, yet judges: the
    preflight then asks for one token and passes; an endpoint whose chat fails too is refused."""
    from tarsier_hf.eval.autodq.judge import JudgeUnavailableError

    with FaultServer(models_status=500) as server:
        note = _judge(server).check(seconds=5)
        assert "model list failed with HTTP 500" in note and len(server.log) == 1
    with FaultServer(models_status=500, always="500") as server:
        with pytest.raises(JudgeUnavailableError, match=r"failed \(HTTP 500\)"):
            _judge(server).check(seconds=5)
        assert len(server.log) == 1
    with FaultServer(models_status=404) as server:  # no /models at all: passes without a request
        assert "lists no models" in _judge(server).check(seconds=5) and server.log == []


def test_client_errors_are_not_retried():
    with FaultServer(script=["400"]) as server:
        judge = _judge(server)
        with pytest.raises(JudgeCallError) as info:
            judge.chat(get_prompts().extraction_messages("A man runs."))
        assert len(server.log) == 1 and len(info.value.errors) == 1
        assert info.value.errors[0].startswith("HTTP 400 Bad Request") and "unknown model" in info.value.errors[0]
    assert judge.stats.failed_calls == 1


@pytest.mark.parametrize("fault", ["drip", "drip_headers"])
def test_a_trickling_server_cannot_hold_a_call(fault):
    """Headers then one byte every 2 s (or the headers themselves that slowly): each read is within the 3 s
    timeout, so only a total deadline per request ends it. Two attempts: about 2 x 3 s + the client's backoff."""
    timeout, attempts = 3.0, 2
    outcome = {}

    def call():
        start = time.monotonic()
        try:
            judge.chat(get_prompts().extraction_messages("A man runs."))
        except JudgeCallError as error:
            outcome["error"] = error
        outcome["seconds"] = time.monotonic() - start

    with FaultServer(always=fault, drip_seconds=2.0) as server:
        judge = _judge(server, attempts=attempts, timeout=timeout)
        worker = threading.Thread(target=call, daemon=True)
        worker.start()
        worker.join(3 * timeout + 8)  # the bound: attempts x timeout + one backoff (<= 8 s) + slack
        assert not worker.is_alive(), f"the judge call is still waiting after {3 * timeout + 8} s"
    assert attempts * timeout <= outcome["seconds"] < 3 * timeout
    assert len(server.log) == attempts
    assert outcome["error"].errors == [f"ReadTimeout: timed out: no complete answer within {timeout:g} s (total "
                                       "deadline of one request)"] * attempts
    assert judge.stats.failed_calls == 1 and judge.stats.requests == attempts


def test_cache_key_includes_the_endpoint(tmp_path):
    """The same model name behind another endpoint is another judge: a dead port must not answer from the cache."""
    messages = get_prompts().extraction_messages("A man runs. A dog sits.")
    cache = JudgeCache(tmp_path / "c.sqlite")
    with FaultServer() as server:
        assert _judge(server, cache=cache).chat(messages) == rule_based_answer(messages[0]["content"])
        with FaultServer() as stopped:
            dead_url = stopped.base_url  # closed on exit: nothing answers there any more
        other = OpenAIChatJudge("rule-judge", base_url=dead_url, endpoint_kind="fault-server", timeout=0.5,
                                cache=cache, max_attempts=1)
        with pytest.raises(JudgeCallError, match="ConnectError"):
            other.chat(messages)
        assert other.stats.cache_hits == 0 and len(cache) == 1
        same = OpenAIChatJudge("rule-judge", base_url=server.base_url + "/", endpoint_kind="fault-server",
                               cache=cache, max_attempts=1)
        assert same.chat(messages) == rule_based_answer(messages[0]["content"]) and same.stats.cache_hits == 1
        kind = OpenAIChatJudge("rule-judge", base_url=server.base_url, endpoint_kind="vllm", cache=cache)
        kind.chat(messages)
        assert kind.stats.cache_hits == 0 and len(cache) == 2


def test_persistent_failure_is_recorded_not_dropped(dream1k_path, tmp_path):
    records, predictions = _dream(dream1k_path, 2)
    samples = samples_from_dream1k(records, predictions)
    with FaultServer(always="500") as server:
        judge = _judge(server, cache=JudgeCache(tmp_path / "c.sqlite"), attempts=3)
        with pytest.raises(JudgeCallError) as info:
            judge.chat(get_prompts().extraction_messages("A man runs."))
        assert len(server.log) == 3  # 1 request + the openai client's 2 retries
        assert len(info.value.errors) == 3 and all(e.startswith("HTTP 500 Internal Server Error") for e in info.value.errors)

        robust = run_autodq(samples, judge, get_config("robust"), concurrency=1, bootstrap=0)
        assert robust["n_failed"] == 2 and robust["f1"] == 0.0
        assert [f["index"] for f in robust["failed"]] == [0, 1]
        assert all("failed after 3 attempt(s)" in f["error"] for f in robust["failed"])
        assert robust["calls"]["failed_calls"] == 2 and robust["calls"]["requests"] == 6

        official = run_autodq(samples, judge, get_config("official"), concurrency=1, bootstrap=0)
        assert official["n_failed"] == 2 and official["micro"]["n"] == 0 and official["f1"] is None
    assert len(JudgeCache(tmp_path / "c.sqlite")) == 0  # failures are never cached as answers


def test_unparsable_answer_is_asked_again_with_another_seed(tmp_path):
    from tarsier_hf.eval.autodq.scoring import Sample

    sample = Sample(0, "A man runs. A dog sits.", "A man runs. A cat jumps.", ["A man runs.", "A cat jumps."])
    with FaultServer(script=["garbage_answer"]) as server:
        judge = _judge(server, cache=JudgeCache(tmp_path / "c.sqlite"))
        result = run_autodq([sample], judge, get_config("robust"), concurrency=1, bootstrap=0)
        assert result["n_failed"] == 0
        assert result["samples"][0]["prediction_events"] == ["A man runs.", "A dog sits."]
        assert result["calls"] == {"requests": 4, "completed": 4, "cache_hits": 0, "failed_calls": 0}
        first, second = server.log[0][2], server.log[1][2]
        assert first != second  # the re-ask is a different request (seed + 1, retry temperature)
        again = run_autodq([sample], _judge(server, cache=JudgeCache(tmp_path / "c.sqlite")), get_config("robust"), bootstrap=0)
        assert again["calls"]["requests"] == 0 and again["samples"] == result["samples"]


_CLIENT = """
import json, sys
from tarsier_hf.eval.autodq.openai_judge import OpenAIChatJudge
from tarsier_hf.eval.autodq.pipeline import run_autodq, samples_from_dream1k
from tarsier_hf.eval.autodq.scoring import get_config
base_url, cache, out, n, concurrency = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
with open({dream!r}) as f:
    records = [json.loads(next(f)) for _ in range(n)]
predictions = [r["text"]["response"].split(".")[0] + ". A dog barks at the camera." for r in records]
judge = OpenAIChatJudge("rule-judge", base_url=base_url, endpoint_kind="fault-server", timeout=5, cache=cache,
                        max_attempts=3)
sys.stdin.readline()  # wait until the test is ready to kill us
result = run_autodq(samples_from_dream1k(records, predictions), judge, get_config("robust"),
                    concurrency=concurrency, bootstrap=200)
with open(out, "w") as f:
    json.dump(result, f)
"""


def _client(server, dream1k_path, cache, out, n, concurrency):
    script = _CLIENT.format(dream=str(dream1k_path))
    proc = subprocess.Popen(
        [sys.executable, "-c", script, server.base_url, str(cache), str(out), str(n), str(concurrency)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    return proc


def _comparable(result):
    return {k: result[k] for k in ("recall", "precision", "f1", "micro", "macro", "breakdowns", "samples", "n_failed", "bootstrap_ci")}


@pytest.mark.slow
def test_sigkill_midway_resumes_without_repeating_completed_calls(dream1k_path, tmp_path):
    n = 6  # 6 samples with reference events: 1 extraction + 2 entailment calls each = 18 calls
    with FaultServer() as reference_server:
        proc = _client(reference_server, dream1k_path, tmp_path / "ref.sqlite", tmp_path / "ref.json", n, 1)
        _, err = proc.communicate("go\n", timeout=120)
        assert proc.returncode == 0, err[-3000:]
    reference = json.loads((tmp_path / "ref.json").read_text())
    assert reference["calls"]["completed"] == 18

    kill_at = 8
    with FaultServer() as server:
        proc = _client(server, dream1k_path, tmp_path / "run.sqlite", tmp_path / "run.json", n, 1)
        server.kill_at = (proc.pid, kill_at)
        _, err = proc.communicate("go\n", timeout=120)
        assert proc.returncode == -9, err[-3000:]  # really SIGKILLed, mid-way
        assert not (tmp_path / "run.json").exists()
        assert len(JudgeCache(tmp_path / "run.sqlite")) == kill_at - 1  # every answered call was stored

        proc = _client(server, dream1k_path, tmp_path / "run.sqlite", tmp_path / "run.json", n, 3)  # resume, 3 in flight
        _, err = proc.communicate("go\n", timeout=120)
        assert proc.returncode == 0, err[-3000:]
        resumed = json.loads((tmp_path / "run.json").read_text())
        assert resumed["calls"]["cache_hits"] == kill_at - 1
        assert resumed["calls"]["requests"] == 18 - (kill_at - 1)

        answered = collections.Counter(server.answered_ok())
        assert len(answered) == 18 and max(answered.values()) == 1  # no completed call was ever repeated
        assert _comparable(resumed) == _comparable(reference)

        requests_before = len(server.log)
        proc = _client(server, dream1k_path, tmp_path / "run.sqlite", tmp_path / "rerun.json", n, 2)
        _, err = proc.communicate("go\n", timeout=120)
        assert proc.returncode == 0, err[-3000:]
        assert len(server.log) == requests_before  # a re-run makes zero calls
        rerun = json.loads((tmp_path / "rerun.json").read_text())
        assert rerun["calls"]["requests"] == 0 and _comparable(rerun) == _comparable(reference)
