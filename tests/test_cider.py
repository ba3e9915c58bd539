"""CIDEr-D evaluate module (eval/cider): parity with pycocoevalcap and its Java PTB tokenizer on real captions.

The reference side is the real thing: pycocoevalcap's `PTBTokenizer` (Stanford CoreNLP 3.4.1 through Java)
and its `Cider` scorer, a dev-only dependency (`pip install pycocoevalcap`, Java 17 on PATH).
"""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CIDER_DIR = REPO / "eval" / "cider"


def _require_reference():
    """pycocoevalcap and Java are required test dependencies: fail loudly, never skip."""
    try:
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    except ImportError as err:  # pragma: no cover - environment problem
        pytest.fail(f"the CIDEr parity tests need pycocoevalcap (pip install pycocoevalcap): {err}")
    if shutil.which("java") is None:  # pragma: no cover - environment problem
        pytest.fail("the CIDEr parity tests need a Java runtime on PATH (pycocoevalcap runs Stanford's tokenizer)")
    return PTBTokenizer, Cider


def java_tokenize(captions: list[str]) -> list[str]:
    """pycocoevalcap's own tokenisation (one Java run), captions kept in order as one stream."""
    ptb, _ = _require_reference()
    return ptb().tokenize({0: [{"caption": c} for c in captions]})[0]


@pytest.fixture(scope="module")
def cider_metric():
    import evaluate

    return evaluate.load(str(CIDER_DIR))


