"""CIDEr-D scoring as coco-caption / pycocoevalcap computes it, plus saved document frequencies.

For every sample, the candidate and each reference become tf-idf vectors over their n-grams (n = 1..4):
``tf * (log(N) - log(max(1, df)))`` where ``df`` counts the samples whose references contain the n-gram
and ``N`` is the number of samples. Per n-gram order the similarity is the clipped cosine
``sum(min(c, r) * r) / (|c| |r|)`` times a Gaussian length penalty ``exp(-(l_c - l_r)^2 / (2 sigma^2))``
(sigma = 6). The sample score is the mean over orders of the summed similarities, divided by the number of
references, times 10; the corpus score is the mean of the sample scores.

Two details of the reference implementation are kept on purpose so that scores match it:
* the "length" in the penalty is the number of bigrams of a caption (words - 1), not the number of words;
* with document frequencies from the evaluated corpus and a single sample, ``N = 1`` and every idf is
  ``log(1) - log(1) = 0``: all scores are 0. :class:`DocumentFrequencies` saved from a larger reference
  corpus (``N`` and ``df`` taken from it) make small evaluations meaningful.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import numpy as np

from .ptb_tokenizer import PTBTokenizer

__all__ = ["DocumentFrequencies", "cider_d"]

FORMAT = "cider-document-frequencies/1"


@dataclass
class DocumentFrequencies:
    """In how many samples' reference sets every n-gram occurs, and over how many samples.

    Attributes:
        num_documents: number of samples (reference sets) counted; ``log(num_documents)`` is the idf base.
        counts: n-gram tuple -> number of samples whose references contain it.
        n: largest n-gram order counted.
    """

    num_documents: int
    counts: dict[tuple[str, ...], int] = field(default_factory=dict)
    n: int = 4

    @classmethod
    def from_tokenized(cls, references: list[list[str]], n: int = 4) -> "DocumentFrequencies":
        """Count from already tokenised references (one list of space-separated token strings per sample)."""
        sizes = np.fromiter(map(len, references), dtype=np.int64, count=len(references))
        table, _ = _ngram_table([r for refs in references for r in refs], n)
        sample_of = np.repeat(np.arange(len(references)), sizes)
        counts: dict[tuple[str, ...], int] = {}
        for k in range(n):
            width = table.num_grams[k]
            sample_gram, _ = _unique_counts(sample_of[table.caption[k]] * width + table.gram[k])
            df = np.bincount(sample_gram % width, minlength=width)
            for gram_id in np.flatnonzero(df).tolist():
                counts[table.gram_tuple(k, gram_id)] = int(df[gram_id])
        return cls(num_documents=len(references), counts=counts, n=n)

    @classmethod
    def from_references(cls, references: list[list[str]], n: int = 4) -> "DocumentFrequencies":
        """Tokenise raw reference captions with the PTB tokenizer, then count."""
        flat = PTBTokenizer().tokenize([r for refs in references for r in refs])
        grouped, start = [], 0
        for refs in references:
            grouped.append(flat[start:start + len(refs)])
            start += len(refs)
        return cls.from_tokenized(grouped, n)

    def save(self, path: str | os.PathLike) -> None:
        """Write as JSON (n-grams joined by single spaces), atomically."""
        payload = {
            "format": FORMAT,
            "tokenizer": "ptb (Stanford CoreNLP 3.4.1 rules, lower-cased, coco punctuation removed)",
            "n": self.n,
            "num_documents": self.num_documents,
            "document_frequency": {" ".join(gram): count for gram, count in self.counts.items()},
        }
        tmp = f"{os.fspath(path)}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(payload, f, ensure_ascii=False)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "DocumentFrequencies":
        """Read a file written by :meth:`save`; raises ValueError naming the file if it is not one."""
        try:
            with open(path, encoding="utf-8") as f:
                payload = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not a document-frequency JSON file ({err})") from err
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise ValueError(f"{path}: 'format' must be {FORMAT!r}; write the file with DocumentFrequencies.save")
        num_documents = payload.get("num_documents")
        if not isinstance(num_documents, int) or num_documents < 1:
            raise ValueError(f"{path}: 'num_documents' must be a positive integer, got {num_documents!r}")
        table = payload.get("document_frequency")
        if not isinstance(table, dict):
            raise ValueError(f"{path}: 'document_frequency' must be an object mapping n-grams to counts")
        counts = {}
        for gram, count in table.items():
            if not isinstance(count, int) or not 1 <= count <= num_documents:
                raise ValueError(f"{path}: document_frequency[{gram!r}] = {count!r} is not in 1..num_documents")
            counts[tuple(gram.split(" "))] = count
        return cls(num_documents=num_documents, counts=counts, n=int(payload.get("n", 4)))


def _unique_counts(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct values (U,) and their counts (U,); sort-based (numpy's hash path is slower here)."""
    values = np.sort(values, kind="stable")
    if len(values) == 0:
        return values, np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.concatenate(([True], values[1:] != values[:-1])))
    return values[starts], np.diff(np.append(starts, len(values)))


