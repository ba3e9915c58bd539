"""LLM judges: send a chat, get text back, with a persistent cache and bounded retries.

Two clients share one contract, `ChatJudge.chat(messages) -> str`:

- `OpenAIChatJudge` (`openai_judge.py`): any OpenAI-compatible chat endpoint through the `openai` client (OpenAI,
  Azure, vLLM, `transformers serve`, llama.cpp server, Ollama).
- `TransformersChatJudge` (`transformers_judge.py`): a chat model run in this process with transformers.

Every answer is stored in a `JudgeCache` (`judge_cache.py`: SQLite, one committed transaction per answer) under a key
made of everything that can change the answer (endpoint kind and base URL, model, temperature, seed, max tokens) and
the messages. A run killed at any point therefore resumes without repeating a completed call, and a re-run makes none.

Failures are bounded in count and in time. The HTTP client retries its transport failures itself within a total
deadline per request (`openai_judge.py`). Answers that cannot be used (a body that is not JSON, an empty text) are
asked again, up to `max_attempts` calls. A call that keeps failing raises `JudgeCallError` carrying every attempt's
error, so callers can record it.

Before a long run, `ChatJudge.check(seconds)` says within a short deadline whether the judge can answer at all
(endpoint reachable, key accepted, model listed by `/v1/models` where the endpoint lists models) and raises
`JudgeUnavailableError` with the cause and the fix otherwise; an api.openai.com endpoint without a key fails when the
judge is built. `ChatJudge.on_answer`, when set, is called after every call (answered, cached or failed), which is
how progress bars follow a judge that takes minutes per sample.

Example (the Video-ChatGPT QA judge protocol or any other use)::

    judge = OpenAIChatJudge("gpt-3.5-turbo-0125", cache=JudgeCache("judge_cache.sqlite"))
    text = judge.chat([{"role": "user", "content": "..."}])
"""

from __future__ import annotations

import dataclasses
import os
import threading
from dataclasses import dataclass
from typing import Callable, TypeVar

from .judge_cache import JudgeCache, JudgeSettings, request_key

T = TypeVar("T")


class JudgeCallError(RuntimeError):
    """A judge call failed on every attempt (or with an error retrying cannot fix); `errors` lists each attempt."""

    def __init__(self, errors: list[str], settings: JudgeSettings):
        self.errors = list(errors)
        self.settings = settings
        super().__init__(
            f"judge {settings.model!r} ({settings.endpoint_kind}) failed after {len(errors)} attempt(s); "
            f"last error: {errors[-1] if errors else 'none'}"
        )


class JudgeUnavailableError(RuntimeError):
    """The judge cannot answer (not reachable, key refused or missing, model unknown): raised by `ChatJudge.check`
    and by `OpenAIChatJudge` when no key is given for an endpoint that needs one."""


@dataclass
class CallStats:
    requests: int = 0  # requests actually sent (each retry counts)
    completed: int = 0  # answers received and stored
    cache_hits: int = 0
    failed_calls: int = 0  # calls that raised JudgeCallError

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class ChatJudge:
    """Base class: caching, bounded re-asks and statistics around one `_complete(messages, settings) -> str`.

    `_complete` raises `UnusableAnswerError` for an answer that another request may fix (asked again, up to
    `max_attempts` calls); any other exception ends the call (subclasses retry their transport themselves).
    """

    # True when `_complete` counts the requests it sends itself (an HTTP client that retries internally).
    _counts_own_requests = False

    def __init__(self, settings: JudgeSettings, cache: JudgeCache | str | os.PathLike | None, max_attempts: int = 6):
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        self.settings = settings
        self.cache = JudgeCache(cache) if isinstance(cache, (str, os.PathLike)) else cache
        self.max_attempts = max_attempts
        self.stats = CallStats()
        self._stats_lock = threading.Lock()
        self.on_answer: Callable[[], None] | None = None  # called after every call (see the module docstring)

    def _complete(self, messages: list[dict], settings: JudgeSettings) -> str:
        raise NotImplementedError

    def check(self, seconds: float = 10.0) -> str:
        """Raise `JudgeUnavailableError` when the judge cannot answer; a line saying what was checked otherwise.
        An in-process judge is ready once built."""
        return f"judge {self.settings.model!r} ({self.settings.endpoint_kind}) runs in this process"

    def _count(self, name: str) -> None:
        with self._stats_lock:
            setattr(self.stats, name, getattr(self.stats, name) + 1)
        if name in ("completed", "cache_hits", "failed_calls") and self.on_answer is not None:
            self.on_answer()

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
        for _ in range(self.max_attempts):
            if not self._counts_own_requests:
                self._count("requests")
            try:
                answer = self._complete(messages, settings)
                if not isinstance(answer, str) or not answer.strip():
                    raise UnusableAnswerError(f"empty answer: {answer!r}")
            except UnusableAnswerError as exc:
                errors += exc.attempts + [f"{type(exc).__name__}: {exc}"[:500]]
                continue
            except Exception as exc:  # noqa: BLE001 - recorded in the JudgeCallError, never swallowed
                # one entry per HTTP attempt when the transport saw them, else the exception itself
                errors += getattr(exc, "judge_attempts", None) or [f"{type(exc).__name__}: {exc}"[:500]]
                break
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


class UnusableAnswerError(RuntimeError):
    """The endpoint answered, but with nothing usable (no text, no choices, a body that is not JSON).

    `attempts` lists the failed HTTP attempts behind this answer, if any."""

    def __init__(self, message: str, attempts: list[str] | None = None):
        super().__init__(message)
        self.attempts = list(attempts or [])
