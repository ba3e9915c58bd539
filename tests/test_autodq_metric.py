"""AutoDQ arithmetic and bookkeeping with fixed judge answers, checked against a hand-computed example.

The example follows the paper's Figure 3 video (a person sitting on a yoga mat; six actions). The fixed
answers are written the way real judges write them (code fences, single quotes, reordered items), so the
arithmetic is checked through the real parsing path.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tarsier_hf.eval.autodq.judge import ChatJudge
from tarsier_hf.eval.autodq.judge_cache import JudgeCache, JudgeSettings
from tarsier_hf.eval.autodq.pipeline import make_samples, run_autodq
from tarsier_hf.eval.autodq.scoring import get_config

REPO = Path(__file__).resolve().parents[1]

REF = (
    "A person sitting on a yoga mat puts on headphones. The person picks up a glass of orange juice, drinks "
    "from it and puts it down. The person rubs their hands together and then clasps them."
)
REF_EVENTS = [
    "The person puts on headphones.",
    "The person picks up a glass.",
    "The person drinks orange juice.",
    "The person puts down the glass.",
    "The person rubs hands together.",
    "The person clasps hands.",
]
# Figure 3, Tarsier-34B
PRED_TARSIER = (
    "A person is sitting on a yoga mat on a wooden floor. The person puts on headphones, then picks up the glass "
    "of orange juice, takes a sip, and puts it back down. Finally, the person clasps their hands together."
)
# Figure 3, GPT-4V (shortened)
PRED_GPT4V = (
    "Initially, the person is tying their hair. Then they put on the headphones, pick up the bottle, unscrew "
    "the cap, and take a drink."
)
REF_3 = "A dog runs to the door. The dog barks."
PRED_3 = "A dog walks to the door. The dog barks at a cat. A cat jumps. The dog sleeps."

E = "entailment"
N = "neutral"
C = "contradiction"

# prediction events per description (the extraction step), and labels per (premise, events) (the entailment step)
EXTRACTED = {
    PRED_TARSIER: ["The person puts on headphones.", "The person picks up the glass.", "The person takes a sip.",
                   "The person puts the glass down.", "The person clasps hands."],
    PRED_GPT4V: ["The person ties hair.", "The person puts on headphones.", "The person picks up the bottle.",
                 "The person unscrews the cap.", "The person takes a drink."],
    PRED_3: ["A dog walks to the door.", "The dog barks at a cat.", "A cat jumps.", "The dog sleeps."],
    REF_3: ["A dog runs to the door.", "The dog barks."],
}
LABELS = {
    (PRED_TARSIER, tuple(REF_EVENTS)): [E, E, E, E, N, E],  # recall 5/6
    (REF, tuple(EXTRACTED[PRED_TARSIER])): [E, E, E, E, E],  # precision 5/5
    (PRED_GPT4V, tuple(REF_EVENTS)): [E, E, E, N, N, N],  # recall 3/6
    (REF, tuple(EXTRACTED[PRED_GPT4V])): [N, E, E, N, E],  # precision 3/5
    (PRED_3, tuple(EXTRACTED[REF_3])): [C, E],  # recall 1/2
    (REF_3, tuple(EXTRACTED[PRED_3])): [C, E, N, N],  # precision 1/4
}


def _norm(text):
    """The official preset lower-cases descriptions (and turns " into '); look answers up either way."""
    return text.lower().replace('"', "'")


EXTRACTED_N = {_norm(k): v for k, v in EXTRACTED.items()}
LABELS_N = {(_norm(k[0]), k[1]): v for k, v in LABELS.items()}


def _between(text, start, end):
    i = text.index(start) + len(start)
    return text[i : text.index(end, i)]


class FixedAnswerJudge(ChatJudge):
    """Answers AutoDQ prompts from the tables above, in the messy formats real judges use.

    `broken` descriptions always get prose instead of JSON; `label_for_seed` lets an answer depend on the seed.
    """

    def __init__(self, cache=None, seed=1234, temperature=0.0, max_tokens=1024, broken=(), seed_flips=None):
        settings = JudgeSettings("gpt-3.5-turbo-0125", "test", temperature, seed, max_tokens)
        super().__init__(settings, cache, max_attempts=1)
        self.broken = {_norm(b) for b in broken}
        self.seed_flips = {(_norm(k[0]), k[1]): v for k, v in (seed_flips or {}).items()}
        self.prompts_seen = []

    def _complete(self, messages, settings):
        prompt = messages[0]["content"]
        self.prompts_seen.append((prompt, settings.seed))
        if "Extract at most 10 key events" in prompt:
            description = _between(prompt, "Below is a description of a video clip:\n\n", "\n\nExtract at most")
            if _norm(description) in self.broken:
                return "These are the events of the video, described in words."
            return "```python\n" + str({"events": EXTRACTED_N[_norm(description)]}) + "\n```"
        premise = _between(prompt, "Video description:\n\n", "\n\nEvents:\n\n")
        events = json.loads(_between(prompt, "\n\nEvents:\n\n", "\n\nDO NOT PROVIDE"))
        if _norm(premise) in self.broken:
            return "I think most events are entailed."
        labels = list(LABELS_N[(_norm(premise), tuple(events))])
        for index in self.seed_flips.get((_norm(premise), settings.seed), ()):
            labels[index] = N if labels[index] == E else E
        items = [{"event": ev.lower(), "relationship": lab.capitalize(), "reason": "..."} for ev, lab in zip(events, labels)]
        return "Output:\n" + json.dumps(items[::-1]) + "\nThese are my judgements."  # reversed order, prose around


def _samples():
    return make_samples(
        predictions=[PRED_TARSIER, PRED_GPT4V, PRED_3],
        references=[REF, REF, REF_3],
        reference_events=[REF_EVENTS, REF_EVENTS, None],  # the third reference's events are extracted
        categories=["live_action", "live_action", "stock"],
        n_events=[6, 6, None],
        n_subjects=[1, 1, 2],
        n_shots=[1, 1, 1],
    )


def f1(r, p):
    return 2 * r * p / (r + p)


def test_hand_computed_example(tmp_path):
    judge = FixedAnswerJudge(cache=JudgeCache(tmp_path / "cache.sqlite"))
    result = run_autodq(_samples(), judge, get_config("robust"), concurrency=2, bootstrap=0)

    per_sample = [value for s in result["samples"] for value in (s["recall"], s["precision"])]
    assert per_sample == pytest.approx([5 / 6, 1.0, 3 / 6, 3 / 5, 1 / 2, 1 / 4])  # (recall, precision) per sample
    assert result["samples"][0]["f1"] == pytest.approx(10 / 11)
    assert result["samples"][1]["f1"] == pytest.approx(6 / 11)
    assert [s["reference_events_source"] for s in result["samples"]] == ["data", "data", "extracted"]
    assert result["samples"][2]["reference_events"] == EXTRACTED[REF_3]
    assert result["samples"][1]["precision_labels"] == [N, E, E, N, E]  # reversed answer matched back

    micro_r, micro_p = (5 / 6 + 1 / 2 + 1 / 2) / 3, (1 + 3 / 5 + 1 / 4) / 3
    assert result["micro"]["recall"] == pytest.approx(micro_r)
    assert result["micro"]["precision"] == pytest.approx(micro_p)
    assert result["micro"]["f1"] == pytest.approx(f1(micro_r, micro_p))
    # macro: live_action R = 2/3, P = 4/5; stock R = 1/2, P = 1/4; then the mean over the two categories
    macro_r, macro_p = (2 / 3 + 1 / 2) / 2, (4 / 5 + 1 / 4) / 2
    assert result["macro"]["per_category"]["live_action"]["recall"] == pytest.approx(2 / 3)
    assert result["macro"]["recall"] == pytest.approx(macro_r)
    assert result["macro"]["precision"] == pytest.approx(macro_p)
    assert result["f1"] == pytest.approx(f1(macro_r, macro_p)) and result["headline"] == "macro"
    # breakdowns: sample 3 has no n_events given, so its bucket comes from its 2 extracted reference events
    assert result["breakdowns"]["events"]["6-7"]["n"] == 2
    assert result["breakdowns"]["events"]["<=3"]["recall"] == pytest.approx(1 / 2)
    assert result["breakdowns"]["subjects"]["2"]["precision"] == pytest.approx(1 / 4)
    assert result["breakdowns"]["shots"]["<=1"]["f1"] == pytest.approx(f1(micro_r, micro_p))

    assert result["judge"] == {"model": "gpt-3.5-turbo-0125", "endpoint_kind": "test", "temperature": 0.0,
                               "seed": 1234, "max_tokens": 1024, "base_url": None, "prompt_version": "tarsier-paper-v1"}
    # 3 prediction extractions + 1 reference extraction + 6 entailment calls
    assert result["calls"] == {"requests": 10, "completed": 10, "cache_hits": 0, "failed_calls": 0}

    again = run_autodq(_samples(), FixedAnswerJudge(cache=JudgeCache(tmp_path / "cache.sqlite")), get_config("robust"), bootstrap=0)
    assert again["calls"] == {"requests": 0, "completed": 0, "cache_hits": 10, "failed_calls": 0}
    assert again["samples"] == result["samples"]


def test_failed_samples_robust_counts_zero_official_drops(tmp_path):
    samples = _samples()
    robust = run_autodq(samples, FixedAnswerJudge(broken={PRED_GPT4V}), get_config("robust"), bootstrap=0)
    assert robust["n_failed"] == 1 and robust["failed"][0]["index"] == 1
    assert "ParseError" in robust["failed"][0]["error"]
    failed = robust["samples"][1]
    assert failed["failed"] and failed["recall"] == failed["precision"] == 0.0
    r, p = (5 / 6 + 0 + 1 / 2) / 3, (1 + 0 + 1 / 4) / 3
    assert robust["micro"]["f1"] == pytest.approx(f1(r, p))
    assert robust["macro"]["per_category"]["live_action"]["n_failed"] == 1

    # The official failure policy (drop, 10 re-asks, judge defaults) on this judge's paper-prompt answers; the
    # official prompts and parsing themselves are pinned in test_autodq_official.py.
    official_policy = get_config("official", prompt_version="tarsier-paper-v1", protocol="robust")
    judge = FixedAnswerJudge(broken={PRED_GPT4V}, seed=None, temperature=None, max_tokens=None)
    official = run_autodq(samples, judge, official_policy, bootstrap=0)
    assert official["n_failed"] == 1 and official["samples"][1]["recall"] is None
    assert official["micro"]["n"] == 2
    assert official["micro"]["recall"] == pytest.approx((5 / 6 + 1 / 2) / 2)
    assert official["macro"]["recall"] == pytest.approx((5 / 6 + 1 / 2) / 2)  # one sample left per category
    assert official["judge"]["temperature"] is None and official["judge"]["seed"] is None
    assert official["preset_mismatch"] == {} and robust["preset_mismatch"] == {}
    mismatched = run_autodq(samples, FixedAnswerJudge(), official_policy, bootstrap=0)
    assert mismatched["preset_mismatch"] == {"temperature": {"judge": 0.0, "preset": None},
                                             "seed": {"judge": 1234, "preset": None},
                                             "max_tokens": {"judge": 1024, "preset": None}}
    # the released evaluator re-asks up to 10 times before giving up on a sample
    broken_calls = [p for p, _ in judge.prompts_seen if PRED_GPT4V in p]
    assert len(broken_calls) == 10


def test_repeats_report_mean_std_and_bootstrap(tmp_path):
    # with seed 2234 (repeat 1) the judge flips the first recall label of sample 1: recall 5/6 -> 4/6
    flips = {(PRED_TARSIER, 2234): [0]}
    result = run_autodq(_samples(), FixedAnswerJudge(seed_flips=flips), get_config("robust"), repeats=3, bootstrap=300)
    assert result["repeats"]["seeds"] == [1234, 2234, 3234]
    r0 = (5 / 6 + 1 / 2 + 1 / 2) / 3
    r1 = (4 / 6 + 1 / 2 + 1 / 2) / 3
    values = result["repeats"]["micro_recall"]["values"]
    assert values == pytest.approx([r0, r1, r0])
    mean = (2 * r0 + r1) / 3
    assert result["repeats"]["micro_recall"]["mean"] == pytest.approx(mean)
    std = math.sqrt(((r0 - mean) ** 2 * 2 + (r1 - mean) ** 2) / 2)
    assert result["repeats"]["micro_recall"]["std"] == pytest.approx(std)
    assert len(result["samples"]) == 9 and {s["repeat"] for s in result["samples"]} == {0, 1, 2}
    assert result["runs"] is not None and len(result["runs"]) == 3
    ci = result["bootstrap_ci"]
    assert ci["n_videos"] == 3 and ci["n_resamples"] == 300
    for name in ("recall", "precision", "f1", "macro_f1"):
        assert 0.0 <= ci[name]["low"] <= ci[name]["high"] <= 1.0
    # stratified bootstrap keeps one video per category in "stock": its recall is always 1/2 there
    assert ci["recall"]["low"] <= mean <= ci["recall"]["high"]


def test_cache_file_that_is_not_sqlite_is_named(tmp_path):
    bad = tmp_path / "cache.sqlite"
    bad.write_text("this is not a database " * 100)
    with pytest.raises(ValueError, match="cache.sqlite: not a usable judge cache"):
        JudgeCache(bad)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="reference_events has 1 entries"):
        make_samples(["a", "b"], ["c", "d"], reference_events=[["x"]])
    with pytest.raises(ValueError, match=r"predictions\[1\]"):
        make_samples(["a", None], ["c", "d"])
    with pytest.raises(ValueError, match=r"n_shots\[0\]"):
        make_samples(["a"], ["c"], n_shots=["two"])
    with pytest.raises(ValueError, match="preset='fast'"):
        get_config("fast")


