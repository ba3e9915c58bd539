"""AutoDQ end to end as a plain Python API: build a judge, score samples (with repeats), aggregate.

The `evaluate` module (`autodq.py`) is a thin wrapper around `run_autodq`; the benchmark runners can call it
directly::

    from eval.autodq.pipeline import build_judge, run_autodq, samples_from_dream1k
    judge = build_judge("openai", get_config("robust"), base_url="http://127.0.0.1:8000/v1", judge_model="m")
    result = run_autodq(samples_from_dream1k(records, predictions), judge, get_config("robust"))
"""

from __future__ import annotations

import os
from pathlib import Path

from .aggregate import bootstrap_ci, mean_std, summarize
from .judge import ChatJudge, JudgeCache, OpenAIChatJudge, TransformersChatJudge
from .scoring import AutoDQConfig, AutoDQScorer, Sample


def default_cache_path() -> Path:
    root = Path(os.environ.get("TARSIER_CACHE", Path.home() / ".cache" / "tarsier"))
    return root / "autodq" / "judge_cache.sqlite"


def build_judge(
    judge: str | ChatJudge,
    config: AutoDQConfig,
    judge_model: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    endpoint_kind: str | None = None,
    timeout: float = 60.0,
    max_retries: int = 6,
    cache_path: str | os.PathLike | bool | None = None,
    device: str = "cpu",
) -> ChatJudge:
    """A judge for `config`: `judge="openai"` (any OpenAI-compatible endpoint) or `"transformers"` (in process).

    An object with `chat` and `settings` (a `ChatJudge`) is returned unchanged. `cache_path=None` uses
    `default_cache_path()`, `False` disables the cache.
    """
    if hasattr(judge, "chat") and hasattr(judge, "settings"):
        return judge
    if cache_path is None or cache_path is True:
        cache_path = default_cache_path()
    cache = JudgeCache(cache_path) if cache_path else None
    model = judge_model or config.judge_model
    if judge == "openai":
        kind = endpoint_kind or ("openai" if base_url is None else "openai-compatible")
        return OpenAIChatJudge(
            model, base_url=base_url, api_key=api_key, endpoint_kind=kind, temperature=config.temperature,
            seed=config.seed, max_tokens=config.max_tokens, timeout=timeout, cache=cache, max_attempts=max_retries,
        )
    if judge == "transformers":
        if config.max_tokens is None:
            raise ValueError("judge='transformers' needs max_tokens (generation must be bounded)")
        return TransformersChatJudge(
            model, temperature=config.temperature, seed=config.seed, max_tokens=config.max_tokens,
            device=device, cache=cache, max_attempts=1,
        )
    raise ValueError(f"judge={judge!r}: expected 'openai', 'transformers' or a ChatJudge instance")


def samples_from_dream1k(records: list[dict], predictions: list[str]) -> list[Sample]:
    """Samples from DREAM-1K jsonl records (`text.response`, `dataset`, `extra_info.events/n_*`) and predictions."""
    if len(records) != len(predictions):
        raise ValueError(f"{len(records)} DREAM-1K records but {len(predictions)} predictions")
    out = []
    for i, (rec, pred) in enumerate(zip(records, predictions)):
        try:
            extra = rec.get("extra_info") or {}
            out.append(
                Sample(
                    index=i, prediction=pred, reference=rec["text"]["response"],
                    reference_events=extra.get("events"), category=rec.get("dataset"),
                    n_events=extra.get("n_events"), n_subjects=extra.get("n_subjects"), n_shots=extra.get("n_shots"),
                )
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"DREAM-1K record {i} (idx={rec.get('idx') if isinstance(rec, dict) else '?'}): missing field {exc}") from None
    return out


def _check_column(name: str, values, n: int, kind) -> list:
    if values is None:
        return [None] * n
    values = list(values)
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} entries but there are {n} predictions")
    for i, v in enumerate(values):
        if v is not None and not kind(v):
            raise ValueError(f"{name}[{i}] is {v!r}: wrong type")
    return values


