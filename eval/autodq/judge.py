"""LLM judges: send a chat, get text back, with a persistent cache and bounded retries.

Two clients share one contract, `ChatJudge.chat(messages) -> str`:

- `OpenAIChatJudge`: any OpenAI-compatible chat endpoint through the `openai` client (OpenAI, Azure, vLLM,
  `transformers serve`, llama.cpp server, Ollama).
- `TransformersChatJudge`: a chat model run in this process with transformers.

Every answer is stored in a `JudgeCache` (SQLite, one committed transaction per answer) under a key made of the
judge settings that change the answer (model, endpoint kind, temperature, seed, max tokens) and the messages.
A run killed at any point therefore resumes without repeating a completed call, and a re-run makes none.
Transient failures (429, 5xx, timeouts, dropped connections, unreadable bodies) are retried with exponential
backoff and jitter, a bounded number of times; a call that keeps failing raises `JudgeCallError` carrying every
attempt's error, so callers can record it.

Example (the Video-ChatGPT QA judge protocol or any other use)::

    judge = OpenAIChatJudge("gpt-3.5-turbo-0125", cache=JudgeCache("judge_cache.sqlite"))
    text = judge.chat([{"role": "user", "content": "..."}])
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class JudgeSettings:
    """What the judge is; all fields but `base_url` are part of the cache key.

    `temperature`, `seed` and `max_tokens` set to None are not sent at all (the endpoint's defaults apply),
    which is what the released DREAM-1K evaluator does.
    """

    model: str
    endpoint_kind: str
    temperature: float | None = 0.0
    seed: int | None = 1234
    max_tokens: int | None = None
    base_url: str | None = None

    def key_fields(self) -> dict:
        return {
            "model": self.model,
            "endpoint_kind": self.endpoint_kind,
            "temperature": self.temperature,
            "seed": self.seed,
            "max_tokens": self.max_tokens,
        }

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def request_key(settings: JudgeSettings, messages: list[dict], tag: str | None = None) -> str:
    """sha256 over the answer-changing settings, the messages and an optional tag (e.g. a retry number)."""
    payload = json.dumps(
        {"settings": settings.key_fields(), "messages": messages, "tag": tag}, sort_keys=True, ensure_ascii=False
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class JudgeCache:
    """Judge answers persisted in SQLite; each `put` is its own committed transaction.

    A process killed mid-write leaves either the whole row or nothing (SQLite's journal), so the file is always
    consistent. Safe to share between threads of one process and between processes.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(self.path), timeout=60, check_same_thread=False, isolation_level=None)
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, settings TEXT NOT NULL, "
                "messages TEXT NOT NULL, tag TEXT, answer TEXT NOT NULL, created REAL NOT NULL)"
            )
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"{self.path}: not a usable judge cache (SQLite said: {exc})") from exc

    def get(self, key: str) -> str | None:
        with self._lock:
            row = self._conn.execute("SELECT answer FROM answers WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def put(self, key: str, settings: JudgeSettings, messages: list[dict], tag: str | None, answer: str) -> None:
        row = (key, json.dumps(settings.key_fields()), json.dumps(messages, ensure_ascii=False), tag, answer, time.time())
        with self._lock:
            self._conn.execute("INSERT OR IGNORE INTO answers VALUES (?, ?, ?, ?, ?, ?)", row)

    def __len__(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()


@dataclass
class RetryPolicy:
    """Bounded retries: attempt k (0-based) waits `d/2 + U(0, d/2)` with `d = min(max_delay, base_delay * 2**k)`.

    A server's `Retry-After` (seconds) raises the wait, still capped at `max_delay`.
    """

    max_attempts: int = 6
    base_delay: float = 0.5
    max_delay: float = 30.0
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        d = min(self.max_delay, self.base_delay * (2**attempt))
        wait = d / 2 + self.rng.uniform(0, d / 2)
        if retry_after is not None:
            wait = max(wait, min(self.max_delay, retry_after))
        return wait


class JudgeCallError(RuntimeError):
    """A judge call failed on every attempt (or with an error retrying cannot fix); `errors` lists each attempt."""

    def __init__(self, errors: list[str], settings: JudgeSettings):
        self.errors = list(errors)
        self.settings = settings
        super().__init__(
            f"judge {settings.model!r} ({settings.endpoint_kind}) failed after {len(errors)} attempt(s); "
            f"last error: {errors[-1] if errors else 'none'}"
        )


@dataclass
class CallStats:
    requests: int = 0  # requests actually sent (each retry counts)
    completed: int = 0  # answers received and stored
    cache_hits: int = 0
    failed_calls: int = 0  # calls that raised JudgeCallError

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class ChatJudge:
    """Base class: caching, retries and statistics around one `_complete(messages, settings) -> str`."""

    def __init__(self, settings: JudgeSettings, cache: JudgeCache | str | os.PathLike | None, retry: RetryPolicy | None):
        self.settings = settings
        self.cache = JudgeCache(cache) if isinstance(cache, (str, os.PathLike)) else cache
        self.retry = retry or RetryPolicy()
        self.stats = CallStats()
        self._stats_lock = threading.Lock()

    # subclasses implement these two
    def _complete(self, messages: list[dict], settings: JudgeSettings) -> str:
        raise NotImplementedError

    def _retryable(self, exc: BaseException) -> tuple[bool, float | None]:
        """(retry?, server-requested wait in seconds or None)."""
        return False, None

    def _count(self, name: str) -> None:
        with self._stats_lock:
            setattr(self.stats, name, getattr(self.stats, name) + 1)

    def chat(self, messages: list[dict], *, tag: str | None = None, **overrides) -> str:
        """The judge's answer to `messages` (list of `{"role", "content"}` dicts), from the cache when known.

        `overrides` replace settings for this call only (e.g. `seed=7`, `temperature=0.7`) and are part of the
        cache key; `tag` separates otherwise identical requests (e.g. repeat or retry numbers).
        Raises `JudgeCallError` when every attempt failed.
        """
        settings = dataclasses.replace(self.settings, **overrides) if overrides else self.settings
        key = request_key(settings, messages, tag)
        if self.cache is not None:
            cached = self.cache.get(key)
            if cached is not None:
                self._count("cache_hits")
                return cached
        errors: list[str] = []
        for attempt in range(self.retry.max_attempts):
            self._count("requests")
            try:
                answer = self._complete(messages, settings)
                if not isinstance(answer, str) or not answer.strip():
                    raise EmptyAnswerError(f"empty answer: {answer!r}")
            except Exception as exc:  # classified below; nothing is swallowed silently
                errors.append(f"{type(exc).__name__}: {exc}"[:500])
                retry, retry_after = (True, None) if isinstance(exc, EmptyAnswerError) else self._retryable(exc)
                if not retry or attempt + 1 == self.retry.max_attempts:
                    break
                time.sleep(self.retry.delay(attempt, retry_after))
                continue
            if self.cache is not None:
                self.cache.put(key, settings, messages, tag, answer)
            self._count("completed")
            return answer
        self._count("failed_calls")
        raise JudgeCallError(errors, settings)

    def chat_parsed(
        self,
        messages: list[dict],
        parse: Callable[[str], T],
        max_attempts: int = 3,
        retry_temperature: float | None = None,
        tag: str | None = None,
        **overrides,
    ) -> tuple[T, list[str]]:
        """Ask until `parse(answer)` succeeds: returns `(parsed, answers)`; raises the last `ValueError`.

        Attempt k > 0 is a distinct request (seed + k, tag `...a{k}`, temperature raised to
        `retry_temperature` when given) so that a deterministic judge can answer differently; every answer is
        cached, so a re-run re-parses the same answers.
        """
        answers: list[str] = []
        last_error: ValueError | None = None
        for k in range(max_attempts):
            call_overrides = dict(overrides)
            call_tag = tag
            if k > 0:
                seed = call_overrides.get("seed", self.settings.seed)
                if seed is not None:
                    call_overrides["seed"] = seed + k
                temperature = call_overrides.get("temperature", self.settings.temperature)
                if retry_temperature is not None and (temperature is None or temperature < retry_temperature):
                    call_overrides["temperature"] = retry_temperature
                call_tag = f"{tag or ''}a{k}"
            answer = self.chat(messages, tag=call_tag, **call_overrides)
            answers.append(answer)
            try:
                return parse(answer), answers
            except ValueError as exc:
                last_error = exc
        assert last_error is not None
        raise last_error


class EmptyAnswerError(RuntimeError):
    """The endpoint answered without any text."""


class OpenAIChatJudge(ChatJudge):
    """A judge behind any OpenAI-compatible `/v1/chat/completions` endpoint.

    Args:
        model: model name the endpoint expects (for `transformers serve`, the served folder or Hub id).
        base_url: e.g. `http://127.0.0.1:8000/v1`; None means api.openai.com.
        api_key: defaults to `$OPENAI_API_KEY` (`$AZURE_OPENAI_API_KEY` for Azure), or "EMPTY" for a local
            `base_url`.
        endpoint_kind: recorded label and client choice: "openai", "azure" (uses `AzureOpenAI`, `base_url` is the
            Azure endpoint), "vllm", "transformers-serve", "llama.cpp", "ollama", ...
        temperature, seed, max_tokens: sent when not None.
        timeout: seconds per request; a timeout is retried.
        cache: a `JudgeCache`, a path for one, or None.
        retry: the `RetryPolicy`. The openai client's own retries are switched off so attempts are counted here.
    """

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        endpoint_kind: str = "openai",
        temperature: float | None = 0.0,
        seed: int | None = 1234,
        max_tokens: int | None = None,
        timeout: float = 60.0,
        cache: JudgeCache | str | os.PathLike | None = None,
        retry: RetryPolicy | None = None,
        api_version: str | None = None,
    ):
        import openai

        settings = JudgeSettings(model, endpoint_kind, temperature, seed, max_tokens, base_url)
        super().__init__(settings, cache, retry)
        self._openai = openai
        if endpoint_kind == "azure":
            key = api_key or os.environ.get("AZURE_OPENAI_API_KEY")
            if not key or not base_url:
                raise ValueError("endpoint_kind='azure' needs base_url (the Azure endpoint) and api_key or $AZURE_OPENAI_API_KEY")
            self.client = openai.AzureOpenAI(
                azure_endpoint=base_url,
                api_key=key,
                api_version=api_version or os.environ.get("OPENAI_API_VERSION", "2024-06-01"),
                timeout=timeout,
                max_retries=0,
            )
        else:
            key = api_key or os.environ.get("OPENAI_API_KEY") or ("EMPTY" if base_url else None)
            if not key:
                raise ValueError("OpenAIChatJudge: no api_key given and $OPENAI_API_KEY is not set")
            self.client = openai.OpenAI(base_url=base_url, api_key=key, timeout=timeout, max_retries=0)

    def _complete(self, messages: list[dict], settings: JudgeSettings) -> str:
        kwargs = {}
        if settings.temperature is not None:
            kwargs["temperature"] = settings.temperature
        if settings.seed is not None:
            kwargs["seed"] = settings.seed
        if settings.max_tokens is not None:
            kwargs["max_tokens"] = settings.max_tokens
        response = self.client.chat.completions.create(model=settings.model, messages=messages, **kwargs)
        if not getattr(response, "choices", None):
            raise EmptyAnswerError(f"response without choices: {str(response)[:200]}")
        return response.choices[0].message.content

    def _retryable(self, exc: BaseException) -> tuple[bool, float | None]:
        openai = self._openai
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            retry_after = None
            try:
                retry_after = float(exc.response.headers.get("retry-after"))
            except (TypeError, ValueError, AttributeError):
                pass
            return (status in (408, 409, 429) or status >= 500), retry_after
        # timeouts, refused/dropped connections (APIError), a body that is not JSON (ValueError), socket errors;
        # anything else is a bug or a misconfiguration that retrying cannot fix
        return isinstance(exc, (openai.APIError, ValueError, OSError)), None


class TransformersChatJudge(ChatJudge):
    """A chat model run in this process: `apply_chat_template` + `generate`.

    Args:
        model: a folder or Hub id, or an already loaded `PreTrainedModel` (then pass `tokenizer`).
        temperature: 0 or None = greedy; > 0 samples with a generator seeded from `seed`.
        max_tokens: new tokens per answer (required: generation must be bounded).
        device: torch device for a model loaded here.
    Calls are serialised with a lock (one model, one generate at a time).
    """

    def __init__(
        self,
        model,
        tokenizer=None,
        temperature: float | None = 0.0,
        seed: int | None = 1234,
        max_tokens: int = 512,
        device: str = "cpu",
        dtype=None,
        cache: JudgeCache | str | os.PathLike | None = None,
        retry: RetryPolicy | None = None,
        model_name: str | None = None,
    ):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if isinstance(model, (str, os.PathLike)):
            name = str(model)
            self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(name)
            self.model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype or "auto").to(device)
        else:
            if tokenizer is None:
                raise ValueError("TransformersChatJudge: pass `tokenizer` together with a loaded model")
            name = model.config._name_or_path
            self.model, self.tokenizer = model, tokenizer
        self.model.eval()
        if self.tokenizer.chat_template is None:
            raise ValueError(f"{name}: the tokenizer has no chat template; a chat judge needs one")
        settings = JudgeSettings(model_name or name, "transformers", temperature, seed, max_tokens, None)
        super().__init__(settings, cache, retry or RetryPolicy(max_attempts=1))
        self._generate_lock = threading.Lock()

    def _complete(self, messages: list[dict], settings: JudgeSettings) -> str:
        import torch

        inputs = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        ).to(self.model.device)
        sample = bool(settings.temperature)
        kwargs = {"max_new_tokens": settings.max_tokens, "do_sample": sample}
        if sample:
            kwargs["temperature"] = settings.temperature
        else:  # greedy: clear sampling knobs a generation_config may carry, to avoid warnings
            kwargs.update(temperature=None, top_p=None, top_k=None)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with self._generate_lock, torch.inference_mode():
            if settings.seed is not None:
                torch.manual_seed(settings.seed)
            output = self.model.generate(**inputs, pad_token_id=pad, **kwargs)
        new_tokens = output[0, inputs["input_ids"].shape[1] :]  # (new_len,)
        return self.tokenizer.decode(new_tokens, skip_special_tokens=True)