_LOAD_SCRIPT = """
import json, os, sys
import evaluate
from tests.fault_server import FaultServer
out = {{}}
with FaultServer() as server:
    # by folder and by file (as the Space's app.py does) from an unrelated folder, then by bare name inside eval/
    for where, ref in (("path", {path!r}), ("file", {path!r} + "/autodq.py"), ("name", "autodq")):
        if where == "name":
            os.chdir({eval_dir!r})
        metric = evaluate.load(ref)
        r = metric.compute(predictions=["A man runs. A dog sits."], references=["A man runs. A cat jumps."],
                           categories=["stock"], judge="openai", base_url=server.base_url, judge_model="rule-judge",
                           cache_path=False, bootstrap=0, concurrency=1)
        out[where] = {{"name": metric.name, "f1": r["f1"], "recall": r["recall"], "judge": r["judge"],
                      "preset": r["preset"], "module": type(metric).__module__}}
    # a judge object built from the package (not from evaluate's copy) whose calls keep failing
    from tarsier_hf.eval.autodq.openai_judge import OpenAIChatJudge
with FaultServer(always="500") as server:
    judge = OpenAIChatJudge("rule-judge", base_url=server.base_url, max_attempts=2)
    r = metric.compute(predictions=["A man runs."], references=["A man runs."], judge=judge, bootstrap=0)
    out["package_judge"] = {{"n_failed": r["n_failed"], "error": r["failed"][0]["error"], "f1": r["f1"]}}
print(json.dumps(out))
"""


def test_evaluate_load_offline(tmp_path):
    """`evaluate.load` by path from anywhere and by name from inside eval/, offline; relative imports are copied."""
    env = {**os.environ, "HF_EVALUATE_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    env["PYTHONPATH"] = str(REPO)
    script = _LOAD_SCRIPT.format(path=str(REPO / "eval" / "autodq"), eval_dir=str(REPO / "eval"))
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    failing = results.pop("package_judge")
    assert failing["n_failed"] == 1 and failing["f1"] == 0.0 and "JudgeCallError" in failing["error"]
    assert set(results) == {"path", "file", "name"}
    for out in results.values():
        assert out["name"] == "autodq" and out["preset"] == "robust"
        assert out["module"].startswith("evaluate_modules.")  # the copy in evaluate's module cache ran
        # rule judge: "A man runs." entailed, "A cat jumps." not; prediction "A dog sits." not entailed
        assert out["recall"] == pytest.approx(0.5) and out["f1"] == pytest.approx(0.5)
        assert out["judge"]["model"] == "rule-judge" and out["judge"]["prompt_version"] == "tarsier-paper-v1"