@pytest.fixture(scope="module")
def dream_corpus(dream1k_path):
    """DREAM-1K: references = the human description and the human event sentences of every video.

    Predictions are other real captions: for even videos their own events in shuffled order, for odd videos
    the description of another video (so scores span high and near-zero values).
    """
    rows = [json.loads(line) for line in dream1k_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rng = random.Random(0)
    references, predictions = [], []
    for i, row in enumerate(rows):
        events = list(row["extra_info"]["events"])
        references.append([row["text"]["response"], *events])
        if i % 2 == 0 and events:
            rng.shuffle(events)
            predictions.append(" ".join(events))
        else:
            predictions.append(rows[(i * 7 + 3) % len(rows)]["text"]["response"])
    assert sum(map(len, references)) >= 2000
    return predictions, references


@pytest.fixture(scope="module")
def java_reference(dream_corpus):
    """Java tokenisation of both streams and pycocoevalcap's CIDEr-D on it."""
    _, cider_cls = _require_reference()
    predictions, references = dream_corpus
    flat = java_tokenize([r for refs in references for r in refs])
    preds = java_tokenize(predictions)
    gts, start = {}, 0
    for i, refs in enumerate(references):
        gts[i] = flat[start:start + len(refs)]
        start += len(refs)
    res = {i: [p] for i, p in enumerate(preds)}
    score, scores = cider_cls().compute_score(gts, res)
    return {"refs": flat, "preds": preds, "score": float(score), "scores": [float(s) for s in scores]}


@pytest.mark.slow
def test_tokenization_equals_java_on_real_captions(dream_corpus, java_reference):
    from tarsier_hf.eval.cider.ptb_tokenizer import PTBTokenizer

    predictions, references = dream_corpus
    tokenizer = PTBTokenizer()
    ours_refs = tokenizer.tokenize([r for refs in references for r in refs])
    ours_preds = tokenizer.tokenize(predictions)
    assert len(ours_refs) == len(java_reference["refs"]) >= 2000
    mismatches = [(o, j) for o, j in zip(ours_refs, java_reference["refs"]) if o.split(" ") != j.split(" ")]
    assert not mismatches, mismatches[:5]
    assert ours_preds == java_reference["preds"]


@pytest.mark.slow
def test_cider_equals_pycocoevalcap_on_real_captions(cider_metric, dream_corpus, java_reference):
    predictions, references = dream_corpus
    result = cider_metric.compute(predictions=predictions, references=references)
    assert abs(result["cider"] - java_reference["score"]) <= 1e-9
    assert len(result["scores"]) == len(java_reference["scores"])
    worst = max(abs(a - b) for a, b in zip(result["scores"], java_reference["scores"]))
    assert worst <= 1e-9
    # The corpus is not degenerate: both well-matched and unrelated predictions are in it.
    assert max(result["scores"]) > 1.0 and min(result["scores"]) < 0.1
    assert result["document_frequency_source"] == "references" and result["num_documents"] == len(references)


TRICKY = [
    "He said \"hello\" and she said 'bye'.",
    "Don't, won't, can't, shouldn't've, y'all, o'clock, rock 'n' roll.",
    "It's the '90s; I'm gonna wanna gimme lemme gotta go. She cannot stay.",
    "The U.S. Army. The man from the U.S. A boy. Plan B.",
    "The film ends with plan B.",  # its period depends on the next caption ("The ...")
    "The end of the U.S.",
    "Mr. Smith met Dr. Who at 5 p.m. on Jan. 5, 2010 etc. and so on; Smith et al. The paper.",
    "Visit www.example.com or http://foo.org/bar?x=1. Email me at a.b@c.co!",
    "A 1 1/2 inch pipe, 3/4 cup, \u00bd a lemon; call (555) 123-4567.",
    "Wait... what?! Really?? . . . ok -- no, she--left (quickly) [maybe] {sure}.",
    "\u201cCurly quotes\u201d and \u2018single\u2019 ones \u2014 dashes \u2013 too\u2026 it\u2019s",
    "Caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00fcber STRA\u00dfE \u00c5ngstr\u00f6m "
    "\u0130stanbul \u039f\u0394\u039f\u03a3.",
    "Emoji \U0001F600 smile \u2764\ufe0f, \u2605 star and \U0001F468\u200d\U0001F469\u200d\U0001F467 family.",
    "Price: $5.99, \u00a33, \u20ac10, 50\u00a2, \u00a5100; C++ and C# code, #hashtag @user.",
    "A 3-year-old kid's toy; the kids' toys; e-mail co-op x-ray T-shirt; O'Neil and l'amour.",
    "<b>bold</b> text & more &amp; &lt;tag&gt; 'Tis the season, 'twas night.",
    "  leading, trailing and  double  spaces   ",
    "",
    "tab\there, no-break\u00a0space, em\u2003space, zero\u200bwidth, soft\u00adhyphen, bell\u0007.",
    "line one\nline two\r\nline three",
    "He's 6'2\" tall; :) :-( ;) <3 x_x ^_^",
    "\u4f60\u597d\u4e16\u754c \u041f\u0440\u0438\u0432\u0435\u0442 \u0645\u0631\u062d\u0628\u0627 "
    "\u00bfQu\u00e9? \u00a1S\u00ed!",
]


def test_tokenization_equals_java_on_tricky_text():
    from tarsier_hf.eval.cider.ptb_tokenizer import PTBTokenizer

    # Line breaks inside a caption: the Java tool would print extra lines and pycocoevalcap would pair all
    # later captions with the wrong tokens; we treat them as spaces, so compare against the spaced text.
    java = java_tokenize([t.replace("\r\n", " ").replace("\n", " ") for t in TRICKY])
    ours = PTBTokenizer().tokenize(TRICKY)
    for text, o, j in zip(TRICKY, ours, java):
        assert o == j, f"{text!r}: ours {o!r} != java {j!r}"
    # Spot checks of documented PTB behaviour, so a regression is readable without Java.
    assert ours[1].startswith("do n't wo n't ca n't")
    assert "gon na wan na" in ours[2] and "can not" in ours[2]
    assert "-lrb- quickly -rrb-" in ours[9]  # pycocoevalcap's list holds "-LRB-", tokens are lower-cased
    assert "\U0001F600" not in ours[12]  # Java's lexer deletes characters outside the BMP


def test_context_across_captions_follows_java():
    from tarsier_hf.eval.cider.ptb_tokenizer import PTBTokenizer

    # A one-letter "acronym" keeps its period unless the next line starts with one of the lexer's words.
    stream = ["The film ends with plan B.", "The dog barks.", "He chose plan B.", "a dog barks."]
    ours = PTBTokenizer().tokenize(stream)
    assert ours == java_tokenize(stream)
    assert ours[0].endswith("plan b") and ours[2].endswith("plan b.")


def test_hand_computed_example(cider_metric):
    # Two samples with disjoint vocabularies: every n-gram has df = 1, idf = log(2) - log(1); identical
    # candidate and reference give cosine 1 for unigrams and bigrams, 0 for the absent 3- and 4-grams:
    # (1 + 1 + 0 + 0) / 4 * 10 = 5.
    result = cider_metric.compute(predictions=["a b", "c d"], references=[["a b"], ["c d"]])
    assert result["scores"] == pytest.approx([5.0, 5.0], abs=1e-12)
    # Length penalty counts bigrams: "a b c" vs reference "a b" changes unigram/bigram cosines and adds
    # exp(-(2 - 1)^2 / 72) to every order; check against the formula written out.
    result = cider_metric.compute(predictions=["a b c", "x y"], references=[["a b"], ["x y"]])
    idf = math.log(2.0)
    cos1 = (2 * idf * idf) / (math.sqrt(3 * idf ** 2) * math.sqrt(2 * idf ** 2))
    cos2 = (idf * idf) / (math.sqrt(2 * idf ** 2) * math.sqrt(idf ** 2))
    expected = (cos1 + cos2) * math.exp(-1 / 72) / 4 * 10
    assert result["scores"][0] == pytest.approx(expected, abs=1e-12)


def test_single_sample_scores_zero_without_saved_frequencies(cider_metric):
    # As in coco-caption: N = 1 makes every idf log(1) - log(1) = 0, even for a perfect match.
    result = cider_metric.compute(predictions=["a man is walking"], references=[["a man is walking"]])
    assert result["cider"] == 0.0 and result["scores"] == [0.0]


def test_saved_document_frequencies(cider_metric, dream_corpus, tmp_path):
    from tarsier_hf.eval.cider.cider_scorer import DocumentFrequencies

    predictions, references = dream_corpus
    path = tmp_path / "dream_df.json"
    DocumentFrequencies.from_references(references).save(path)
    loaded = DocumentFrequencies.load(path)
    assert loaded.num_documents == len(references) and loaded.n == 4
    full = cider_metric.compute(predictions=predictions, references=references)
    # Frequencies of the same corpus give the same scores...
    again = cider_metric.compute(predictions=predictions, references=references, document_frequencies=str(path))
    assert again["document_frequency_source"] == "file" and again["num_documents"] == len(references)
    assert max(abs(a - b) for a, b in zip(again["scores"], full["scores"])) <= 1e-12
    # ...and a handful of samples scored with them get exactly their scores in the full corpus (non-zero).
    picked = [0, 2, 4]
    few = cider_metric.compute(predictions=[predictions[i] for i in picked],
                               references=[references[i] for i in picked], document_frequencies=loaded)
    assert few["scores"] == pytest.approx([full["scores"][i] for i in picked], abs=1e-12)
    assert min(few["scores"]) > 0


def test_bad_document_frequency_file(cider_metric, tmp_path):
    path = tmp_path / "df.json"
    path.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="df.json: 'format'"):
        cider_metric.compute(predictions=["a"], references=[["a"]], document_frequencies=str(path))
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not a document-frequency JSON"):
        cider_metric.compute(predictions=["a"], references=[["a"]], document_frequencies=str(path))


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(predictions=["a", "b"], references=[["a"]]), ValueError, "predictions has 2 items but references has 1"),
        (dict(predictions=["a"], references=[[]]), ValueError, r"references\[0\] is empty"),
        (dict(predictions=[3], references=[["a"]]), TypeError, r"predictions\[0\] must be a string, got int"),
        (dict(predictions=["a"], references=[3]), TypeError, r"references\[0\] must be a string or a list of strings"),
        (dict(predictions=["a"], references=[["a", None]]), TypeError, r"references\[0\]\[1\] must be a string"),
        (dict(predictions="a", references=[["a"]]), TypeError, "predictions must be a list"),
    ],
)
def test_input_errors_name_the_field(cider_metric, kwargs, error, message):
    with pytest.raises(error, match=message):
        cider_metric.compute(**kwargs)