def make_samples(predictions, references, reference_events=None, categories=None, n_events=None, n_subjects=None, n_shots=None) -> list[Sample]:
    """Validated `Sample`s from parallel columns (None entries allowed in the optional ones)."""
    n = len(predictions)
    if len(references) != n:
        raise ValueError(f"references has {len(references)} entries but there are {n} predictions")
    for name, col in (("predictions", predictions), ("references", references)):
        for i, v in enumerate(col):
            if not isinstance(v, str):
                raise ValueError(f"{name}[{i}] is {type(v).__name__}, expected a string")
    is_events = lambda v: isinstance(v, (list, tuple)) and all(isinstance(e, str) for e in v)  # noqa: E731
    is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
    ev = _check_column("reference_events", reference_events, n, is_events)
    cats = _check_column("categories", categories, n, lambda v: isinstance(v, str))
    ne = _check_column("n_events", n_events, n, is_int)
    nsub = _check_column("n_subjects", n_subjects, n, is_int)
    nsh = _check_column("n_shots", n_shots, n, is_int)
    return [
        Sample(i, predictions[i], references[i], None if ev[i] is None else list(ev[i]), cats[i], ne[i], nsub[i], nsh[i])
        for i in range(n)
    ]


def preset_mismatch(judge: ChatJudge, config: AutoDQConfig) -> dict:
    """Judge settings that differ from the preset's (a judge passed in ready-made keeps its own settings)."""
    out = {}
    for name, wanted in (("model", config.judge_model), ("temperature", config.temperature), ("seed", config.seed), ("max_tokens", config.max_tokens)):
        actual = getattr(judge.settings, name)
        if actual != wanted:
            out[name] = {"judge": actual, "preset": wanted}
    return out


def run_autodq(
    samples: list[Sample],
    judge: ChatJudge,
    config: AutoDQConfig,
    concurrency: int = 4,
    repeats: int = 1,
    bootstrap: int = 1000,
    bootstrap_seed: int = 0,
    confidence_level: float = 0.95,
) -> dict:
    """Score `samples` `repeats` times (repeat r uses judge seed + 1000 r) and aggregate.

    Returns a dict: headline `recall`/`precision`/`f1` (macro when samples have categories, else micro; mean
    over repeats), `headline`, per-run `micro`/`macro`/`breakdowns` (of repeat 0) and `runs` (every repeat),
    `repeats` (mean ± std per metric), `bootstrap_ci`, `samples` (per-sample records of every repeat),
    failure counts, `judge` (settings + prompt version), `config` and `calls` (request statistics).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    scorer = AutoDQScorer(judge, config, concurrency)
    calls_before = judge.stats.to_dict()
    runs = [scorer.score_all(samples, repeat=r) for r in range(repeats)]
    summaries = [summarize(run) for run in runs]
    has_macro = summaries[0]["macro"] is not None
    headline = "macro" if has_macro else "micro"

    repeat_stats = {
        f"{level}_{name}": mean_std([(s[level] or {}).get(name) for s in summaries])
        for level in (("micro", "macro") if has_macro else ("micro",))
        for name in ("recall", "precision", "f1")
    }
    seed = judge.settings.seed
    result = {
        "recall": repeat_stats[f"{headline}_recall"]["mean"],
        "precision": repeat_stats[f"{headline}_precision"]["mean"],
        "f1": repeat_stats[f"{headline}_f1"]["mean"],
        "headline": headline,
        **summaries[0],
        "n_failed": sum(s["n_failed"] for s in summaries),
        "failed": [f for s in summaries for f in s["failed"]],
        "n_partial": sum(s["n_partial"] for s in summaries),
        "runs": summaries if repeats > 1 else None,
        "repeats": {
            "k": repeats,
            "seeds": [None if seed is None else seed + 1000 * r for r in range(repeats)],
            **repeat_stats,
        },
        "bootstrap_ci": bootstrap_ci(runs, bootstrap, confidence_level, bootstrap_seed),
        "samples": [s.to_dict() for run in runs for s in run],
        "judge": {**judge.settings.to_dict(), "prompt_version": config.prompt_version},
        "preset": config.preset,
        "preset_mismatch": preset_mismatch(judge, config),
        "config": config.to_dict(),
        "concurrency": concurrency,
        "calls": {k: v - calls_before[k] for k, v in judge.stats.to_dict().items()},
    }
    return result
