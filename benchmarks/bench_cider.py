"""Benchmark: CIDEr-D end to end (tokenise + score), eval/cider vs pycocoevalcap with its Java PTB tokenizer.

Corpus: real DREAM-1K captions. Each of `num_videos` videos gets `refs_per_video` distinct references: its
human description, its human event sentences, then descriptions and event sentences of other videos. The
prediction of a video is its event sentences in shuffled order, joined.

Both sides do the full job a user asks for:
* pycocoevalcap: `PTBTokenizer().tokenize` on the references and on the predictions (two Java runs, as in
  its COCOEvalCap), then `Cider().compute_score`.
* eval/cider: `evaluate.load(<repo>/eval/cider)` once (not timed), then `compute(predictions, references)`
  (PTB tokenisation in Python + vectorised scoring), and the same two steps called directly.
The script checks that both give the same scores (|difference| <= 1e-9) before printing the table.

    python benchmarks/bench_cider.py [--num_videos 600] [--refs_per_video 40] [--repeats 3]
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from tarsier_hf.eval.cider.cider_scorer import cider_d
from tarsier_hf.eval.cider.ptb_tokenizer import PTBTokenizer
from tarsier_hf.jsonl import read_jsonl_objects

REPO = Path(__file__).resolve().parents[1]


@dataclass
class BenchArgs:
    dream1k: str = field(metadata={"help": "DREAM-1K jsonl (human descriptions and event sentences)."})
    num_videos: int = field(default=600, metadata={"help": "Number of samples (videos)."})
    refs_per_video: int = field(default=40, metadata={"help": "Reference captions per video."})
    repeats: int = field(default=3, metadata={"help": "Timed runs per implementation (median reported)."})
    seed: int = field(default=0)


def build_corpus(args: BenchArgs) -> tuple[list[str], list[list[str]]]:
    """(predictions (V,), references (V, refs_per_video)) from real DREAM-1K captions."""
    rows = [row for _, row in read_jsonl_objects(args.dream1k)]
    if len(rows) < args.num_videos:
        raise ValueError(f"{args.dream1k}: {len(rows)} videos, fewer than --num_videos {args.num_videos}")
    rng = random.Random(args.seed)
    pool = [r["text"]["response"] for r in rows] + [e for r in rows for e in r["extra_info"]["events"]]
    predictions, references = [], []
    for row in rows[:args.num_videos]:
        own = [row["text"]["response"], *row["extra_info"]["events"]][:args.refs_per_video]
        others = [c for c in rng.sample(pool, args.refs_per_video + len(own)) if c not in own]
        references.append(own + others[:args.refs_per_video - len(own)])
        events = list(row["extra_info"]["events"])
        rng.shuffle(events)
        predictions.append(" ".join(events))
    return predictions, references


def run_pycocoevalcap(predictions, references):
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    start = time.perf_counter()
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": c} for c in refs] for i, refs in enumerate(references)})
    res = tokenizer.tokenize({i: [{"caption": p}] for i, p in enumerate(predictions)})
    tokenized = time.perf_counter()
    score, scores = Cider().compute_score(gts, res)
    done = time.perf_counter()
    return float(score), [float(s) for s in scores], tokenized - start, done - tokenized


def run_ours_direct(predictions, references):
    start = time.perf_counter()
    tokenizer = PTBTokenizer()
    flat = tokenizer.tokenize([r for refs in references for r in refs])
    refs, offset = [], 0
    for group in references:
        refs.append(flat[offset:offset + len(group)])
        offset += len(group)
    preds = tokenizer.tokenize(predictions)
    tokenized = time.perf_counter()
    score, scores = cider_d(preds, refs)
    done = time.perf_counter()
    return score, scores, tokenized - start, done - tokenized


def run_ours_evaluate(metric, predictions, references):
    start = time.perf_counter()
    result = metric.compute(predictions=predictions, references=references)
    return result["cider"], result["scores"], None, time.perf_counter() - start


def median_run(fn, repeats):
    """(the median run's result, median total seconds, first run's total seconds)."""
    runs = [fn() for _ in range(repeats)]
    totals = [(r[2] or 0.0) + r[3] for r in runs]
    best = runs[totals.index(statistics.median_low(totals))]
    return best, statistics.median(totals), totals[0]


def main():
    (args,) = HfArgumentParser(BenchArgs).parse_args_into_dataclasses()
    import evaluate

    predictions, references = build_corpus(args)
    num_refs = sum(map(len, references))
    metric = evaluate.load(str(REPO / "eval" / "cider"))

    baseline, baseline_total, _ = median_run(lambda: run_pycocoevalcap(predictions, references), args.repeats)
    # The first direct run is the first use of the lexer in this process: it includes compiling its regexes.
    direct, direct_total, direct_cold = median_run(lambda: run_ours_direct(predictions, references), args.repeats)
    via_evaluate, evaluate_total, _ = median_run(lambda: run_ours_evaluate(metric, predictions, references),
                                                 args.repeats)

    for name, run in (("direct", direct), ("evaluate", via_evaluate)):
        worst = max(abs(a - b) for a, b in zip(run[1], baseline[1]))
        if abs(run[0] - baseline[0]) > 1e-9 or worst > 1e-9:
            raise SystemExit(f"{name}: scores differ from pycocoevalcap (corpus {run[0]} vs {baseline[0]}, "
                             f"worst sample difference {worst})")

    print(f"CIDEr-D, {len(predictions)} videos x {args.refs_per_video} references ({num_refs} reference captions, "
          f"real DREAM-1K text); median of {args.repeats} runs; corpus CIDEr-D = {baseline[0]:.6f} on both "
          "sides (per-sample |diff| <= 1e-9)\n")
    print("| implementation | tokenise (s) | score (s) | total (s) | speed-up vs pycocoevalcap |")
    print("|---|---|---|---|---|")
    print(f"| pycocoevalcap 1.2 (Java PTBTokenizer + Python CIDEr-D) | {baseline[2]:.2f} | {baseline[3]:.2f} "
          f"| {baseline_total:.2f} | 1.0x |")
    print(f"| eval/cider, tokenizer + scorer called directly | {direct[2]:.2f} | {direct[3]:.2f} "
          f"| {direct_total:.2f} | {baseline_total / direct_total:.1f}x |")
    print(f"| eval/cider through `evaluate` `compute()` | - | - | {evaluate_total:.2f} "
          f"| {baseline_total / evaluate_total:.1f}x |")
    print(f"| eval/cider direct, first run in the process (compiles the lexer) | - | - | {direct_cold:.2f} "
          f"| {baseline_total / direct_cold:.1f}x |")


if __name__ == "__main__":
    main()