def test_load_by_name_from_eval_folder(monkeypatch):
    import evaluate

    monkeypatch.chdir(REPO / "eval")
    metric = evaluate.load("cider")
    result = metric.compute(predictions=["a dog runs", "a cat sleeps"],
                            references=[["a dog is running"], ["the cat is sleeping"]])
    assert set(result) >= {"cider", "scores"} and len(result["scores"]) == 2
    _, cider_cls = _require_reference()
    score, _ = cider_cls().compute_score({0: ["a dog is running"], 1: ["the cat is sleeping"]},
                                         {0: ["a dog runs"], 1: ["a cat sleeps"]})
    assert result["cider"] == pytest.approx(float(score), abs=1e-12)


def test_add_batch_then_compute(cider_metric, dream_corpus):
    predictions, references = dream_corpus
    for start in range(0, 200, 50):
        cider_metric.add_batch(predictions=predictions[start:start + 50], references=references[start:start + 50])
    result = cider_metric.compute()
    direct = cider_metric.compute(predictions=predictions[:200], references=references[:200])
    assert result["scores"] == pytest.approx(direct["scores"], abs=1e-12) and len(result["scores"]) == 200


def test_pretokenized_input_skips_tokenizer(cider_metric):
    # tokenize=False scores whitespace tokens as given: "Dog," and "dog" then differ.
    raw = cider_metric.compute(predictions=["Dog, runs", "x y"], references=[["dog runs"], ["x y"]])
    pre = cider_metric.compute(predictions=["Dog, runs", "x y"], references=[["dog runs"], ["x y"]], tokenize=False)
    assert raw["scores"][0] == pytest.approx(5.0) and pre["scores"][0] < raw["scores"][0]