@dataclass
class _NgramTable:
    """Every (caption, n-gram) pair of a set of captions, with n-gram ids shared by all captions.

    Attributes (per order k = 0..n-1, arrays of equal length E_k):
        caption[k]: (E_k,) caption index of each entry.
        gram[k]: (E_k,) dense id of the (k+1)-gram (0..num_grams[k]-1).
        tf[k]: (E_k,) its count in that caption.
        first_position[k]: (num_grams[k],) position in `words` of one occurrence of every gram.
    """

    words: list[str]
    caption: list[np.ndarray]
    gram: list[np.ndarray]
    tf: list[np.ndarray]
    num_grams: list[int]
    first_position: list[np.ndarray]

    def gram_tuple(self, k: int, gram_id: int) -> tuple[str, ...]:
        start = int(self.first_position[k][gram_id])
        return tuple(self.words[start:start + k + 1])


def _ngram_table(captions: list[str], n: int) -> tuple[_NgramTable, np.ndarray]:
    """Build the n-gram table of whitespace-tokenised captions; also returns their word counts (C,)."""
    split = [c.split() for c in captions]
    lengths = np.fromiter(map(len, split), dtype=np.int64, count=len(split))
    words = [w for ws in split for w in ws]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
    vocab_size = max(len(vocab), 1)
    token = np.fromiter(map(vocab.__getitem__, words), dtype=np.int64, count=len(words))
    caption_of = np.repeat(np.arange(len(captions), dtype=np.int64), lengths)
    starts = np.cumsum(lengths) - lengths
    remaining = lengths[caption_of] - (np.arange(len(words), dtype=np.int64) - starts[caption_of])
    table = _NgramTable(words, [], [], [], [], [])
    positions = np.arange(len(words), dtype=np.int64)
    code = token  # dense id of the (k+1)-gram starting at each position of `positions`
    num_codes = vocab_size
    first_position = np.zeros(vocab_size, dtype=np.int64)
    first_position[token[::-1]] = positions[::-1]
    for k in range(n):
        if k > 0:
            # The (k+1)-gram at p is (k-gram at p, word p+k): pair codes stay below T * V, then re-densify.
            keep = remaining[positions] > k
            positions, code = positions[keep], code[keep]
            uniq, first, code = np.unique(code * vocab_size + token[positions + k],
                                          return_index=True, return_inverse=True)
            code = code.reshape(-1)
            num_codes = max(len(uniq), 1)
            first_position = positions[first]
        uniq_keys, tf = _unique_counts(caption_of[positions] * num_codes + code)
        table.caption.append(uniq_keys // num_codes)
        table.gram.append(uniq_keys % num_codes)
        table.tf.append(tf.astype(np.float64))
        table.num_grams.append(num_codes)
        table.first_position.append(first_position)
    return table, lengths


def cider_d(
    predictions: list[str],
    references: list[list[str]],
    n: int = 4,
    sigma: float = 6.0,
    document_frequencies: DocumentFrequencies | None = None,
) -> tuple[float, list[float]]:
    """CIDEr-D of tokenised captions (vectorised over the whole corpus).

    Args:
        predictions: N candidate captions, tokens separated by whitespace.
        references: N lists (each non-empty) of reference captions, tokens separated by whitespace.
        n: largest n-gram order.
        sigma: standard deviation of the Gaussian length penalty.
        document_frequencies: frequencies from a reference corpus; default: from ``references`` themselves.
    Returns:
        (corpus score = mean of the sample scores, list of N sample scores).
    """
    num_samples = len(predictions)
    if num_samples == 0:
        return 0.0, []
    refs_per_sample = np.fromiter(map(len, references), dtype=np.int64, count=num_samples)
    # Captions 0..N-1 are the predictions, N.. the references in order; sample_of maps captions to samples.
    captions = list(predictions) + [r for refs in references for r in refs]
    sample_of = np.concatenate([np.arange(num_samples), np.repeat(np.arange(num_samples), refs_per_sample)])
    table, lengths = _ngram_table(captions, n)
    num_captions = len(captions)
    is_ref = np.arange(num_captions) >= num_samples

    if document_frequencies is None:
        log_n = math.log(float(num_samples))
    else:
        log_n = math.log(float(document_frequencies.num_documents))
    norms = np.zeros((num_captions, n))
    weights = []
    for k in range(n):
        caption, gram, tf = table.caption[k], table.gram[k], table.tf[k]
        if document_frequencies is None:
            # Number of samples whose references contain the gram.
            ref_entries = is_ref[caption]
            sample_gram, _ = _unique_counts(sample_of[caption[ref_entries]] * table.num_grams[k] + gram[ref_entries])
            df = np.bincount(sample_gram % table.num_grams[k], minlength=table.num_grams[k]).astype(np.float64)
        else:
            counts = document_frequencies.counts
            df = np.array([counts.get(table.gram_tuple(k, g), 0) for g in range(table.num_grams[k])],
                          dtype=np.float64)
        idf = log_n - np.log(np.maximum(1.0, df))
        weight = tf * idf[gram]
        norms[:, k] = np.sqrt(np.bincount(caption, weights=weight ** 2, minlength=num_captions))
        weights.append(weight)

    # "Length" of the reference implementation: the caption's bigram count.
    length = np.maximum(lengths - 1, 0).astype(np.float64) if n > 1 else np.zeros(num_captions)
    ref_ids = np.flatnonzero(is_ref)
    ref_sample = sample_of[ref_ids]
    penalty = np.exp(-((length[ref_sample] - length[ref_ids]) ** 2) / (2 * sigma ** 2))
    total = np.zeros(num_samples)
    for k in range(n):
        caption, gram, weight = table.caption[k], table.gram[k], weights[k]
        width = table.num_grams[k]
        cand = ~is_ref[caption]
        cand_keys = caption[cand] * width + gram[cand]  # sorted: entries are sorted by (caption, gram)
        cand_weight = weight[cand]
        ref = ~cand
        ref_keys = sample_of[caption[ref]] * width + gram[ref]
        ref_weight = weight[ref]
        where = np.searchsorted(cand_keys, ref_keys)
        where = np.minimum(where, max(len(cand_keys) - 1, 0))
        matched = (cand_keys[where] == ref_keys) if len(cand_keys) else np.zeros(len(ref_keys), dtype=bool)
        clipped = np.minimum(cand_weight[where[matched]], ref_weight[matched]) * ref_weight[matched]
        dot = np.bincount(caption[ref][matched], weights=clipped, minlength=num_captions)[ref_ids]
        denom = norms[ref_sample, k] * norms[ref_ids, k]
        value = np.where(denom != 0, dot / np.where(denom != 0, denom, 1.0), dot)
        total += np.bincount(ref_sample, weights=value * penalty, minlength=num_samples)
    scores = total / n / refs_per_sample * 10.0
    return float(np.mean(scores)), scores.tolist()
