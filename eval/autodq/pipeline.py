"""AutoDQ end to end as a plain Python API: build a judge, score samples (with repeats), aggregate.

The `evaluate` module (`autodq.py`) is a thin wrapper around `run_autodq`; the benchmark runners can call it
directly::

    from tarsier_hf.eval.autodq.pipeline import build_judge, run_autodq, samples_from_dream1k
    judge = build_judge("openai", get_config("robust"), base_url="http://127.0.0.1:8000/v1", judge_model="m")
    result = run_autodq(samples_from_dream1k(records, predictions), judge, get_config("robust"))

Thousands of judge calls: `run_autodq` shows a tqdm bar over the samples whose postfix follows every judge answer
(answers so far, how many from the cache, the judge's request rate, failed samples), so a judge that takes
minutes per sample (each needs up to four steps: events of both descriptions, entailment both ways) still shows
movement. A local judge (an
endpoint on this machine, or `judge="transformers"`) answers far slower than a hosted API, so its unset defaults
are scaled (`judge_defaults`: 1 sample in flight, 600 s per request, 2 attempts); and when the first samples all
fail because the judge timed out, the run stops at once with advice (`JudgeTimeoutError`) instead of failing
every sample; so it does when they all failed because the endpoint refused the key or does not know the model
(HTTP 401, 403, 404: `JudgeUnavailableError`), which no later request would change.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from urllib.parse import urlparse

from .aggregate import bootstrap_ci, mean_std, summarize
from .judge import ChatJudge, JudgeUnavailableError
from .judge_cache import JudgeCache
from .openai_judge import LOCAL_HOSTS, OpenAIChatJudge
from .scoring import AutoDQConfig, AutoDQScorer, Sample
from .transformers_judge import TransformersChatJudge

# Unset judge options per kind of judge: a hosted API takes many requests at once and answers in seconds; a judge
# on this machine (often a CPU) generates one answer at a time, slowly, and a timed-out request will time out again.
HOSTED_DEFAULTS = {"concurrency": 4, "timeout": 60.0, "max_retries": 6}
LOCAL_DEFAULTS = {"concurrency": 1, "timeout": 600.0, "max_retries": 2}


class JudgeTimeoutError(RuntimeError):
    """The first samples all failed because the judge did not answer in time (raised by `run_autodq`)."""


def is_local_judge(judge: str | ChatJudge, base_url: str | None = None) -> bool:
    """True for `judge="transformers"` (in process) and for endpoints on this machine."""
    settings = getattr(judge, "settings", None)
    if settings is not None:
        judge, base_url = settings.endpoint_kind, settings.base_url
    if judge == "transformers":
        return True
    return base_url is not None and urlparse(base_url).hostname in LOCAL_HOSTS


def judge_defaults(judge: str | ChatJudge, base_url: str | None = None) -> dict:
    """`{"concurrency", "timeout", "max_retries"}` to use where the caller set none (see the module docstring)."""
    return dict(LOCAL_DEFAULTS if is_local_judge(judge, base_url) else HOSTED_DEFAULTS)


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
    timeout: float | None = None,
    max_retries: int | None = None,
    cache_path: str | os.PathLike | bool | None = None,
    device: str = "cpu",
) -> ChatJudge:
    """A judge for `config`: `judge="openai"` (any OpenAI-compatible endpoint) or `"transformers"` (in process).

    An object with `chat` and `settings` (a `ChatJudge`) is returned unchanged. `cache_path=None` uses
    `default_cache_path()`, `False` disables the cache. `timeout` (total seconds of one HTTP request) and
    `max_retries` (attempts) left None take `judge_defaults` (longer and fewer for a judge on this machine).
    """
    if hasattr(judge, "chat") and hasattr(judge, "settings"):
        return judge
    defaults = judge_defaults(judge, base_url)
    timeout = defaults["timeout"] if timeout is None else timeout
    max_retries = defaults["max_retries"] if max_retries is None else max_retries
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


def _timed_out(score) -> bool:
    error = (score.error or "").lower()
    return score.failed and ("timeout" in error or "timed out" in error)


# Answers no later request gets otherwise: the key is refused, or the endpoint knows neither the model nor the route.
REFUSED_STATUSES = ("HTTP 401", "HTTP 403", "HTTP 404")


def _refused(score) -> bool:
    return score.failed and any(status in (score.error or "") for status in REFUSED_STATUSES)


def format_rate(count: float, seconds: float, unit: str) -> str:
    """`count` per second as "2.5 req/s", or per minute ("4.0 req/min") when under one a second."""
    rate = count / seconds if seconds > 0 else 0.0
    return f"{rate:.2f} {unit}/s" if rate >= 1 else f"{60 * rate:.1f} {unit}/min"


class JudgeProgress:
    """The postfix of a judge's tqdm bar, refreshed after every judge answer (through `ChatJudge.on_answer`) and
    every finished sample: judge answers so far (cached ones counted apart), the request rate, samples (`unit`) per
    minute and failed samples. Refreshes are at most one a second apart, except when a sample finishes."""

    def __init__(self, bar, judge: ChatJudge, unit: str = "samples"):
        self.bar, self.judge, self.unit = bar, judge, unit
        self.before = judge.stats.to_dict()
        self.start = self.last = time.monotonic()
        self.done = self.failed = 0
        self._lock = threading.Lock()

    def text(self) -> str:
        stats = self.judge.stats.to_dict()
        answers = stats["completed"] - self.before["completed"]
        cached = stats["cache_hits"] - self.before["cache_hits"]
        elapsed = time.monotonic() - self.start
        parts = [f"judge: {answers + cached} answers" + (f" ({cached} cached)" if cached else ""),
                 format_rate(stats["requests"] - self.before["requests"], elapsed, "req"),
                 format_rate(self.done, elapsed, self.unit), f"failed={self.failed}"]
        return ", ".join(parts)

    def on_answer(self) -> None:
        with self._lock:
            if time.monotonic() - self.last < 1.0:
                return
            self.last = time.monotonic()
        self.bar.set_postfix_str(self.text())

    def sample_done(self, failed: bool) -> None:
        with self._lock:
            self.done += 1
            self.failed += failed
            self.last = time.monotonic()
        self.bar.set_postfix_str(self.text(), refresh=False)
        self.bar.update(1)


def _score_runs(scorer: AutoDQScorer, samples: list[Sample], repeats: int, progress: bool, fail_fast: bool):
    """Every sample of every repeat, `scorer.concurrency` in flight, with a tqdm bar (`JudgeProgress`); `runs[r][i]`
    in input order.

    With `fail_fast`, when the first `concurrency` finished samples all failed on judge timeouts, the pending ones
    are cancelled and `JudgeTimeoutError` is raised with advice (calls already in flight end on their own); when
    they all failed because the endpoint refused them (`REFUSED_STATUSES`), `JudgeUnavailableError`.
    """
    from tqdm.auto import tqdm

    runs = [[None] * len(samples) for _ in range(repeats)]
    probe = min(len(samples) * repeats, scorer.concurrency)
    first: list = []
    settings = scorer.judge.settings
    bar = tqdm(total=len(samples) * repeats, desc=f"AutoDQ ({settings.model})", unit="sample", disable=not progress)
    tracker = JudgeProgress(bar, scorer.judge)
    if progress:
        scorer.judge.on_answer = tracker.on_answer
    pool = ThreadPoolExecutor(max_workers=scorer.concurrency)
    try:
        pending = {pool.submit(scorer.score, sample, r): (r, i)
                   for r in range(repeats) for i, sample in enumerate(samples)}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                r, i = pending.pop(future)
                score = runs[r][i] = future.result()
                tracker.sample_done(score.failed)
                if len(first) < probe:
                    first.append(score)
                    if fail_fast and len(first) == probe and all(_timed_out(s) for s in first):
                        raise JudgeTimeoutError(
                            f"AutoDQ stopped: the first {probe} sample(s) all failed because judge {settings.model!r}"
                            f" ({settings.base_url or settings.endpoint_kind}) did not answer in time ({first[-1].error})."
                            " A slow local judge? Give it more time per request and fewer requests at once, e.g. "
                            "timeout=1200 and concurrency=1 (eval runners: --judge_timeout / --judge_concurrency), a "
                            "smaller max_tokens (e.g. 512), or a faster judge; fail_fast=False scores anyway (every "
                            "timed-out sample then counts as failed)."
                        )
                    if fail_fast and len(first) == probe and all(_refused(s) for s in first):
                        raise JudgeUnavailableError(
                            f"AutoDQ stopped: the first {probe} sample(s) all failed because judge endpoint "
                            f"{settings.base_url or settings.endpoint_kind} refused the requests ({first[-1].error}). "
                            f"Check the key (eval runners: --judge_api_key or $OPENAI_API_KEY), the model name "
                            f"({settings.model!r}, --judge_model) and the base URL; fail_fast=False scores anyway."
                        )
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        scorer.judge.on_answer = None
        bar.close()
    pool.shutdown(wait=True)
    return runs


def run_autodq(
    samples: list[Sample],
    judge: ChatJudge,
    config: AutoDQConfig,
    concurrency: int | None = None,
    repeats: int = 1,
    bootstrap: int = 1000,
    bootstrap_seed: int = 0,
    confidence_level: float = 0.95,
    progress: bool = True,
    fail_fast: bool = True,
) -> dict:
    """Score `samples` `repeats` times (repeat r uses judge seed + 1000 r) and aggregate.

    `concurrency` (samples in flight) left None is 4, or 1 for a judge on this machine (`judge_defaults`).
    `progress` shows a tqdm bar; `fail_fast` stops with `JudgeTimeoutError` when the first samples all time out,
    and with `JudgeUnavailableError` when the endpoint refused them all (key, model or route unknown).

    Returns a dict: headline `recall`/`precision`/`f1` (macro when samples have categories, else micro; mean
    over repeats), `headline`, per-run `micro`/`macro`/`breakdowns` (of repeat 0) and `runs` (every repeat),
    `repeats` (mean ± std per metric), `bootstrap_ci`, `samples` (per-sample records of every repeat),
    failure counts, `judge` (settings + prompt version), `config` and `calls` (request statistics).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if concurrency is None:
        concurrency = judge_defaults(judge)["concurrency"]
    scorer = AutoDQScorer(judge, config, concurrency)
    calls_before = judge.stats.to_dict()
    runs = _score_runs(scorer, samples, repeats, progress, fail_fast)
    summaries = [summarize(run, config.f1_when_zero) for run in runs]
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
