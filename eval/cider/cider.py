"""CIDEr-D as an `evaluate` metric: coco-caption / pycocoevalcap scores without Java.

    >>> import evaluate
    >>> cider = evaluate.load("path/to/eval/cider")
    >>> cider.compute(predictions=["a man walks"], references=[["a man is walking", "someone walks"]])
    {'cider': 0.0, 'scores': [0.0], ...}
    >>> cider.compute(predictions=["a man walks"], references=["a man is walking"])  # one reference each

(One sample scores 0 with corpus document frequencies: see the metric card.)

Every helper module is imported here directly (relative imports) so that `evaluate` copies them next to this file:
it copies only the modules this script itself imports, so `ptb_rules` is imported for that alone.
"""

from __future__ import annotations

import os

import datasets
import evaluate

from .cider_scorer import DocumentFrequencies, cider_d
from .ptb_rules import RULES
from .ptb_tokenizer import PTBTokenizer

_CITATION = """\
@inproceedings{vedantam2015cider,
  title={CIDEr: Consensus-based Image Description Evaluation},
  author={Vedantam, Ramakrishna and Zitnick, C. Lawrence and Parikh, Devi},
  booktitle={CVPR},
  year={2015}
}
"""

_DESCRIPTION = """\
CIDEr-D (Consensus-based Image Description Evaluation, the variant with clipped tf-idf cosine and a Gaussian
length penalty) exactly as coco-caption / pycocoevalcap computes it, including pycocoevalcap's PTB
tokenisation (Stanford PTBTokenizer -preserveLines -lowerCase, then its punctuation removal), re-implemented
in pure Python: no Java. Scores are x10 (a perfect match of all references is about 10, typical captioning
scores are 0-3). Document frequencies come from the references of the evaluated corpus unless
`document_frequencies` supplies frequencies saved from a reference corpus.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): one generated caption per sample.
    references (list of list of str, or list of str): one non-empty list of reference captions per sample, or
        one reference caption per sample (as BLEU and ROUGE take them).
    document_frequencies (str, os.PathLike or DocumentFrequencies, optional): n-gram document frequencies of
        a reference corpus (a JSON file written by `DocumentFrequencies.save`). Default: computed from
        `references`, as pycocoevalcap does (then a single sample always scores 0, because idf = log(1)).
    tokenize (bool, default True): run the PTB tokenizer; False if the captions are already tokenised
        (tokens separated by whitespace).
    n (int, default 4): largest n-gram order.
    sigma (float, default 6.0): standard deviation of the length penalty.
Returns:
    cider (float): corpus CIDEr-D, the mean of the sample scores.
    scores (list of float): CIDEr-D of every sample.
    num_samples (int), document_frequency_source ("references" or "file"/"object"),
    num_documents (int): the N of idf = log(N / df).
Examples:
    >>> cider = evaluate.load("path/to/eval/cider")  # from any working directory
    >>> result = cider.compute(predictions=["a dog runs", "a cat sleeps"],
    ...                        references=[["a dog is running"], ["the cat is sleeping"]])
    >>> round(result["cider"], 3)
    1.736
"""


def _as_lists(references):
    """Flat references (one string per prediction) as one-element lists; everything else unchanged."""
    if isinstance(references, (list, tuple)):
        return [[r] if isinstance(r, str) else r for r in references]
    return references


def _validate(predictions, references) -> None:
    """Raise a clear error for inputs the reference implementation would reject or score wrongly."""
    if not isinstance(predictions, (list, tuple)):
        raise TypeError(f"predictions must be a list of strings, got {type(predictions).__name__}")
    if not isinstance(references, (list, tuple)):
        raise TypeError(f"references must be a list of lists of strings, got {type(references).__name__}")
    if len(predictions) != len(references):
        raise ValueError(f"predictions has {len(predictions)} items but references has {len(references)}; "
                         "there must be one list of references per prediction")
    for i, prediction in enumerate(predictions):
        if not isinstance(prediction, str):
            raise TypeError(f"predictions[{i}] must be a string, got {type(prediction).__name__}")
    for i, refs in enumerate(references):
        if not isinstance(refs, (list, tuple)):
            raise TypeError(f"references[{i}] must be a string or a list of strings, got {type(refs).__name__}")
        if len(refs) == 0:
            raise ValueError(f"references[{i}] is empty; every sample needs at least one reference caption")
        for j, ref in enumerate(refs):
            if not isinstance(ref, str):
                raise TypeError(f"references[{i}][{j}] must be a string, got {type(ref).__name__}")


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Cider(evaluate.Metric):
    """CIDEr-D with pycocoevalcap's PTB tokenisation, in pure Python."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features({
                    "predictions": datasets.Value("string"),
                    "references": datasets.Sequence(datasets.Value("string")),
                }),
                datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
            ],
            codebase_urls=["https://github.com/tylin/coco-caption", "https://github.com/salaniz/pycocoevalcap"],
            reference_urls=["https://arxiv.org/abs/1411.5726"],
        )

    def compute(self, *, predictions=None, references=None, **kwargs):
        """Score `predictions` against `references` (arguments below)."""
        # Validate before evaluate's Arrow conversion, which would coerce or reject with generic messages.
        # (Both None: the inputs came through add()/add_batch() and are checked in _compute.)
        if predictions is not None or references is not None:
            references = _as_lists(references)
            _validate(predictions, references)
        return super().compute(predictions=predictions, references=references, **kwargs)

    def _compute(self, predictions, references, document_frequencies=None, tokenize=True, n=4, sigma=6.0):
        references = _as_lists(references)
        _validate(predictions, references)
        if tokenize:
            tokenizer = PTBTokenizer()
            # pycocoevalcap tokenises the references and the predictions as two separate streams.
            flat = tokenizer.tokenize([r for refs in references for r in refs])
            tokenized_refs, start = [], 0
            for refs in references:
                tokenized_refs.append(flat[start:start + len(refs)])
                start += len(refs)
            tokenized_preds = tokenizer.tokenize(list(predictions))
        else:
            tokenized_refs = [list(refs) for refs in references]
            tokenized_preds = list(predictions)
        if document_frequencies is None:
            source, frequencies = "references", None
        elif isinstance(document_frequencies, DocumentFrequencies):
            source, frequencies = "object", document_frequencies
        elif isinstance(document_frequencies, (str, os.PathLike)):
            source, frequencies = "file", DocumentFrequencies.load(document_frequencies)
        elif hasattr(document_frequencies, "counts") and hasattr(document_frequencies, "num_documents"):
            # A DocumentFrequencies from another import of this module (e.g. the package vs evaluate's copy).
            source = "object"
            frequencies = DocumentFrequencies(document_frequencies.num_documents,
                                              dict(document_frequencies.counts), document_frequencies.n)
        else:
            raise TypeError("document_frequencies must be None, a path to a saved file or a DocumentFrequencies, "
                            f"got {type(document_frequencies).__name__}")
        if frequencies is not None and frequencies.n < n:
            raise ValueError(f"document_frequencies counts n-grams up to n={frequencies.n}, but n={n} was asked")
        corpus, scores = cider_d(tokenized_preds, tokenized_refs, n=n, sigma=sigma, document_frequencies=frequencies)
        return {
            "cider": corpus,
            "scores": scores,
            "num_samples": len(scores),
            "document_frequency_source": source,
            "num_documents": len(references) if frequencies is None else frequencies.num_documents,
        }
